"""Faults: a full disk under ingestion and under compaction, SIGKILL at random moments, SIGTERM
under load, each against real `ragserve serve` processes (demo index) over HTTP.

    python -m bench.faults [--seconds 8] [--kills 5] [--seed 7]

An *acknowledged* document is one of a POST /v1/documents batch whose job reached `done`
(GET /v1/jobs/{id}); it is *lost* when a server restarted on the same registry directory does
not find it. Each document is a sentence of its own with a unique token; it is found when a
dense POST /v1/retrieve of that sentence returns it in the top 10 (the query's embedding is the
document's own). Not BM25 on the token: a term the serving version has never seen is not
searchable in the delta index until the next compaction (retriever/delta.py).

1. Disk full during ingest: the registry on a tmpfs of DISK_MIB; batches go in (closed loop)
   while a filler file grows until the disk is full, then for as long again; the filler goes,
   a batch must be done; restart, count the lost.
2. Disk full during compaction: the same registry, disk filled but for RESERVE_KIB (room for
   the job queue, not for a new version); a refresh must fail with a storage error, the serving
   version stay and /v1/retrieve answer; space back, a refresh must serve a new version; restart,
   count the lost.
3. SIGKILL: `--kills` rounds of a server taking batches (and a refresh now and then) killed at a
   random moment and started again on its registry; then count the lost.
4. SIGTERM under load: /v1/ask clients and a batch writer, SIGTERM; exit code, seconds to exit,
   answers other than 2xx, 429 and 503 draining (connection refused once the listener is closed
   is expected and not counted); restart, count the lost.

Goals (issue 16): no acknowledged document lost; the serving version complete (listed by GET
/admin/indexes, /readyz 200) after every restart; failures on a full disk are 503
storage_unavailable or failed jobs naming a storage error, never another 5xx; SIGTERM exits 0
within RAGSERVE_SHUTDOWN_GRACE_S (10 s here), every request in flight answered 2xx.
"""

import argparse
import errno
import http.client
import itertools
import json
import os
import random
import secrets
import signal
import subprocess
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import header
from bench.latency import QUESTIONS
from bench.load import served

DISK_MIB = 32  # the tmpfs; the registry of the demo index takes about 1.5 MiB of it
RESERVE_KIB = 384  # freed for scenario 2: the job queue fits, a new version (~1 MiB) does not
GRACE_S = 10
BATCH = 4  # documents per batch
ENV = {  # fast failures and retries, compaction only on request
    "RAGSERVE_JOB_MAX_ATTEMPTS": "2",
    "RAGSERVE_WORKER_BACKOFF_MAX_S": "0.5",
    "RAGSERVE_COMPACT_AFTER_CHUNKS": "0",
    "RAGSERVE_SHUTDOWN_GRACE_S": str(GRACE_S),
}
WORDS = ["amber", "basalt", "cedar", "dune", "ember", "fjord", "garnet", "heron", "iris", "juniper", "kelp", "lichen"]
RUN = secrets.token_hex(3)  # tokens of this run never match an earlier run's
SERIAL = itertools.count()
ANOMALIES: list[str] = []  # 5xx answers nobody expects, failed checks: printed after the table


# --- HTTP ------------------------------------------------------------------------------------


def call(port: int, method: str, path: str, body: Any = None, timeout: float = 60) -> tuple[int, dict[str, Any]]:
    """One request on a fresh connection -> (status, JSON body); connection errors propagate."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body)
        conn.request(method, path, data, {"content-type": "application/json"})
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    try:
        payload = json.loads(raw) if raw else {}
    except ValueError:
        payload = {"raw": raw[:200].decode("utf-8", "replace")}
    if response.status >= 500 and error_code(payload) not in ("storage_unavailable", "draining", "not_ready"):
        ANOMALIES.append(f"{method} {path}: {response.status} {json.dumps(payload)[:300]}")
    return response.status, payload


def error_code(payload: dict[str, Any]) -> str:
    error = payload.get("error")
    return str(error.get("code")) if isinstance(error, dict) else ""


@contextmanager
def start(registry: Path, env: dict[str, str] | None = None) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A server on `registry` (kept between starts), ready; stopped with SIGTERM unless gone."""
    with served(None, {**ENV, "RAGSERVE_REGISTRY_DIR": str(registry), **(env or {})}) as (port, process):
        yield port, process


def serving(port: int) -> tuple[str | None, list[str]]:
    """(the serving version, every version) of GET /admin/indexes."""
    status, body = call(port, "GET", "/admin/indexes")
    if status != 200:
        return None, []
    index = body["indexes"][0]
    return index["serving"], [v["version"] for v in index["versions"]]


def complete(port: int) -> bool:
    """The serving version is listed, /readyz is 200 and a search answers from that version."""
    version, versions = serving(port)
    ready = call(port, "GET", "/readyz")[0] == 200
    status, body = call(port, "POST", "/v1/retrieve", {"query": "warm-up", "retrieval": "dense"})
    ok = version in versions and ready and status == 200 and body.get("index_version") == version
    if not ok:
        ANOMALIES.append(f"serving version incomplete: {version} in {versions}, ready {ready}, retrieve {status}")
    return ok


# --- documents and what was acknowledged ------------------------------------------------------


@dataclass(frozen=True)
class Doc:
    id: str
    text: str


def new_docs(n: int) -> list[Doc]:
    docs = []
    for _ in range(n):
        i = next(SERIAL)
        a, b, c = WORDS[i % 12], WORDS[(i * 7 + 1) % 12], WORDS[(i * 5 + 2) % 12]
        docs.append(Doc(f"fault-{RUN}-{i}", f"Record fx{RUN}n{i}: the {a} vault of {b} holds {i * 97} crates of {c}."))
    return docs


@dataclass
class Ledger:
    """Batches submitted, their jobs' last seen states, and why submissions were refused."""

    batches: dict[str, list[Doc]] = field(default_factory=dict)  # job id -> documents (202 only)
    states: dict[str, str] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)  # "503 storage_unavailable", "error", ...
    errors: dict[str, str] = field(default_factory=dict)  # job id -> errors of a failed job

    def submit(self, port: int, docs: list[Doc] | None = None) -> str | None:
        """POST a batch (new documents unless given); its job id, or None when refused."""
        docs = docs or new_docs(BATCH)
        upsert = [{"id": d.id, "text": d.text} for d in docs]
        status, body = call(port, "POST", "/v1/documents", {"upsert": upsert})
        if status != 202:
            self.refused[f"{status} {error_code(body)}"] += 1
            return None
        self.batches[body["job_id"]] = docs
        self.states[body["job_id"]] = "queued"
        return str(body["job_id"])

    def wait(self, port: int, job_id: str, seconds: float = 20) -> str:
        """Poll a job until it ends or `seconds` pass; its last seen state."""
        deadline = time.monotonic() + seconds
        while True:
            status, body = call(port, "GET", f"/v1/jobs/{job_id}")
            if status == 200:
                self.states[job_id] = body["state"]
                if body["state"] == "failed":
                    self.errors[job_id] = json.dumps(body["errors"])
                if body["state"] in ("done", "failed") or time.monotonic() > deadline:
                    return str(body["state"])
            elif time.monotonic() > deadline:
                return self.states[job_id]
            time.sleep(0.05)

    def settle(self, port: int, seconds: float = 60) -> int:
        """Wait for every unfinished job (a restart resumes them); how many never ended."""
        deadline = time.monotonic() + seconds
        for job_id in [j for j, s in self.states.items() if s not in ("done", "failed")]:
            self.wait(port, job_id, max(0.0, deadline - time.monotonic()))
        unfinished = [j for j, s in self.states.items() if s not in ("done", "failed")]
        if unfinished:
            ANOMALIES.append(f"{len(unfinished)} jobs never ended, e.g. {unfinished[0]}")
        return len(unfinished)

    def acknowledged(self) -> list[Doc]:
        return [d for j, docs in self.batches.items() if self.states[j] == "done" for d in docs]

    def jobs(self, state: str) -> int:
        return sum(s == state for s in self.states.values())


def found(port: int, doc: Doc) -> bool:
    body = {"query": doc.text, "retrieval": "dense", "top_k": 10}
    for _ in range(3):
        status, answer = call(port, "POST", "/v1/retrieve", body)
        if status == 200:
            return doc.id in {p["doc_id"] for p in answer["passages"]}
        time.sleep(0.2)
    return False


def lost(port: int, docs: list[Doc]) -> list[str]:
    """The documents a search does not find."""
    with ThreadPoolExecutor(4) as pool:
        missing = [d.id for d, ok in zip(docs, pool.map(lambda d: found(port, d), docs), strict=True) if not ok]
    if missing:
        ANOMALIES.append(f"lost {len(missing)} of {len(docs)} acknowledged documents, e.g. {missing[:3]}")
    return missing


# --- the disk --------------------------------------------------------------------------------


@contextmanager
def small_disk(mib: int) -> Iterator[tuple[Path | None, str]]:
    """A tmpfs of `mib` MiB (None and the reason where it cannot be mounted), unmounted after."""
    disk = Path(tempfile.mkdtemp(prefix="ragserve-faults-"))
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(disk)], capture_output=True, text=True
    )
    try:
        yield (disk, "") if mount.returncode == 0 else (None, mount.stderr.strip() or f"mount exit {mount.returncode}")
    finally:
        if mount.returncode == 0 and subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], check=False)
        disk.rmdir()


def fill(path: Path, seconds: float = 0.0) -> None:
    """Grow `path` until its file system is full, spread over about `seconds`."""
    free = os.statvfs(path.parent).f_bavail * os.statvfs(path.parent).f_frsize
    step = max(4096, int(free / max(1.0, seconds / 0.05)))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (step, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
                    if size == step and seconds:
                        time.sleep(0.05)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)


# --- the scenarios ---------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    done: str
    lost: str = "n/a"
    complete: str = "n/a"
    goal: str = ""


def yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def ingest_until(port: int, ledger: Ledger, until: float) -> None:
    """Closed loop: a batch, then its job until it ends (or 10 s), until `until`."""
    while time.monotonic() < until:
        job_id = ledger.submit(port)
        if job_id is None:
            time.sleep(0.1)
        else:
            ledger.wait(port, job_id, 10)


def disk_full_ingest(disk: Path, seconds: float, ledger: Ledger) -> Row:
    registry = disk / "registry"
    with start(registry) as (port, _):
        before, _ = serving(port)
        size = sum(f.stat().st_blocks * 512 for f in registry.rglob("*") if f.is_file()) / (1 << 20)
        filler = threading.Thread(target=fill, args=(disk / "filler", seconds))
        filler.start()
        ingest_until(port, ledger, time.monotonic() + seconds)
        filler.join()
        ingest_until(port, ledger, time.monotonic() + seconds)  # the disk stays full
        full = (len(ledger.batches), sum(ledger.refused.values()), ledger.jobs("done"), ledger.jobs("failed"))
        (disk / "filler").unlink()
        job_id = ledger.submit(port)
        resumed = job_id is not None and ledger.wait(port, job_id, 30) == "done"
        ledger.settle(port, 30)
    with start(registry) as (port, _):
        unfinished = ledger.settle(port, 30)
        missing = lost(port, ledger.acknowledged())
        ok = complete(port) and serving(port)[0] == before
    refused = ", ".join(f"{n}× {why}" for why, n in ledger.refused.items()) or "none"
    done = (
        f"registry {size:.1f} of {DISK_MIB} MiB; while filling and full ({2 * seconds:.0f} s): "
        f"{full[0]} batches acknowledged (202), refused: {refused}; "
        f"jobs done {full[2]} / failed {full[3]}; space back: a batch done {yes(resumed)}; after restart "
        f"{ledger.jobs('done')} jobs done, {ledger.jobs('failed')} failed, {unfinished} unfinished"
    )
    goal = "lost 0; refusals 503 storage_unavailable; batch done once space is back"
    return Row("1. disk full during ingest", done, f"{len(missing)} of {len(ledger.acknowledged())}", yes(ok), goal)


def refresh(port: int) -> tuple[str, dict[str, Any]]:
    """POST a refresh and wait for its job -> (state or why it was refused, the job)."""
    status, body = call(port, "POST", "/admin/indexes/default/refresh", {})
    if status != 202:
        return f"refused {status} {error_code(body)}", body
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status, job = call(port, "GET", f"/v1/jobs/{body['job_id']}")
        if status == 200 and job["state"] in ("done", "failed"):
            return str(job["state"]), job
        time.sleep(0.1)
    ANOMALIES.append(f"refresh job {body['job_id']} did not end in 120 s")
    return "unfinished", {}


def disk_full_compaction(disk: Path, ledger: Ledger) -> Row:
    registry = disk / "registry"
    with start(registry) as (port, _):
        for _ in range(3):  # fresh documents in the delta, beside those of scenario 1
            if job_id := ledger.submit(port):
                ledger.wait(port, job_id)
        before = serving(port)
        (disk / "reserve").write_bytes(b"\0" * (RESERVE_KIB << 10))
        fill(disk / "filler")
        (disk / "reserve").unlink()
        state, job = refresh(port)
        reason = job.get("errors", {}).get("*", job.get("error", {}).get("code", ""))
        unchanged = serving(port) == before
        missing_full = lost(port, ledger.acknowledged())  # searches go on with the disk full
        (disk / "filler").unlink()
        state2, job2 = refresh(port)
        new = serving(port)[0]
        switched = state2 == "done" and new != before[0] and job2["index"]["serving"] == new
    with start(registry) as (port, _):
        missing = lost(port, ledger.acknowledged())
        ok = complete(port) and serving(port)[0] == new
    done = (
        f"refresh on a full disk: {state} ({reason}); serving version and versions unchanged {yes(unchanged)}; "
        f"/v1/retrieve found {len(ledger.acknowledged()) - len(missing_full)} of {len(ledger.acknowledged())} "
        f"while full; space back: refresh {state2}, new version serves {yes(switched)}"
    )
    goal = "failed with a storage error, serving unchanged; then done and a new version; lost 0"
    return Row("2. disk full during compaction", done, f"{len(missing)} of {len(ledger.acknowledged())}", yes(ok), goal)


def writer(port: int, ledger: Ledger, stop: threading.Event, refresh_every: int = 0) -> None:
    """Batches in a closed loop (and a refresh every `refresh_every` batches) until `stop` or the
    server is gone."""
    refreshing: str | None = None
    try:
        for n in itertools.count(1):
            if stop.is_set():
                return
            job_id = ledger.submit(port)
            if job_id is not None:
                ledger.wait(port, job_id, 10)
            if refresh_every and n % refresh_every == 0 and ended(port, ledger, refreshing):
                status, body = call(port, "POST", "/admin/indexes/default/refresh", {})
                refreshing = body["job_id"] if status == 202 else None
                if refreshing:
                    ledger.states[refreshing], ledger.batches[refreshing] = "queued", []
    except (OSError, http.client.HTTPException):
        return  # killed


def ended(port: int, ledger: Ledger, job_id: str | None) -> bool:
    return job_id is None or ledger.wait(port, job_id, 0) in ("done", "failed")


def sigkill_rounds(kills: int, rng: random.Random) -> Row:
    ledger, busy = Ledger(), Counter[str]()
    starts = 0
    with tempfile.TemporaryDirectory() as tmp:
        registry = Path(tmp) / "registry"
        for _ in range(kills):
            with start(registry) as (port, process):
                starts += 1
                ledger.settle(port, 30)  # what the last kill interrupted resumes
                stop = threading.Event()
                thread = threading.Thread(target=writer, args=(port, ledger, stop, 3))
                thread.start()
                time.sleep(rng.uniform(0.5, 5.0))
                workers = call(port, "GET", "/readyz", timeout=5)[1].get("workers", {})
                process.send_signal(signal.SIGKILL)
                busy.update(kind for kind, w in workers.items() if w["state"] == "running")
                process.wait()
                stop.set()
                thread.join()
        with start(registry) as (port, _):
            starts += 1
            unfinished = ledger.settle(port, 60)
            docs = ledger.acknowledged()
            missing = lost(port, docs)
            ok = complete(port)
    refreshes = [j for j, d in ledger.batches.items() if not d]
    done = (
        f"{kills} SIGKILLs at random moments (0.5-5 s after ready; {busy['documents']} with a batch and "
        f"{busy['refresh']} with a refresh running just before), {starts} starts all ready; "
        f"{len(ledger.batches) - len(refreshes)} batches acknowledged, {len(docs)} documents done; "
        f"{sum(ledger.states[j] == 'done' for j in refreshes)} of {len(refreshes)} refreshes done; "
        f"{unfinished} jobs unfinished"
    )
    return Row("3. SIGKILL during ingest/refresh", done, f"{len(missing)} of {len(docs)}", yes(ok), "lost 0; starts")


@dataclass
class Outcome:
    started: float
    ended: float
    path: str
    status: int  # 0: connection refused, -1: another connection failure
    code: str = ""


def asker(port: int, questions: list[str], stop: threading.Event, out: list[Outcome], seed: int) -> None:
    i = seed
    while not stop.is_set():
        started = time.monotonic()
        try:
            status, body = call(port, "POST", "/v1/ask", {"question": questions[i % len(questions)]})
            out.append(Outcome(started, time.monotonic(), "/v1/ask", status, error_code(body)))
            if status in (429, 503):
                time.sleep(0.05)  # a client that backs off a little, as Retry-After asks
        except ConnectionRefusedError:
            out.append(Outcome(started, time.monotonic(), "/v1/ask", 0))
            time.sleep(0.05)
        except (OSError, http.client.HTTPException) as exc:
            out.append(Outcome(started, time.monotonic(), "/v1/ask", -1, type(exc).__name__))
        i += 1


def sigterm_under_load(seconds: float) -> Row:
    ledger, out = Ledger(), list[Outcome]()
    questions = [json.loads(line)["question"] for line in QUESTIONS.read_text().splitlines() if line.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        registry = Path(tmp) / "registry"
        with start(registry) as (port, process):
            call(port, "POST", "/v1/ask", {"question": questions[0]})  # warm-up
            stop = threading.Event()
            threads = [threading.Thread(target=asker, args=(port, questions, stop, out, c)) for c in range(3)]
            threads.append(threading.Thread(target=writer, args=(port, ledger, stop)))
            for t in threads:
                t.start()
            time.sleep(seconds)
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            try:
                code: int | str = process.wait(timeout=GRACE_S + 30)
            except subprocess.TimeoutExpired:
                code = f"still running {GRACE_S + 30} s after SIGTERM"
                ANOMALIES.append(f"SIGTERM: {code}")
            took = time.monotonic() - signalled
            if code != 0 or took > GRACE_S:
                ANOMALIES.append(f"SIGTERM: exit code {code} after {took:.1f} s (grace {GRACE_S} s)")
            stop.set()
            for t in threads:
                t.join()
        with start(registry) as (port, _):
            unfinished = ledger.settle(port, 60)
            docs = ledger.acknowledged()
            missing = lost(port, docs)
            ok = complete(port)
    in_flight = [o for o in out if o.started < signalled < o.ended]
    answered = [o for o in out if o.status > 0]
    bad = [o for o in answered if not (o.status < 300 or o.status == 429 or (o.status, o.code) == (503, "draining"))]
    dropped = [o for o in out if o.status == -1 and o.started < signalled]  # in flight, never answered
    reset = [o for o in out if o.status == -1 and o.started >= signalled]  # sent while it shut down
    for o in bad + dropped:
        ANOMALIES.append(f"SIGTERM: {o.path} {o.status} {o.code} at {o.started - signalled:+.2f} s")
    done = (
        f"3 /v1/ask clients + 1 batch writer for {seconds:.0f} s, SIGTERM: exit code {code} after {took:.1f} s; "
        f"{len(answered)} answers ({sum(o.status == 200 for o in answered)} 200, "
        f"{sum(o.status == 503 for o in answered)} 503 draining, {sum(o.status == 429 for o in answered)} 429); "
        f"in flight at SIGTERM {len(in_flight)}, answered 2xx {sum(0 < o.status < 300 for o in in_flight)}; "
        f"other non-2xx {len(bad)}; in-flight connections dropped {len(dropped)}; "
        f"requests sent after SIGTERM reset unanswered as the listener closed {len(reset)}; "
        f"{len(ledger.batches)} batches acknowledged (refused: {dict(ledger.refused) or 'none'}), "
        f"{unfinished} jobs unfinished after restart"
    )
    goal = f"exit 0 within {GRACE_S} s; in flight all 2xx; other non-2xx 0; lost 0"
    return Row("4. SIGTERM under load", done, f"{len(missing)} of {len(docs)}", yes(ok), goal)


# --- main ------------------------------------------------------------------------------------


def guarded(name: str, scenario: Any, *args: Any) -> Row:
    """The scenario's row, or a row saying how it broke (a server that did not start, ...)."""
    began = time.monotonic()
    try:
        row: Row = scenario(*args)
        row.done += f" ({time.monotonic() - began:.0f} s)"
        return row
    except (Exception, SystemExit) as exc:
        traceback.print_exc()
        ANOMALIES.append(f"{name}: {type(exc).__name__}: {exc}")
        return Row(name, f"**error**: {type(exc).__name__}: {exc}")


def disk_rows(seconds: float) -> list[Row]:
    with small_disk(DISK_MIB) as (disk, why):
        if disk is None:
            return [Row(s, f"skipped: {why}") for s in ("1. disk full during ingest", "2. disk full during compaction")]
        ledger = Ledger()  # scenario 2 checks scenario 1's documents too
        first = guarded("1. disk full during ingest", disk_full_ingest, disk, seconds, ledger)
        return [first, guarded("2. disk full during compaction", disk_full_compaction, disk, ledger)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8, help="load per phase")
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    header(f"faults: disk full, {args.kills} SIGKILLs, SIGTERM under load; real servers, demo index")
    began = time.monotonic()
    rows = disk_rows(args.seconds)
    rows.append(guarded("3. SIGKILL during ingest/refresh", sigkill_rounds, args.kills, random.Random(args.seed)))
    rows.append(guarded("4. SIGTERM under load", sigterm_under_load, args.seconds))
    print(f"settings: {' '.join(f'{k}={v}' for k, v in ENV.items())}; tmpfs {DISK_MIB} MiB; {BATCH} documents a batch")
    print("| scenario | what was done | acknowledged documents lost | serving version complete | goal |")
    print("|---|---|---:|---|---|")
    for row in rows:
        print(f"| {row.scenario} | {row.done} | {row.lost} | {row.complete} | {row.goal} |")
    print(f"total {time.monotonic() - began:.0f} s")
    print("anomalies: " + ("none" if not ANOMALIES else ""))
    for line in ANOMALIES:
        print(f"- {line}")


if __name__ == "__main__":
    main()
