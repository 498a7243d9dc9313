"""docker/compose.yaml, for real: two ragserve replicas (`--scale ragserve=2`) behind the nginx
proxy on one port, on one PostgreSQL and one volume, reached through 127.0.0.1 only.

Docker Hub's postgres and nginx images cannot be pulled where these tests run, so stand-ins are
built from the local base (tests/standins/: Debian's PostgreSQL 15 and nginx, keeping the parts of
those images' contracts the compose file uses) and named by the file's POSTGRES_IMAGE and
PROXY_IMAGE. Marked `docker`: run by `make test-docker` with tests/test_docker.py.
"""

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dockerhelp import DIGEST, FIGURES, POSTGRES_IMAGE, PROXY_IMAGE, REPO, docker, free_port, ingest

pytestmark = pytest.mark.docker

DOCUMENT = {
    "id": "orrin-canal",
    "title": "Orrin Canal",
    "text": "The Orrin Canal links the towns of Pellam and Vost. Its chief engineer was Ada Kestrel, "
    "and it carried its first barge in 1887.",
}
QUESTION = "Who was the chief engineer of the Orrin Canal?"


class Project:
    """One `docker-compose -p NAME` project of docker/compose.yaml."""

    def __init__(self, image: str) -> None:
        self.name, self.port = f"ragserve-compose-{os.getpid()}", free_port()
        self.env = {
            **os.environ,
            "RAGSERVE_IMAGE": image,
            "POSTGRES_IMAGE": POSTGRES_IMAGE,
            "PROXY_IMAGE": PROXY_IMAGE,
            "POSTGRES_PASSWORD": "compose-test-password",
            "RAGSERVE_ADMIN_TOKEN_SHA256": DIGEST,
            "RAGSERVE_PUBLISH_PORT": str(self.port),
            "RAGSERVE_TORCH_THREADS": "1",  # two replicas on two cores
        }

    def compose(self, *args: str, timeout: float = 600) -> str:
        command = ["docker-compose", "-p", self.name, "-f", str(REPO / "docker" / "compose.yaml"), *args]
        done = subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=timeout)
        assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}\n{self.logs()}"
        return done.stdout

    def logs(self) -> str:
        command = ["docker-compose", "-p", self.name, "-f", str(REPO / "docker" / "compose.yaml"), "logs", "--tail=30"]
        done = subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=60)
        return done.stdout[-6000:]

    def replicas(self) -> list[str]:
        return self.compose("ps", "-q", "ragserve").split()

    def wait_healthy(self, count: int, timeout_s: float = 300) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            ids = self.replicas()
            states = [json.loads(docker("inspect", "-f", "{{json .State}}", i).stdout) for i in ids]
            assert all(s["Status"] == "running" for s in states), self.logs()
            if len(ids) == count and all(s.get("Health", {}).get("Status") == "healthy" for s in states):
                return time.monotonic() - started
            time.sleep(1)
        raise AssertionError(f"{count} replicas not healthy after {timeout_s} s:\n{self.logs()}")


@pytest.fixture()
def project(image: str, standins: None) -> Iterator[Project]:
    box = Project(image)
    try:
        yield box
    finally:
        box.compose("down", "--volumes", "--timeout", "30")


def ask_through_proxy(port: int, question: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/ask",
        data=json.dumps({"question": question}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


# Run inside a replica's container (its python; no curl in the image): ask that replica alone.
ASK_HERE = (
    "import json, sys, urllib.request as u; r = u.Request('http://127.0.0.1:8000/v1/ask', "
    "json.dumps({'question': sys.argv[1]}).encode(), {'content-type': 'application/json'}); "
    "print(u.urlopen(r, timeout=120).read().decode())"
)


def test_two_replicas_behind_one_port_share_documents(project: Project, tmp_path: Path) -> None:
    project.compose("up", "-d", "--scale", "ragserve=2")
    FIGURES["compose_ready_s"] = project.wait_healthy(2)
    demo = ask_through_proxy(project.port, "What does HNSW stand for?")
    assert demo["citations"][0]["doc_id"] == "hnsw"

    ingest(DOCUMENT, f"http://127.0.0.1:{project.port}", tmp_path)  # through the proxy

    # Whichever replica ran the job, both answer from the document (they follow the store).
    deadline = time.monotonic() + 30
    for replica in project.replicas():
        while True:
            answer = json.loads(docker("exec", replica, "python3", "-c", ASK_HERE, QUESTION).stdout)
            if answer["citations"][0]["doc_id"] == DOCUMENT["id"] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert answer["citations"][0]["doc_id"] == DOCUMENT["id"] and "Kestrel" in answer["answer"], answer


def test_compose_file_is_valid_for_docker_compose() -> None:
    """The tool parses it (it needs the two secrets; its images come from a registry, not run here)."""
    env = {**os.environ, "POSTGRES_PASSWORD": "example", "RAGSERVE_ADMIN_TOKEN_SHA256": DIGEST}
    done = subprocess.run(
        ["docker-compose", "-f", str(REPO / "docker/compose.yaml"), "config"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "ragserve:cpu" in done.stdout
