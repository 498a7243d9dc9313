"""The shard router on Ray Serve (service/rayserve/shards.py): its HTTP app over in-process groups
(no Ray started), its application config, and a real local Ray: 2 shard-group applications of a
4-shard artifact behind the router, on a real PostgreSQL (bench/pgserver.py) shared with an
in-process writer that serves every shard and takes the documents."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from indexer.build import build_artifact
from ragserve.types import Passage, RetrievalMode, SearchResult
from reader.generator import Generator
from retriever.encoder import Encoder
from retriever.router import RouterConfig, ShardRouter
from retriever.shards import shard_of
from retriever.version import VersionRetriever
from service.application.loading import load_services
from service.http.app import create_app
from service.settings import Settings
from tests.conftest import local_client, wait_job, wait_ready
from tests.defaults import SEARCH, build
from tests.test_shards import QUERIES, assert_same, corpus

ray = pytest.importorskip("ray", reason="Ray Serve is an optional extra: pip install 'ragserve[ray]'")

from service.rayserve.shards import (  # noqa: E402  (after the skip: it imports Ray)
    MISSING_HEADER,
    ROUTER_APP,
    create_router_app,
    group_app_name,
    router_builder,
    sharded_config,
    split_shards,
)

SPLIT = split_shards(4, 2)  # [[0, 2], [1, 3]]
NEW = {"id": "ray-shard-note", "title": "Quillon", "text": "The Quillon observatory on Mount Brask opened in 1911."}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> Path:
    path = tmp_path_factory.mktemp("ray-shards") / "s4"
    build_artifact(corpus(60), path, encoder, build(index_factory="Flat", shards=4), progress=False)
    return path


@pytest.fixture(scope="module")
def everything(sharded: Path, encoder: Encoder) -> VersionRetriever:
    return VersionRetriever(sharded, encoder, SEARCH)


# --- without Ray running: the router's app over in-process groups, the config ------------------


class Broken:
    def search_batch(self, queries: Sequence[str], top_k: int, mode: RetrievalMode | None = None) -> list[SearchResult]:
        raise ConnectionError("replica gone")


def router_client(groups: dict[str, Any], settings: Settings, config: RouterConfig | None = None) -> TestClient:
    async def probe() -> dict[str, Any]:
        return {"index_version": "in-process"}

    router = ShardRouter(groups, config)
    return local_client(create_router_app(settings, router, {name: probe for name in groups}))


def test_the_router_app_answers_like_the_app(sharded: Path, encoder: Encoder, everything: VersionRetriever) -> None:
    groups = {f"shards {s}": VersionRetriever(sharded, encoder, SEARCH, shards=s) for s in SPLIT}
    client = router_client(groups, Settings())
    body = {"query": QUERIES[0], "top_k": 5, "retrieval": "sparse"}
    found = client.post("/v1/retrieve", json=body)
    assert found.status_code == 200, found.text
    answer = found.json()
    assert set(answer) == {"passages", "index_version", "timings_ms"} and "total" in answer["timings_ms"]
    want = everything.search(QUERIES[0], 5, RetrievalMode.SPARSE)
    assert answer["index_version"] == want.index_version
    assert [p["chunk_id"] for p in answer["passages"]] == [p.chunk_id for p in want.passages]
    bad = client.post("/v1/retrieve", json={"query": " ", "top_k": 0})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
    assert client.get("/readyz").json()["status"] == "ready"


def test_the_router_app_fails_503_or_names_the_missing_shards(everything: VersionRetriever) -> None:
    groups = {"all": everything, "gone": Broken()}
    failed = router_client(groups, Settings()).post("/v1/retrieve", json={"query": "falcon"})
    assert failed.status_code == 503 and failed.json()["error"]["code"] == "shard_unavailable"
    assert "gone" in failed.json()["error"]["message"] and failed.headers["retry-after"]
    partial = router_client(groups, Settings(), RouterConfig(allow_partial=True)).post(
        "/v1/retrieve", json={"query": "falcon"}
    )
    assert partial.status_code == 200 and partial.json()["missing_shards"] == ["gone"]
    assert partial.headers[MISSING_HEADER] == "gone" and partial.json()["passages"]


def test_the_config_has_a_group_application_per_shard_group_and_the_router() -> None:
    apps = sharded_config({"index_path": "/i"}, SPLIT, 2, 0.5, {"RAGSERVE_X": "1"}, {"log_level": "info"})
    assert [a["name"] for a in apps] == [group_app_name(0), group_app_name(1), ROUTER_APP]
    assert [a["args"]["settings"]["serve_shards"] for a in apps[:2]] == SPLIT
    assert all(a["route_prefix"] is None and a["deployments"][0]["num_replicas"] == 2 for a in apps[:2])
    assert apps[2]["route_prefix"] == "/" and apps[2]["args"]["groups"] == ["shard-group-0", "shard-group-1"]
    with pytest.raises(ValueError, match="disjoint"):
        sharded_config({}, [[0, 1], [1]], 1, 1.0, {})
    with pytest.raises(ValueError, match=r"1\.\.4"):
        split_shards(4, 5)
    with pytest.raises(ValueError, match="groups"):
        router_builder({"groups": [], "settings": {}})


def test_the_example_config_is_a_valid_sharded_deployment() -> None:
    import yaml  # type: ignore[import-untyped]  # a dependency of Ray
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((Path(__file__).resolve().parent.parent / "deploy/ray/sharded.yaml").read_text())
    ServeDeploySchema.model_validate(config)
    *groups, router = config["applications"]
    shards = [g["args"]["settings"]["serve_shards"] for g in groups]
    assert sorted(s for group in shards for s in group) == list(range(4))  # disjoint, covering
    assert router["args"]["groups"] == [g["name"] for g in groups] and router["route_prefix"] == "/"
    router_builder(router["args"])  # its settings are valid
    for group in groups:
        Settings(**group["args"]["settings"])


# --- on Ray Serve -------------------------------------------------------------------------------


@dataclass
class Proxy:
    port: int

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, None if body is None else json.dumps(body), {"content-type": "application/json"})
            response = conn.getresponse()
            raw = response.read()
            try:
                return response.status, json.loads(raw) if raw else None
            except ValueError:  # Serve's own plain-text answers
                return response.status, raw.decode(errors="replace")
        finally:
            conn.close()


@pytest.fixture(scope="module")
def cluster(
    sharded: Path,
    encoder: Encoder,
    generator: Generator,
    cache_home: Path,
    postgres: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Proxy, TestClient]]:
    """The router on Serve's proxy, and the writer: an in-process app on the same store."""
    from ray import serve

    from bench.latency import free_port
    from service.rayserve.engine import deploy

    root = tmp_path_factory.mktemp("ray-shards-state")
    url: str = postgres.new_database()
    common: dict[str, Any] = {"home": str(cache_home), "adapters_dir": str(root / "adapters"), "adapter": "none"}
    common |= {"index_path": str(sharded), "registry_dir": str(root / "registry"), "database_url": url}
    common |= {"encoder_precision": "fp32"}  # as the test encoder: scores equal to 1e-5
    writer = create_app(Settings(**common), loader=lambda s: load_services(s, encoder=encoder, generator=generator))
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAGSERVE_TORCH_THREADS": "1"}
    apps = sharded_config(common, SPLIT, 1, 0.5, env, {"log_level": "warning", "adapter": "none"})
    port = free_port()
    with local_client(writer) as client:
        wait_ready(client)  # imports the version first: the groups find it in the registry
        ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            started = time.monotonic()
            deploy(apps, timeout_s=300)
            print(f"2 shard groups and the router ready in {time.monotonic() - started:.1f} s")
            yield Proxy(port), client
        finally:
            serve.shutdown()  # type: ignore[no-untyped-call]
            ray.shutdown()


def test_through_ray_the_router_searches_like_all_shards(
    cluster: tuple[Proxy, TestClient], everything: VersionRetriever
) -> None:
    proxy, _ = cluster
    status, ready = proxy.request("GET", "/readyz")
    assert status == 200, ready
    assert sorted(g["shards"] for g in ready["groups"].values()) == SPLIT
    for mode in RetrievalMode:  # dense, sparse and hybrid scores all merge by value
        for query in QUERIES[:6]:
            status, body = proxy.request("POST", "/v1/retrieve", {"query": query, "top_k": 6, "retrieval": mode.value})
            assert status == 200, body
            want = everything.search(query, 6, mode)
            assert body["index_version"] == want.index_version
            assert_same([Passage(**_fields(p)) for p in body["passages"]], want.passages)
    status, bad = proxy.request("POST", "/v1/retrieve", {"query": "", "top_k": 9999})
    assert status == 422 and bad["error"]["code"] == "invalid_request", bad


def test_through_ray_an_ingested_document_is_found_in_its_shard_group(cluster: tuple[Proxy, TestClient]) -> None:
    proxy, writer = cluster
    created = writer.post("/v1/documents", json={"upsert": [NEW]})
    assert created.status_code == 202, created.text
    assert wait_job(writer, created.json()["job_id"])["state"] == "done"
    query = {"query": "Quillon observatory Mount Brask", "top_k": 3, "retrieval": "dense"}
    deadline = time.monotonic() + 60
    while True:
        status, body = proxy.request("POST", "/v1/retrieve", query)
        assert status == 200, body
        if body["passages"] and body["passages"][0]["doc_id"] == NEW["id"]:
            break
        assert time.monotonic() < deadline, f"{NEW['id']} (shard {shard_of(NEW['id'], 4)}) not found: {body}"
        time.sleep(0.2)


def _fields(passage: dict[str, Any]) -> dict[str, Any]:
    return {k: passage[k] for k in ("chunk_id", "doc_id", "title", "text", "score")}
