"""The CPU image, for real: built from the local bookworm base and the wheelhouse (`make image`),
run the way docker/compose.yaml and deploy/ run it (read-only root, a tmpfs /tmp, no
capabilities, one volume at /data), reached only through a port published on 127.0.0.1.

Marked `docker`: left out of `make test`, run alone by `make test-docker` (and by .ci/run). It
needs root and Debian's docker.io; it starts dockerd when none is running and stops what it
started (containers, volumes, the daemon). Figures (build time, image size, time to ready) are
written to build/docker-test.json and printed by .ci/run.
"""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[1]
IMAGE = "ragserve:cpu"  # what `make image` tags
LOCAL_BASE = "ragserve-base:bookworm"  # what `make local-base` tags
TOKEN = "docker-test-admin-token"  # a throwaway: the container is reached on loopback only
DIGEST = hashlib.sha256(TOKEN.encode()).hexdigest()
READY_TIMEOUT_S = 300
FIGURES: dict[str, float] = {}

# A fact that is in no corpus, so an answer that has it came from the ingested document.
DOCUMENT = {
    "id": "quillon-bridge",
    "title": "Quillon Bridge",
    "text": "The Quillon Bridge over the river Aster was designed by the engineer Maren Holt. "
    "It opened in 1931 and is 412 metres long.",
}
QUESTION = "Who designed the Quillon Bridge?"


def docker(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A running Docker engine: the one there is, or a dockerd started (and stopped) here."""
    if shutil.which("docker") is None:
        pytest.fail("no docker CLI: install Debian's docker.io (.ci/run does)")
    if docker("info", check=False, timeout=30).returncode == 0:
        yield
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0:
        pytest.fail("no Docker engine: run as root with Debian's docker.io installed (it starts dockerd itself)")
    log = (tmp_path_factory.mktemp("dockerd") / "dockerd.log").open("w")
    daemon = subprocess.Popen([dockerd], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while docker("info", check=False, timeout=30).returncode != 0:
            assert daemon.poll() is None and time.monotonic() < deadline, f"dockerd did not start: see {log.name}"
            time.sleep(0.5)
        yield
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
        log.close()


@pytest.fixture(scope="module")
def image(engine: None) -> str:
    """`make image` on the locally made base (no registry is reachable here)."""
    started = time.monotonic()
    subprocess.run(["make", "local-base", f"LOCAL_BASE={LOCAL_BASE}"], cwd=REPO, check=True, timeout=900)
    FIGURES["local_base_s"] = time.monotonic() - started
    started = time.monotonic()
    build = subprocess.run(
        ["make", "image", f"BASE_IMAGE={LOCAL_BASE}", f"IMAGE={IMAGE}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    FIGURES["build_s"] = time.monotonic() - started
    FIGURES["image_bytes"] = int(docker("image", "inspect", "-f", "{{.Size}}", IMAGE).stdout)
    return IMAGE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Container:
    """One container of the image with a named volume at /data, published on 127.0.0.1 only."""

    def __init__(self, image: str, name: str) -> None:
        self.image, self.name, self.volume, self.port = image, name, f"{name}-data", free_port()
        docker("volume", "create", self.volume)

    def run(self) -> None:
        docker(
            "run", "--detach", "--name", self.name,
            "--read-only", "--tmpfs", "/tmp:rw,size=256m",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--volume", f"{self.volume}:/data",
            "--publish", f"127.0.0.1:{self.port}:8000",
            "--env", f"RAGSERVE_ADMIN_TOKEN_SHA256={DIGEST}",
            self.image,
        )  # fmt: skip

    def wait_healthy(self) -> float:
        """Seconds until Docker's HEALTHCHECK (GET /readyz in the container) passes."""
        started = time.monotonic()
        while time.monotonic() - started < READY_TIMEOUT_S:
            state = json.loads(docker("inspect", "-f", "{{json .State}}", self.name).stdout)
            assert state["Status"] == "running", f"container stopped:\n{self.logs()}"
            if state.get("Health", {}).get("Status") == "healthy":
                return time.monotonic() - started
            time.sleep(0.5)
        raise AssertionError(f"not healthy after {READY_TIMEOUT_S} s:\n{self.logs()}")

    def logs(self) -> str:
        done = docker("logs", "--tail", "60", self.name, check=False)
        return done.stdout + done.stderr

    def call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"content-type": "application/json", "authorization": f"Bearer {TOKEN}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                result: dict[str, Any] = json.loads(response.read())
                return result
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{path}: {exc.code} {exc.read()!r}\n{self.logs()}") from exc

    def remove(self) -> None:
        docker("rm", "--force", "--volumes", self.name, check=False)
        docker("volume", "rm", "--force", self.volume, check=False)


@pytest.fixture()
def container(image: str) -> Iterator[Container]:
    box = Container(image, f"ragserve-test-{os.getpid()}")
    try:
        yield box
    finally:
        box.remove()


def test_the_image_declares_its_runtime_contract(image: str) -> None:
    config = json.loads(docker("image", "inspect", "-f", "{{json .Config}}", image).stdout)
    assert config["User"] == "10001:10001"
    assert list(config["ExposedPorts"]) == ["8000/tcp"] and list(config["Volumes"]) == ["/data"]
    assert config["Entrypoint"] == ["ragserve"] and config["Cmd"] == ["serve"]
    assert any("/readyz" in part for part in config["Healthcheck"]["Test"])


def test_binding_all_interfaces_without_an_admin_token_digest_is_refused(image: str) -> None:
    done = docker("run", "--rm", "--read-only", "--tmpfs", "/tmp", image, check=False, timeout=120)
    assert done.returncode != 0
    assert "admin_token_sha256" in done.stdout + done.stderr


def ask(box: Container, question: str) -> dict[str, Any]:
    return box.call("/v1/ask", {"question": question, "top_k": 1})


def test_answers_and_keeps_an_ingested_document_across_a_restart(container: Container, tmp_path: Path) -> None:
    container.run()
    FIGURES["ready_first_s"] = container.wait_healthy()
    assert container.call("/readyz")["status"] == "ready"
    demo = ask(container, "What does HNSW stand for?")
    assert demo["citations"][0]["doc_id"] == "hnsw" and "Navigable Small World" in demo["answer"]

    # The real client, from the host, as a user would run it.
    corpus = tmp_path / "bridge.jsonl"
    corpus.write_text(json.dumps(DOCUMENT) + "\n")
    url = f"http://127.0.0.1:{container.port}"
    ingest = subprocess.run(
        [str(REPO / ".venv/bin/ragserve"), "ingest", str(corpus), "--url", url, "--token", TOKEN, "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    fresh = ask(container, QUESTION)
    assert fresh["citations"][0]["doc_id"] == DOCUMENT["id"] and "Holt" in fresh["answer"], fresh

    started = time.monotonic()
    docker("restart", "--time", "30", container.name)
    FIGURES["restart_s"] = time.monotonic() - started
    FIGURES["ready_after_restart_s"] = container.wait_healthy()
    again = ask(container, QUESTION)
    assert again["citations"][0]["doc_id"] == DOCUMENT["id"] and "Holt" in again["answer"], again
    assert docker("exec", container.name, "id", "-u").stdout.strip() == "10001"
    assert docker("diff", container.name).stdout.strip() == ""  # nothing written outside /data and /tmp


def test_compose_file_is_valid_for_docker_compose() -> None:
    """The tool parses it (it needs the two secrets; its images come from a registry, not run here)."""
    env = {**os.environ, "POSTGRES_PASSWORD": "example", "RAGSERVE_ADMIN_TOKEN_SHA256": DIGEST}
    done = subprocess.run(
        ["docker-compose", "-f", str(REPO / "docker/compose.yaml"), "config"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "ragserve:cpu" in done.stdout


def teardown_module() -> None:
    if FIGURES:
        out = REPO / "build" / "docker-test.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps({k: round(v, 1) for k, v in FIGURES.items()}, indent=1) + "\n")
