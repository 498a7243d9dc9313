"""Running the deployment: `ragserve serve --engine ray --replicas N`, and in-place updates of a
running application's user_config (`python -m service.rayserve set KEY=VALUE ...`).

Applications are deployed declaratively, the way `serve deploy` and `serve run CONFIG` do
(the controller's `apply_config`): Serve then tells a change of the user_config alone from a new
version of the code, and applies it to the running replicas without a restart. (An application
deployed with `serve.run(app)` gets a new code version with every deploy, so its replicas would
be replaced.)
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from types import FrameType
from typing import Any

import ray
from ray import serve
from ray.serve._private.client import ServeControllerClient
from ray.serve.context import _get_global_client
from ray.serve.schema import ServeDeploySchema

from service.rayserve.deployment import DEPLOYMENT_NAME, READY_TIMEOUT_S
from service.rayserve.live import validate_live
from service.settings import Settings

log = logging.getLogger(__name__)

APP_NAME = "ragserve"
IMPORT_PATH = "service.rayserve.deployment:app_builder"
# What the replicas' environment carries from the one that deploys them (a remote cluster's
# nodes do not share it): the settings, and what keeps model libraries offline and quiet.
FORWARDED_PREFIXES = ("RAGSERVE_",)
FORWARDED = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM", "GOMP_SPINCOUNT", "HF_HOME")
POLL_S = 0.5


def _client() -> ServeControllerClient:
    """Serve's controller client (the one `serve run CONFIG` deploys with)."""
    client = _get_global_client()
    if client is None:
        raise RuntimeError("Serve is not running on this Ray cluster")
    return client


def forwarded_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k.startswith(FORWARDED_PREFIXES) or k in FORWARDED}


def application_config(
    overrides: Mapping[str, Any],
    replicas: int,
    num_cpus: float,
    env: Mapping[str, str],
    user_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One application of a Serve config (as in deploy/ray/serve.yaml)."""
    deployment: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "num_replicas": replicas,
        "ray_actor_options": {"num_cpus": num_cpus},
    }
    if user_config is not None:
        deployment["user_config"] = dict(validate_live(user_config))
    return {
        "name": APP_NAME,
        "route_prefix": "/",
        "import_path": IMPORT_PATH,
        "args": {"settings": dict(overrides)},
        "runtime_env": {"env_vars": dict(env)},
        "deployments": [deployment],
    }


def deploy(
    applications: list[dict[str, Any]], timeout_s: float = READY_TIMEOUT_S, stop: threading.Event | None = None
) -> None:
    """Deploy a Serve config's applications (all of the Serve instance: one it does not name is
    deleted), and wait until they run (or `stop` is set)."""
    for app in applications:
        for deployment in app.get("deployments", []):
            if deployment.get("name") == DEPLOYMENT_NAME:
                validate_live(deployment.get("user_config"))  # a replica refusing it would be stopped
    _client().deploy_apps(ServeDeploySchema.model_validate({"applications": applications}))
    for app in applications:
        wait_running(app["name"], timeout_s, stop)


def wait_running(name: str = APP_NAME, timeout_s: float = READY_TIMEOUT_S, stop: threading.Event | None = None) -> None:
    """Until the application runs (or `stop` is set); RuntimeError with Serve's message if its
    deploy failed."""
    deadline = time.monotonic() + timeout_s
    while stop is None or not stop.is_set():
        status = serve.status().applications.get(name)
        if status is not None and status.status == "RUNNING":
            return
        if status is not None and status.status == "DEPLOY_FAILED":
            raise RuntimeError(f"application {name!r} failed to deploy: {status.message}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"application {name!r} not running after {timeout_s:.0f} s: {status}")
        time.sleep(POLL_S)


def deploy_one(app: dict[str, Any], timeout_s: float = READY_TIMEOUT_S, stop: threading.Event | None = None) -> None:
    """Deploy (or replace) one application, keeping the others of the Serve instance."""
    deploy([*(a for a in deployed_config() if a["name"] != app["name"]), app], timeout_s, stop)


def deployed_config() -> list[dict[str, Any]]:
    """The applications as last deployed (their Serve config), for a change of one of them."""
    details = _client().get_serve_details()
    apps: list[dict[str, Any]] = []
    for name, app in details.get("applications", {}).items():
        config = app.get("deployed_app_config")
        if config is None:
            raise RuntimeError(f"application {name!r} was not deployed from a config (serve.run?): redeploy it")
        apps.append(copy.deepcopy(config))
    return apps


def update_user_config(
    changes: Mapping[str, Any], app_name: str = APP_NAME, replace: bool = False, timeout_s: float = 120.0
) -> dict[str, Any]:
    """Change the live settings of a running application in place: its user_config gets
    `changes` (or becomes `changes`, with `replace`); checked before it is sent. The user_config
    deployed."""
    apps = deployed_config()
    app = next((a for a in apps if a["name"] == app_name), None)
    if app is None:
        raise RuntimeError(f"no application {app_name!r} is deployed")
    deployments = app.setdefault("deployments", [])
    deployment = next((d for d in deployments if d.get("name") == DEPLOYMENT_NAME), None)
    if deployment is None:
        deployment = {"name": DEPLOYMENT_NAME}
        deployments.append(deployment)
    user_config = dict(changes) if replace else {**(deployment.get("user_config") or {}), **changes}
    deployment["user_config"] = validate_live(user_config)
    deploy(apps, timeout_s)
    return dict(deployment["user_config"])


def _stop_on_signals() -> threading.Event:
    """An event SIGTERM and SIGINT set (a second one is logged: the stop is bounded anyway)."""
    stop = threading.Event()

    def handle(signum: int, _: FrameType | None) -> None:
        if stop.is_set():
            log.warning("signal %s: already stopping (bounded by graceful_shutdown_timeout_s)", signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handle)  # in place of Ray's, which exits at once
    return stop


def serve_replicas(settings: Settings, overrides: Mapping[str, Any], replicas: int, log_level: str) -> None:
    """`ragserve serve --engine ray`: `replicas` replicas behind Serve's proxy on settings.host and
    settings.port, on a local Ray (or the cluster RAY_ADDRESS names), until SIGTERM or SIGINT;
    then they drain and stop (service/rayserve/deployment.py) and Serve shuts down."""
    if replicas < 1:
        raise ValueError("--replicas must be at least 1")
    address = os.environ.get("RAY_ADDRESS")
    cpus = os.cpu_count() or 1
    overrides = dict(overrides)
    if address:
        ray.init(address=address)
        num_cpus = 1.0
        if settings.database_url is None and replicas > 1:
            log.warning(
                "replicas on a Ray cluster share SQLite only on one machine: set RAGSERVE_DATABASE_URL "
                "(PostgreSQL) and a shared RAGSERVE_REGISTRY_DIR when the cluster has several nodes"
            )
    else:
        ray.init(num_cpus=cpus, include_dashboard=False)
        num_cpus = min(1.0, cpus / replicas)  # every replica fits on this machine
        if "RAGSERVE_TORCH_THREADS" not in os.environ:  # the replicas share the cores
            overrides.setdefault("torch_threads", max(1, cpus // replicas))
    stop = _stop_on_signals()
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        app = application_config(overrides, replicas, num_cpus, forwarded_env(), {"log_level": log_level})
        deploy_one(app, stop=stop)
        if not stop.is_set():
            log.info("%d replica(s) ready behind http://%s:%d", replicas, settings.host, settings.port)
        while not stop.wait(1.0):
            pass
        log.info("stopping: the replicas drain, hand their jobs back and leave the replica list")
    finally:
        try:
            serve.delete(APP_NAME)  # graceful: every replica's stop runs (and is waited for)
        finally:
            if not address:
                serve.shutdown()  # type: ignore[no-untyped-call]
                ray.shutdown()
