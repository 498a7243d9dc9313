"""What the container tests share (tests/test_docker.py, tests/test_compose.py): the Docker
engine, started here when none runs and stopped at the end of the session; the CPU image built
once per session by `make image` on the locally made base; the figures they measure, written to
build/docker-test.json (printed by .ci/run).
"""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IMAGE = "ragserve:cpu"  # what `make image` tags
LOCAL_BASE = "ragserve-base:bookworm"  # what `make local-base` tags
TOKEN = "docker-test-admin-token"  # a throwaway: containers are reached on loopback only
DIGEST = hashlib.sha256(TOKEN.encode()).hexdigest()
FIGURES: dict[str, float] = {}
# Stand-ins for Docker Hub's postgres and nginx, which cannot be pulled here (tests/standins/).
STANDINS = REPO / "tests" / "standins"
POSTGRES_IMAGE, PROXY_IMAGE = "ragserve-standin-postgres:15", "ragserve-standin-nginx:bookworm"


def write_figures() -> None:
    if FIGURES:
        out = REPO / "build" / "docker-test.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps({k: round(v, 1) for k, v in FIGURES.items()}, indent=1) + "\n")


def docker(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A running Docker engine: the one there is, or a dockerd started (and stopped) here."""
    if shutil.which("docker") is None:
        pytest.fail("no docker CLI: install Debian's docker.io (.ci/run does)")
    if docker("info", check=False, timeout=30).returncode == 0:
        yield
        write_figures()
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
        write_figures()
        daemon.terminate()
        daemon.wait(timeout=60)
        log.close()


@pytest.fixture(scope="session")
def image(engine: None) -> str:
    """`make image` on the locally made base (no registry is reachable here)."""
    started = time.monotonic()
    subprocess.run(["make", "local-base", f"LOCAL_BASE={LOCAL_BASE}"], cwd=REPO, check=True, timeout=900)
    FIGURES["local_base_s"] = time.monotonic() - started
    return make_image(IMAGE, "cpu_build")


def disk_left() -> str:
    """Free space where the engine keeps its images, for a failed build's message."""
    root = docker("info", "--format", "{{.DockerRootDir}}", check=False).stdout.strip() or "/var/lib/docker"
    return f"\n{shutil.disk_usage(root).free / 2**30:.1f} GiB free under {root}"


def make_image(tag: str, figure: str, *options: str) -> str:
    """`make image` of `tag` on the local base, its build time and size recorded under `figure`."""
    started = time.monotonic()
    build = subprocess.run(
        ["make", "image", f"BASE_IMAGE={LOCAL_BASE}", f"IMAGE={tag}", *options],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    # The build stage (the wheelhouse and a second copy of the environment, ~4 GB) is of no use once
    # the image is tagged: removed at once, so two images fit on a machine with a small disk.
    docker("image", "prune", "--force", "--filter", "label=io.ragserve.stage=build", check=False)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:] + disk_left()
    FIGURES[f"{figure}_s"] = time.monotonic() - started
    FIGURES[f"{figure.removesuffix('_build')}_image_bytes"] = int(
        docker("image", "inspect", "-f", "{{.Size}}", tag).stdout
    )
    return tag


def ingest(document: dict[str, str], url: str, folder: Path) -> str:
    """`ragserve ingest` of one document from the host, as a user runs it; what it printed."""
    corpus = folder / f"{document['id']}.jsonl"
    corpus.write_text(json.dumps(document) + "\n")
    done = subprocess.run(
        [str(REPO / ".venv/bin/ragserve"), "ingest", str(corpus), "--url", url, "--token", TOKEN, "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def standins(image: str) -> None:  # the image fixture made the local base
    for tag, dockerfile in ((POSTGRES_IMAGE, "postgres.Dockerfile"), (PROXY_IMAGE, "nginx.Dockerfile")):
        docker(
            "build", "--force-rm", "--network", "host", "--build-arg", f"BASE_IMAGE={LOCAL_BASE}",
            "-f", str(STANDINS / dockerfile), "-t", tag, str(STANDINS),
            timeout=900,
        )  # fmt: skip
