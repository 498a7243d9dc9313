"""Crash safety of builds and pointer switches: SIGKILL at random moments, then check invariants."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from indexer.artifact import verify_artifact
from retriever.registry import VERSION_ID, IndexRegistry
from service.loading import DEMO_CORPUS

POINTER_LOOP = """
import sys
from pathlib import Path
from retriever.registry import IndexRegistry
registry = IndexRegistry(Path(sys.argv[1]), "default")
versions = registry.version_ids()
print("ready", flush=True)
i = 0
while True:
    registry.set_serving(versions[i % len(versions)])
    i += 1
"""


def check_registry(root: Path) -> list[str]:
    """Reopening cleans what a crash left; every remaining version is complete and verified."""
    registry = IndexRegistry(root, "default")
    names = [p.name for p in registry.versions_dir.iterdir()]
    assert all(VERSION_ID.match(n) for n in names), names
    for version in names:
        verify_artifact(registry.versions_dir / version)
    serving = registry.serving()
    assert serving is None or serving in names
    # at most a pointer temp file of a switch killed mid-write (removed once a minute old)
    assert not [p for p in registry.home.iterdir() if p.name.startswith(".") and ".serving.json." not in p.name]
    return names


def test_sigkill_during_builds_and_switches_leaves_a_consistent_registry(tmp_path: Path) -> None:
    rng = random.Random(7)
    corpus = tmp_path / "corpus.jsonl"
    lines = DEMO_CORPUS.read_text("utf-8").splitlines()[:120]
    corpus.write_text("\n".join(lines) + "\n", "utf-8")
    root = tmp_path / "registry"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAGSERVE_REGISTRY_DIR": str(root)}
    build = [sys.executable, "-m", "service.cli", "index", "build", "--input", str(corpus), "--registry", "default"]
    completed = 0
    for _ in range(10):
        process = subprocess.Popen(
            [*build, "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(2.0, 9.0))  # import, tokenize, embed, FAISS, seal, rename: any of them
        process.send_signal(signal.SIGKILL)
        out, _ = process.communicate()
        if process.returncode == 0:
            completed += 1
            assert json.loads(out)["version"] in check_registry(root)
        else:
            assert process.returncode == -signal.SIGKILL
            check_registry(root)
    versions = check_registry(root)
    if len(versions) < 2:  # make sure the pointer test below has two versions to flip between
        for _ in range(2 - len(versions)):
            subprocess.run([*build, "--no-progress"], env=env, check=True, capture_output=True)
        versions = check_registry(root)

    for _ in range(10):
        flipper = subprocess.Popen(
            [sys.executable, "-c", POINTER_LOOP, str(root)], env=env, stdout=subprocess.PIPE, text=True
        )
        assert flipper.stdout is not None and flipper.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.01, 0.3))
        flipper.send_signal(signal.SIGKILL)
        flipper.wait()
        assert check_registry(root) == versions
        assert IndexRegistry(root, "default").serving() in versions
