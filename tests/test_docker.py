"""The CPU image, for real: built from the local bookworm base and the wheelhouse (`make image`),
run the way docker/compose.yaml and deploy/ run it (read-only root, a tmpfs /tmp, no
capabilities, one volume at /data), reached only through a port published on 127.0.0.1.

Marked `docker`: left out of `make test`, run alone by `make test-docker` (and by .ci/run). It
needs root and Debian's docker.io; the engine and the image come from tests/dockerhelp.py.
"""

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dockerhelp import DIGEST, FIGURES, TOKEN, docker, free_port, ingest

pytestmark = pytest.mark.docker

READY_TIMEOUT_S = 300

# A fact that is in no corpus, so an answer that has it came from the ingested document.
DOCUMENT = {
    "id": "quillon-bridge",
    "title": "Quillon Bridge",
    "text": "The Quillon Bridge over the river Aster was designed by the engineer Maren Holt. "
    "It opened in 1931 and is 412 metres long.",
}
QUESTION = "Who designed the Quillon Bridge?"


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
    assert done.returncode == 2  # a configuration error: one line naming the variable, no traceback
    assert "RAGSERVE_ADMIN_TOKEN_SHA256" in done.stderr and "Traceback" not in done.stderr


def ask(box: Container, question: str) -> dict[str, Any]:
    return box.call("/v1/ask", {"question": question, "top_k": 1})


def test_answers_and_keeps_an_ingested_document_across_a_restart(container: Container, tmp_path: Path) -> None:
    container.run()
    FIGURES["ready_first_s"] = container.wait_healthy()
    assert container.call("/readyz")["status"] == "ready"
    demo = ask(container, "What does HNSW stand for?")
    assert demo["citations"][0]["doc_id"] == "hnsw" and "Navigable Small World" in demo["answer"]

    ingest(DOCUMENT, f"http://127.0.0.1:{container.port}", tmp_path)
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
