"""Crash safety of builds, pointer switches, ingestion jobs and refreshes: SIGKILL at random
moments, then check invariants."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from indexer.build import build_artifact
from indexer.sources import read_corpus
from retriever.artifact import verify_artifact
from retriever.encoder import Encoder
from retriever.registry import VERSION_ID, IndexRegistry
from service.application.loading import DEMO_CORPUS, load_indexes
from service.application.pointer import POINTER_LOCK
from service.application.store import open_store
from service.settings import Settings
from tests.defaults import BUILD

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
    assert not [
        p
        for p in registry.home.iterdir()
        if p.name.startswith(".") and not p.name.startswith(".staging-serving.json-") and p.name != POINTER_LOCK
    ]
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


JOBS_LOOP = """
import json, sys, time
from pathlib import Path
from ragserve.types import Document
from retriever.encoder import Encoder
from service.application.loading import load_indexes
from service.settings import Settings
from tests.test_crash import FAST, record_text

root, first, url = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] or None
settings = Settings(registry_dir=root, database_url=url, **FAST)
jobs = load_indexes(settings, Encoder("all-MiniLM-L6-v2", "fp32")).jobs
print("ready", flush=True)

def wait(job_id):
    while (job := jobs.job(job_id)).state not in ("done", "failed"):
        time.sleep(0.01)
    assert job.state == "done", job.result

for i in range(first, first + 1000):
    upsert = [Document(f"rec-{i}-{j}", "", record_text(i, j)) for j in range(3)]
    delete = [f"rec-{i - 1}-0"] if i > first else []
    ops = json.dumps({"upsert": [d.id for d in upsert], "delete": delete})
    print("submit", ops, flush=True)
    wait(jobs.submit_documents(upsert, delete))
    print("done", ops, flush=True)
    if i % 2 == 0:
        print("refreshing", flush=True)
        wait(jobs.submit_refresh("default", None))
"""

FAST = {"compact_after_chunks": 0, "heartbeat_s": 0.2, "replica_timeout_s": 1.0}  # a killed worker's jobs resume soon
WORDS = ["amber", "basalt", "cedar", "dune", "ember", "fjord", "garnet", "heron", "iris", "juniper", "kelp", "lichen"]


def record_text(i: int, j: int) -> str:
    """A sentence nothing else in the corpus resembles, so searching it finds its own record first."""
    a, b, c = WORDS[(i * 3 + j) % 12], WORDS[(i * 7 + j * 5 + 1) % 12], WORDS[(i + j * 11 + 2) % 12]
    return f"Record {i}-{j}: the {a} vault of {b} holds {i * 97 + j * 13} crates of {c}."


class Acknowledged:
    """What the killed workers acknowledged (documents jobs done), from their output."""

    def __init__(self) -> None:
        self.live: set[str] = set()
        self.deleted: set[str] = set()
        self.unknown: set[str] = set()  # deleted by a job killed before it was acknowledged, or not
        self.in_flight: set[str] = set()
        self.next = 0  # the record number a new worker starts at

    def feed(self, line: str) -> None:
        event, _, ops = line.partition(" ")
        if event == "submit":
            self.in_flight = set(json.loads(ops)["delete"])
        elif event == "done":
            ack = json.loads(ops)
            self.live = (self.live | set(ack["upsert"])) - set(ack["delete"])
            self.deleted |= set(ack["delete"])
            self.next = int(ack["upsert"][0].split("-")[1]) + 1
            self.in_flight = set()

    def killed(self) -> None:
        self.live -= self.in_flight
        self.unknown |= self.in_flight
        self.in_flight = set()


def test_sigkill_during_ingestion_and_refresh_loses_no_acknowledged_document(
    tmp_path: Path, encoder: Encoder, store_url: str | None
) -> None:
    root = tmp_path / "registry"
    registry = IndexRegistry(root, "default")
    base = list(read_corpus([DEMO_CORPUS]))[:80]
    version = registry.add(lambda out: build_artifact(base, out, encoder, BUILD, progress=False))
    settings = Settings(registry_dir=root, database_url=store_url, **FAST)  # type: ignore[arg-type]
    store = open_store(settings, registry, "setup")
    store.pointer.set(version)
    store.close()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    rng = random.Random(11)
    acks = Acknowledged()
    for cycle in range(6):
        worker = subprocess.Popen(
            [sys.executable, "-c", JOBS_LOOP, str(root), str(acks.next), store_url or ""],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        in_refresh = cycle % 2 == 0  # every other kill lands inside a refresh (compaction) job
        deadline = time.monotonic() + rng.uniform(1.0, 6.0)
        for line in worker.stdout:
            acks.feed(line)
            if time.monotonic() > deadline and (line.startswith("refreshing") or not in_refresh):
                break
        time.sleep(rng.uniform(0.0, 0.3))
        worker.send_signal(signal.SIGKILL)
        for line in worker.stdout:  # what it printed before it died
            acks.feed(line)
        worker.wait()
        acks.killed()
        check_registry(root)

    serving = load_indexes(settings, encoder)
    indexes, jobs = serving.indexes, serving.jobs
    try:
        while jobs.queue.pending("documents") or jobs.queue.pending("refresh"):  # interrupted jobs resume
            time.sleep(0.05)
        assert len(acks.live) > 10 and acks.deleted
        for doc_id in sorted(acks.live):
            i, j = map(int, doc_id.split("-")[1:])
            hits = [p.doc_id for p in indexes.retriever.search(record_text(i, j), 10).passages]
            assert hits[0] == doc_id and hits.count(doc_id) == 1, (doc_id, hits)
        for doc_id in acks.deleted - acks.unknown:
            i, j = map(int, doc_id.split("-")[1:])
            assert doc_id not in {p.doc_id for p in indexes.retriever.search(record_text(i, j), 10).passages}
    finally:
        serving.stop()
    check_registry(root)
