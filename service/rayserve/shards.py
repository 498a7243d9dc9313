"""Scatter-gather on Ray Serve: shard-group applications behind a router application.

- **Shard groups.** Application `shard-group-<g>` runs the usual replicas (deployment.py's
  `Replica`, `app_builder`) with the setting `serve_shards` naming its shards; the groups' shards
  are disjoint and together all of the version's. They take the document changes of their shards
  from the shared store, and no refresh. They have no HTTP route (`route_prefix: null`): the app
  matches routes by the full path, so it is not served under a prefix. They are reached by
  handle, through `Replica.search`.
- **Router.** Application `ragserve-router` (route prefix `/`) serves POST /v1/retrieve with the
  app's request and response schema (service/http/schemas.py), /healthz, and /readyz (200 once
  every group answers). Each query goes to one replica of every group (Serve picks it) and the
  top-k merge by value (retriever/router.py: the guarantees, version agreement, failures).
- **Writes.** Documents and admin go to a ragserve process on the same store and registry
  serving every shard (a plain `ragserve serve`), which also takes the refresh builds the shard
  groups cannot; the groups follow the store. See docs/shard_router.md, deploy/ray/sharded.yaml.
"""

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve
from ray.serve import Application, Deployment
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from ragserve.types import RetrievalMode, SearchResult
from retriever.router import RouterConfig, ShardRouter, result_from_wire
from service.http.auth import Authentication
from service.http.errors import install_error_handlers
from service.http.limits import BodySizeLimit
from service.http.schemas import PassageOut, RetrieveRequestBase, RetrieveResponse, request_models
from service.rayserve.deployment import DEPLOYMENT_NAME
from service.rayserve.engine import application_config
from service.settings import Settings

log = logging.getLogger(__name__)

ROUTER_APP = "ragserve-router"
ROUTER_DEPLOYMENT = "ShardRouter"
ROUTER_IMPORT_PATH = "service.rayserve.shards:router_builder"
GROUP_PREFIX = "shard-group-"
MISSING_HEADER = "X-Ragserve-Missing-Shards"
ROUTER_CPUS = 0.25  # the router embeds nothing: it waits on handles and merges lists

Probe = Callable[[], Awaitable[Mapping[str, Any]]]


def group_app_name(group: int) -> str:
    return f"{GROUP_PREFIX}{group}"


def split_shards(shards: int, groups: int) -> list[list[int]]:
    """`shards` shards dealt round-robin into `groups` disjoint groups covering them all."""
    if not 1 <= groups <= shards:
        raise ValueError(f"shard groups must be 1..{shards} (the version's shards), not {groups}")
    return [list(range(g, shards, groups)) for g in range(groups)]


def router_config(settings: Settings) -> RouterConfig:
    s = settings
    return RouterConfig(
        timeout_s=s.router_timeout_s,
        threads=s.router_threads,
        max_in_flight=s.router_max_in_flight,
        version_wait_s=s.router_version_wait_ms / 1000,
        allow_partial=s.router_allow_partial,
    )


class HandleGroup:
    """A shard-group application reached by its deployment handle (made on first use, so the
    router may start before the groups are deployed); Serve picks one of its replicas per call."""

    def __init__(self, app_name: str, timeout_s: float) -> None:
        self.app_name = app_name
        self.timeout_s = timeout_s
        self._handle: DeploymentHandle[Any] | None = None

    def _call(self, queries: Sequence[str], top_k: int, mode: RetrievalMode | None) -> DeploymentResponse[Any]:
        if self._handle is None:
            self._handle = serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=self.app_name)
        response = self._handle.search.remote(list(queries), top_k, mode.value if mode else None)
        assert isinstance(response, DeploymentResponse), "Replica.search is no generator"
        return response

    def search_batch(self, queries: Sequence[str], top_k: int, mode: RetrievalMode | None = None) -> list[SearchResult]:
        return _results(self._call(queries, top_k, mode).result(timeout_s=self.timeout_s))

    async def search_batch_async(
        self, queries: Sequence[str], top_k: int, mode: RetrievalMode | None = None
    ) -> list[SearchResult]:
        return _results(await self._call(queries, top_k, mode))

    async def probe(self) -> Mapping[str, Any]:
        """A search of no queries: the replica answers, loaded, with its version and shards."""
        answer: Mapping[str, Any] = await self._call([], 1, None)
        return {"index_version": answer["index_version"], "shards": answer["shards"]}


def _results(answer: Mapping[str, Any]) -> list[SearchResult]:
    return [result_from_wire(r) for r in answer["results"]]


# --- the router's HTTP app (no Ray in it: tests run it over in-process groups) ------------------


def create_router_app(settings: Settings, router: ShardRouter, probes: Mapping[str, Probe]) -> FastAPI:
    """/v1/retrieve as the app serves it (service/http/routes.py), its 422s and domain errors
    (service/http/errors.py), body limit and query authentication; /healthz and /readyz."""
    app = FastAPI(title="ragserve shard router", version="0.1.0")
    install_error_handlers(app)
    RetrieveRequest = request_models(settings).retrieve

    # No `from __future__ import annotations` in this module: FastAPI reads the body model from
    # the annotation, and could not resolve this local class from a string.
    @app.post("/v1/retrieve", response_model=RetrieveResponse, tags=["qa"])
    async def retrieve(body: RetrieveRequest) -> Any:  # type: ignore[valid-type]
        req = cast(RetrieveRequestBase, body)
        started = time.perf_counter()
        (result,) = await router.search_batch_async([req.query], req.top_k, req.retrieval)
        response = RetrieveResponse(
            passages=[PassageOut.of(p) for p in result.passages],
            index_version=result.index_version,
            timings_ms={**result.timings_ms, "total": (time.perf_counter() - started) * 1000},
        )
        if not result.missing:
            return response
        partial = {**response.model_dump(mode="json"), "missing_shards": list(result.missing)}
        return JSONResponse(partial, headers={MISSING_HEADER: ",".join(result.missing)})

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        """200 when every shard group answers a probe within router_timeout_s."""
        groups = await _probe_all(probes, settings.router_timeout_s)
        ready = all("error" not in g for g in groups.values())
        versions = sorted({str(g["index_version"]) for g in groups.values() if "index_version" in g})
        body = {"status": "ready" if ready else "not_ready", "groups": groups, "index_versions": versions}
        return JSONResponse(body, status_code=200 if ready else 503)

    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(Authentication, settings=settings)
    return app


async def _probe_all(probes: Mapping[str, Probe], timeout_s: float) -> dict[str, dict[str, Any]]:
    async def one(probe: Probe) -> dict[str, Any]:
        try:
            return dict(await asyncio.wait_for(probe(), timeout_s))
        except Exception as exc:
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            return {"error": lines[-1]}

    names = list(probes)
    found = await asyncio.gather(*(one(probes[n]) for n in names))
    return dict(zip(names, found, strict=True))


# --- the router deployment and the application config ------------------------------------------


@serve.ingress()  # the app is built in the replica (`__serve_build_asgi_app__`), after __init__
class Router:
    """The router replica: the groups are shard-group applications, by name."""

    def __init__(self, groups: Sequence[str], overrides: Mapping[str, Any] | None = None) -> None:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.settings = Settings(**dict(overrides or {}))
        self.groups = {name: HandleGroup(name, self.settings.router_timeout_s) for name in groups}
        self.router = ShardRouter(self.groups, router_config(self.settings))

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_router_app(self.settings, self.router, {n: g.probe for n, g in self.groups.items()})


RouterDeployment: Deployment = serve.deployment(name=ROUTER_DEPLOYMENT, ray_actor_options={"num_cpus": ROUTER_CPUS})(
    Router
)


def router_options(settings: Settings) -> dict[str, Any]:
    """Serve bounds the router's work as the app's admission bounds /v1/retrieve (beyond the
    queue Serve answers 503 at once)."""
    return {
        "max_ongoing_requests": settings.retrieve_max_in_service,
        "max_queued_requests": settings.retrieve_max_queue,
    }


def router_builder(args: Mapping[str, Any]) -> Application:
    """The router application (import path `service.rayserve.shards:router_builder`). `args`:
    {"groups": [shard-group application names], "settings": {...}}, checked here."""
    unknown = sorted(set(args) - {"groups", "settings"})
    groups = list(args.get("groups") or [])
    if unknown or not groups or not all(isinstance(g, str) for g in groups):
        raise ValueError("router args: 'groups' (shard-group application names) and optional 'settings' only")
    overrides = dict(args.get("settings") or {})
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ValueError(f"invalid settings for the shard router:\n{exc}") from None
    app: Application = RouterDeployment.options(**router_options(settings)).bind(groups, overrides)
    return app


def sharded_config(
    overrides: Mapping[str, Any],
    groups: Sequence[Sequence[int]],
    replicas: int,
    num_cpus: float,
    env: Mapping[str, str],
    user_config: Mapping[str, Any] | None = None,
    router_replicas: int = 1,
) -> list[dict[str, Any]]:
    """The Serve applications of a sharded deployment (as in deploy/ray/sharded.yaml): one per
    shard group, `replicas` replicas of `num_cpus` each, and the router."""
    flat = [s for group in groups for s in group]
    if not groups or len(flat) != len(set(flat)):
        raise ValueError(f"shard groups must be disjoint and not empty: {[list(g) for g in groups]}")
    apps = []
    for g, shards in enumerate(groups):
        app = application_config({**overrides, "serve_shards": list(shards)}, replicas, num_cpus, env, user_config)
        app.update(name=group_app_name(g), route_prefix=None)
        apps.append(app)
    router = {
        "name": ROUTER_APP,
        "route_prefix": "/",
        "import_path": ROUTER_IMPORT_PATH,
        "args": {"groups": [a["name"] for a in apps], "settings": dict(overrides)},
        "runtime_env": {"env_vars": dict(env)},
        "deployments": [{"name": ROUTER_DEPLOYMENT, "num_replicas": router_replicas}],
    }
    return [*apps, router]


def serve_sharded(settings: Settings, overrides: Mapping[str, Any], groups: int, replicas: int, log_level: str) -> None:
    """`ragserve serve --engine ray --shard-groups G`: the version's shards (settings.index_path's
    artifact) in G groups of `replicas` replicas, the router on settings.host and settings.port,
    on a local Ray (or RAY_ADDRESS's cluster), until SIGTERM or SIGINT."""
    import ray

    from retriever.artifact import read_manifest
    from service.rayserve.engine import _stop_on_signals, deploy, forwarded_env

    if settings.index_path is None:
        raise ValueError("--shard-groups needs --index: the sharded artifact whose shards the groups split")
    split = split_shards(read_manifest(settings.index_path).shard_count, groups)
    address = os.environ.get("RAY_ADDRESS")
    cpus = os.cpu_count() or 1
    ray.init(address=address) if address else ray.init(num_cpus=cpus, include_dashboard=False)
    num_cpus = 1.0 if address else min(1.0, (cpus - ROUTER_CPUS) / (groups * replicas))
    overrides = dict(overrides)
    if not address and "RAGSERVE_TORCH_THREADS" not in os.environ:  # the replicas share the cores
        overrides.setdefault("torch_threads", max(1, cpus // (groups * replicas)))
    stop = _stop_on_signals()
    apps = sharded_config(overrides, split, replicas, num_cpus, forwarded_env(), {"log_level": log_level})
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        deploy(apps, stop=stop)
        if not stop.is_set():
            log.info("%d shard group(s) %s ready behind http://%s:%d", groups, split, settings.host, settings.port)
        while not stop.wait(1.0):
            pass
    finally:
        try:
            for app in apps:
                serve.delete(app["name"])
        finally:
            if not address:
                serve.shutdown()  # type: ignore[no-untyped-call]
                ray.shutdown()
