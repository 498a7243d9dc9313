"""The Ray image (`make image EXTRAS=postgres,ray IMAGE=ragserve:ray`) running what deploy/ray's
KubeRay resources run, the way the operator runs it: `ray start` in place of the image's
entrypoint, a read-only root with a tmpfs /tmp, the RayService's serveConfigV2 deployed through
the dashboard (`serve deploy`, as KubeRay does), and the RayJob's entrypoint on a cluster of its
own. One node per container (no Kubernetes here), on the stand-in PostgreSQL of tests/standins/.
Marked `docker`: run by `make test-docker`.
"""

import json
import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.dockerhelp import DIGEST, FIGURES, POSTGRES_IMAGE, REPO, docker, free_port, make_image

pytestmark = pytest.mark.docker

RAY_IMAGE = "ragserve:ray"  # what deploy/ray/kustomization.yaml names
HARDENED = ("--read-only", "--tmpfs", "/tmp:rw,size=2g", "--shm-size", "1g", "--cap-drop", "ALL")
HEAD = "ray start --head --num-cpus=2 --dashboard-host=0.0.0.0 --disable-usage-stats > /dev/null"


def kuberay(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "deploy" / "ray" / f"{name}.yaml").read_text())
    return loaded


@pytest.fixture(scope="module")
def ray_image(image: str) -> str:  # after the CPU image: the local base and most layers are there
    return make_image(RAY_IMAGE, "ray_build", "EXTRAS=postgres,ray")


@pytest.fixture(scope="module")
def database(standins: None) -> Iterator[tuple[str, str]]:
    """A network with the stand-in PostgreSQL on it: (network, database URL)."""
    network = f"ragserve-ray-{os.getpid()}"
    docker("network", "create", network)
    docker(
        "run", "--detach", "--name", f"{network}-pg", "--network", network, "--network-alias", "db",
        "--env", "POSTGRES_USER=ragserve", "--env", "POSTGRES_DB=ragserve", "--env", "POSTGRES_PASSWORD=pw",
        POSTGRES_IMAGE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while docker("exec", f"{network}-pg", "pg_isready", "-d", "ragserve", check=False).returncode != 0:
            assert time.monotonic() < deadline, docker("logs", f"{network}-pg", check=False).stderr
            time.sleep(0.5)
        yield network, "postgresql://ragserve:pw@db:5432/ragserve"
    finally:
        docker("rm", "--force", f"{network}-pg", check=False)
        docker("network", "rm", network, check=False)


def readable(path: Path) -> Path:
    """Bind-mounted for the image's uid 10001."""
    path.chmod(0o755 if path.is_dir() else 0o644)
    return path


def test_the_rayservice_serve_config_serves_answers(ray_image: str, database: tuple[str, str], tmp_path: Path) -> None:
    network, url = database
    config = yaml.safe_load(kuberay("rayservice")["spec"]["serveConfigV2"])
    config["applications"][0]["deployments"][0]["num_replicas"] = 1  # one 2-core node, not 2 workers
    serve = tmp_path / "serve.yaml"
    serve.write_text(yaml.safe_dump(config))
    name, port = f"{network}-serve", free_port()
    docker(
        "run", "--detach", "--name", name, "--network", network, *HARDENED,
        "--volume", f"{readable(serve)}:/config/serve.yaml:ro", "--publish", f"127.0.0.1:{port}:8000",
        "--env", f"RAGSERVE_ADMIN_TOKEN_SHA256={DIGEST}", "--env", f"RAGSERVE_DATABASE_URL={url}",
        "--entrypoint", "/bin/bash", ray_image, "-c", f"{HEAD} && serve deploy /config/serve.yaml && sleep infinity",
    )  # fmt: skip
    try:
        started = time.monotonic()
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:  # not listening yet, 503 while loading (HTTPError), a read timeout
                pass
            logs = docker("logs", "--tail", "40", name, check=False)
            assert time.monotonic() - started < 300, logs.stdout + logs.stderr
            time.sleep(1)
        FIGURES["ray_serve_ready_s"] = time.monotonic() - started
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/ask",
            data=json.dumps({"question": "What does HNSW stand for?"}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
        assert answer["citations"][0]["doc_id"] == "hnsw" and "Navigable" in answer["answer"]
    finally:
        docker("rm", "--force", "--volumes", name, check=False)


def test_the_rayjob_entrypoint_builds_a_version_into_the_registry(
    ray_image: str, database: tuple[str, str], tmp_path: Path
) -> None:
    network, url = database
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "docs.jsonl").write_text((REPO / "indexer" / "data" / "demo_corpus.jsonl").read_text())
    readable(corpus)
    readable(corpus / "docs.jsonl")
    volume = f"{network}-registry"
    entrypoint = kuberay("rayjob")["spec"]["entrypoint"]  # it reads /corpus, writes /data/registry
    try:
        done = docker(
            "run", "--rm", "--network", network, *HARDENED,
            "--volume", f"{corpus}:/corpus:ro", "--volume", f"{volume}:/data",
            "--env", f"RAGSERVE_ADMIN_TOKEN_SHA256={DIGEST}", "--env", f"RAGSERVE_DATABASE_URL={url}",
            "--entrypoint", "/bin/bash", ray_image, "-c", f"{HEAD} && {entrypoint}",
            check=False, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        versions = docker(
            "run", "--rm", "-v", f"{volume}:/data", "--entrypoint", "ls", ray_image, "/data/registry/default/versions"
        )
        assert len(versions.stdout.split()) == 1
    finally:
        docker("volume", "rm", "--force", volume, check=False)
