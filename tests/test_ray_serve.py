"""Ray Serve (issue 17): 2 replicas of the app on a real local Ray with 2 CPUs, deployed from
deploy/ray/serve.yaml the way `serve deploy` does, sharing a real PostgreSQL (bench/pgserver.py)
and one registry; every request goes through Serve's HTTP proxy.

The checks that need no Ray (the live settings, the CLI's refusals) run without it; the rest is
skipped when Ray is not installed (`pip install 'ragserve[ray]'`)."""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bench.latency import free_port
from service.http.app import create_app
from service.http.auth import new_token
from service.rayserve.live import LiveConfigError, apply_live, validate_live
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SERVE_YAML = ROOT / "deploy" / "ray" / "serve.yaml"
HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="Ray Serve is an optional extra: pip install 'ragserve[ray]'")


# --- without Ray --------------------------------------------------------------------------------


def test_live_settings_are_checked_with_the_settings_bounds() -> None:
    assert validate_live(None) == {}
    assert validate_live({"retrieve_max_queue": 7, "log_level": "debug"}) == {
        "retrieve_max_queue": 7,
        "log_level": "debug",
    }
    with pytest.raises(LiveConfigError, match="port cannot change on running replicas"):
        validate_live({"port": 9000})
    with pytest.raises(LiveConfigError, match="ask_max_queue"):
        validate_live({"ask_max_queue": -1})  # ge=0 in service/settings.py
    with pytest.raises(LiveConfigError, match="adapter"):
        validate_live({"adapter": "Not A Name"})
    with pytest.raises(LiveConfigError, match="mapping"):
        validate_live(["default_reader"])


def test_live_settings_need_a_loaded_replica_and_change_nothing_when_refused() -> None:
    app = create_app(Settings())  # never started: nothing loads
    state = app.state.ragserve
    with pytest.raises(LiveConfigError, match="not loaded"):
        apply_live(state, {"retrieve_max_queue": 3})
    assert state.gates["/v1/retrieve"].queue == Settings().retrieve_max_queue


def test_the_cli_refuses_replica_counts_it_cannot_serve() -> None:
    run = [sys.executable, "-m", "service.cli", "serve"]
    zero = subprocess.run([*run, "--engine", "ray", "--replicas", "0"], capture_output=True, text=True, timeout=60)
    assert zero.returncode == 2 and "--replicas must be at least 1" in zero.stderr
    two = subprocess.run([*run, "--replicas", "2"], capture_output=True, text=True, timeout=60)
    assert two.returncode == 2 and "--replicas needs --engine ray" in two.stderr


def test_the_cli_and_the_app_do_not_import_ray() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from service.cli.main import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['serve', '--help'])\n"
        "import service.http.app, service.cli.commands, service.rayserve.live\n"
        "print('ray' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr


@needs_ray
def test_health_follows_readiness() -> None:
    from types import SimpleNamespace

    from service.rayserve.deployment import readiness_problem

    state = create_app(Settings()).state.ragserve
    assert readiness_problem(state) == "models and index are still loading"
    state.load_error = "loading failed: no such index"
    assert readiness_problem(state) == "loading failed: no such index"
    workers = {"ingest": {"alive": True}, "refresh": {"alive": False}}
    state.services = SimpleNamespace(jobs=SimpleNamespace(health=lambda: workers), replica=SimpleNamespace(drain=str))
    assert readiness_problem(state) == "job workers dead: refresh"  # Serve replaces such a replica
    workers["refresh"]["alive"] = True
    state.begin_drain(1.0)  # stopping is not unhealthy
    assert readiness_problem(state) is None


# --- on Ray Serve -------------------------------------------------------------------------------


@dataclass
class Proxy:
    """Serve's HTTP proxy, and the admin token the replicas know the digest of."""

    port: int
    token: str
    database_url: str

    def request(self, method: str, path: str, body: Any = None, token: bool = True) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"content-type": "application/json"}
        if token and self.token:
            headers["authorization"] = f"Bearer {self.token}"
        try:
            conn.request(method, path, None if body is None else json.dumps(body), headers)
            response = conn.getresponse()
            raw = response.read()
            try:
                return response.status, json.loads(raw) if raw else None
            except ValueError:  # Serve's proxy answers 404 in plain text before the app is deployed
                return response.status, raw.decode(errors="replace")
        finally:
            conn.close()

    def replicas(self) -> list[dict[str, Any]]:
        status, body = self.request("GET", "/admin/indexes")
        assert status == 200, body
        listed: list[dict[str, Any]] = body["indexes"][0]["replicas"]
        return listed

    def readiness_by_replica(self, want: int = 2, seconds: float = 30) -> dict[str, dict[str, Any]]:
        """/readyz through the proxy until `want` replicas answered; their bodies by replica id."""
        seen: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + seconds
        while len(seen) < want and time.monotonic() < deadline:
            status, body = self.request("GET", "/readyz", token=False)
            assert status == 200, body
            seen[body["replica"]["id"]] = body
        return seen


def wait_for(condition: Any, seconds: float = 30, every: float = 0.05) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {seconds} s")
        time.sleep(every)


def serve_config(tiny_index: Path, root: Path, cache_home: Path, database_url: str, digest: str) -> dict[str, Any]:
    """deploy/ray/serve.yaml with this test's store, registry and index in place of its placeholders."""
    import yaml  # a dependency of Ray

    config: dict[str, Any] = yaml.safe_load(SERVE_YAML.read_text())
    app = config["applications"][0]
    app["args"]["settings"] = {
        "index_path": str(tiny_index),
        "home": str(cache_home),
        "adapters_dir": str(root / "adapters"),
        "adapter": "none",
    }
    env = app["runtime_env"]["env_vars"]
    assert env["RAGSERVE_DATABASE_URL"] == "${RAGSERVE_DATABASE_URL}"  # the placeholders the file documents
    env.update(
        RAGSERVE_DATABASE_URL=database_url,
        RAGSERVE_REGISTRY_DIR=str(root / "registry"),
        RAGSERVE_ADMIN_TOKEN_SHA256=digest,
    )
    app["deployments"][0]["user_config"]["adapter"] = "none"  # the base model's answers (as tests/conftest.py)
    return config


@pytest.fixture(scope="module")
def proxy(
    tiny_index: Path, cache_home: Path, postgres: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    if not HAS_RAY:
        pytest.skip("Ray Serve is an optional extra: pip install 'ragserve[ray]'")
    import ray
    from ray import serve

    from service.rayserve.engine import deploy

    token, digest = new_token()
    url: str = postgres.new_database()
    config = serve_config(tiny_index, tmp_path_factory.mktemp("ray"), cache_home, url, digest)
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        started = time.monotonic()
        deploy(config["applications"], timeout_s=300)
        print(f"2 replicas ready in {time.monotonic() - started:.1f} s")
        yield Proxy(port, token, url)
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()


@needs_ray
def test_two_replicas_are_ready_and_listed_behind_the_proxy(proxy: Proxy) -> None:
    listed = proxy.replicas()
    assert len(listed) == 2 and {r["state"] for r in listed} == {"serving"}
    assert len({r["pid"] for r in listed}) == 2  # two actor processes
    assert len(proxy.readiness_by_replica()) == 2  # the proxy reaches both
    status, body = proxy.request("GET", "/admin/indexes", token=False)
    assert status == 401, body  # auth is the app's, through the proxy too


@needs_ray
def test_a_document_ingested_through_the_proxy_is_searchable_on_both(proxy: Proxy) -> None:
    doc = {"id": "ray-note", "title": "Ray note", "text": "The Quillon observatory on Mount Brask opened in 1911."}
    status, body = proxy.request("POST", "/v1/documents", {"upsert": [doc]})
    assert status == 202, body

    def done() -> bool:
        return bool(proxy.request("GET", f"/v1/jobs/{body['job_id']}")[1]["state"] == "done")

    wait_for(done)
    wait_for(lambda: all(r["lag_changes"] == 0 for r in proxy.replicas()))  # both applied the change
    for _ in range(8):  # the proxy spreads these over both replicas
        status, found = proxy.request("POST", "/v1/retrieve", {"query": "Quillon observatory Mount Brask", "top_k": 3})
        assert status == 200 and found["passages"][0]["doc_id"] == "ray-note", found


@needs_ray
def test_a_user_config_update_applies_in_place_without_a_restart(proxy: Proxy) -> None:
    from service.rayserve.engine import update_user_config

    before = {(r["id"], r["pid"]) for r in proxy.replicas()}
    assert {b["default_reader"] for b in proxy.readiness_by_replica().values()} == {"stuff"}
    with pytest.raises(LiveConfigError, match="torch_threads cannot change"):
        update_user_config({"torch_threads": 1})  # refused before it is sent: nothing changes

    update_user_config({"default_reader": "rag-sequence", "retrieve_max_queue": 64, "log_level": "warning"})

    def applied() -> bool:
        return {b["default_reader"] for b in proxy.readiness_by_replica().values()} == {"rag-sequence"}

    wait_for(applied)
    assert {(r["id"], r["pid"]) for r in proxy.replicas()} == before  # the same processes, not restarted
    status, answer = proxy.request("POST", "/v1/ask", {"question": "When did the Quillon observatory open?"})
    assert status == 200 and answer["reader"] == "rag-sequence", answer

    update_user_config({"default_reader": "stuff"}, replace=True)  # the other keys: the settings again
    wait_for(lambda: {b["default_reader"] for b in proxy.readiness_by_replica().values()} == {"stuff"})
    assert {(r["id"], r["pid"]) for r in proxy.replicas()} == before


@needs_ray
def test_deleting_the_application_drains_the_replicas_out_of_the_list(proxy: Proxy) -> None:
    from ray import serve

    assert len(proxy.replicas()) == 2
    started = time.monotonic()
    serve.delete("ragserve")  # what `ragserve serve --engine ray` does on SIGTERM
    print(f"both replicas stopped in {time.monotonic() - started:.1f} s")
    with psycopg.connect(proxy.database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT id, state FROM ragserve_replicas").fetchall()
        owned = conn.execute("SELECT count(*) FROM ragserve_jobs WHERE owner IS NOT NULL").fetchone()
    assert rows == [], rows  # each left the list as it stopped (not by timing out)
    assert owned == (0,)


@pytest.mark.slow
@needs_ray
def test_ragserve_serve_engine_ray_serves_and_stops_on_sigterm(tiny_index: Path, tmp_path: Path) -> None:
    """The CLI end to end: 2 replicas on SQLite (one machine), SIGTERM, exit 0."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAGSERVE_REGISTRY_DIR": str(tmp_path / "registry")}
    env.pop("RAGSERVE_DATABASE_URL", None)
    cmd = [sys.executable, "-m", "service.cli", "--log-level", "warning", "serve", "--engine", "ray"]
    process = subprocess.Popen([*cmd, "--replicas", "2", "--index", str(tiny_index), "--port", str(port)], env=env)
    try:
        proxy = Proxy(port, "", "")
        wait_for(lambda: _answers(proxy), seconds=300, every=1)
        assert len(proxy.replicas()) == 2  # token-less admin: loopback client, loopback Host, via the proxy
    finally:
        process.terminate()
        assert process.wait(timeout=120) == 0


def _answers(proxy: Proxy) -> bool:
    try:
        return proxy.request("GET", "/readyz", token=False)[0] == 200
    except OSError:
        return False
