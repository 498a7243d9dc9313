"""Replicas (issue 17): several `ragserve serve` processes on one store, measured as real processes on
loopback ports (bench/cluster.py), the store on a real throwaway PostgreSQL (bench/pgserver.py) or
on the registry's SQLite file (the processes of one machine).

    python -m bench.replicas [--quick] [--only freshness,roll,throughput] [--documents 200]
                             [--clients 16] [--seconds 10] [--rolls 2]

- **freshness**: `--documents` single-document ingests over 2 replicas, one at a time, alternating
  the replica that receives the POST; the time from its `202` until a /v1/retrieve (top 3, the
  document's own text) on the *other* replica returns it, polled every 10 ms. A document not found
  within 10 s is a miss. For PostgreSQL and for SQLite (2 processes on one machine).
- **roll**: `--clients` closed-loop /v1/retrieve clients over 3 replicas (PostgreSQL), each round
  robin over all of them; meanwhile `--rolls` times: a few ingests, a refresh on one replica
  (followed to its job's `done`), then a rollback to the version before it on another. Counts
  non-2xx answers and answers from a version no replica served at that moment (version of change k
  may answer from the moment change k was sent until every replica serves the version of change
  k+1), and the time from the job's `done` (the rollback's answer) until every replica's /readyz
  reports the new version.
- **throughput**: `--clients` closed-loop /v1/retrieve clients for `--seconds` over 1, 2 and 3
  replicas on PostgreSQL, against 1 replica on SQLite (the baseline, same run); requests/s and
  the replica processes' CPU time (utime+stime from /proc) per request, and PostgreSQL's own.

The replicas run with the default settings (follow_poll_s 0.25 s, heartbeat_s 1 s). Clusters grow
and shrink between parts (a replica joins, or leaves with a drain) instead of starting afresh.
The measuring functions (`measure_freshness`, `run_roll`, `measure_throughput`) take running nodes
and small parameters, for tests.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench.cluster import Node, replica_env, serving_versions, start_node, wait_nodes
from bench.common import header, percentile
from bench.hotswap import QUERIES, make_versions
from bench.latency import QUESTIONS
from bench.pgserver import PostgresServer, postgres_server

POSTGRES, SQLITE = "postgresql", "sqlite"
_T = TypeVar("_T")
PARTS = ("freshness", "roll", "throughput")
MISS_AFTER_S = 10.0
POLL_S = 0.01

# --- HTTP on a kept connection ----------------------------------------------------------------


def _connect(node: Node, timeout: float = 60) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", node.port, timeout=timeout)


def _call(conn: http.client.HTTPConnection, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """(status, parsed JSON or None); raises OSError / HTTPException when the connection fails."""
    payload = None if body is None else json.dumps(body)
    conn.request(method, path, payload, {"content-type": "application/json"})
    response = conn.getresponse()
    raw = response.read()
    try:
        return response.status, json.loads(raw) if raw else None
    except ValueError:
        return response.status, None


def _queries() -> list[str]:
    demo = [json.loads(line)["question"] for line in QUESTIONS.read_text().splitlines() if line.strip()]
    return [*demo, *QUERIES]


def wait_job(node: Node, job_id: str, seconds: float = 120, every: float = POLL_S) -> dict[str, Any]:
    """Poll GET /v1/jobs/{id} until it is done or failed; its last body."""
    conn = _connect(node)
    try:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            status, body = _call(conn, "GET", f"/v1/jobs/{job_id}")
            if status != 200:
                raise RuntimeError(f"GET /v1/jobs/{job_id}: {status} {body}")
            if body["state"] in ("done", "failed"):
                return dict(body)
            time.sleep(every)
    finally:
        conn.close()
    raise RuntimeError(f"job {job_id} not finished after {seconds} s")


def wait_serving(nodes: Sequence[Node], version: str, seconds: float = 30, every: float = POLL_S) -> float | None:
    """Poll every replica's /readyz until all report `version`; the perf_counter time they did
    (None on timeout)."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if all(v == version for v in serving_versions(list(nodes))):
            return time.perf_counter()
        time.sleep(every)
    return None


# --- documents ----------------------------------------------------------------------------------

_SYLLABLES = ["ka", "zu", "mor", "vel", "tri", "quo", "dax", "nim", "rel", "fo", "sha", "gli", "pex", "wun", "yor"]
_THINGS = ["copper ingots", "amber resin", "woolen bales", "salt blocks", "cedar planks", "glass beads", "indigo dye"]
_PLACES = ["harbour", "quarry", "granary", "observatory", "lighthouse", "monastery", "tannery", "foundry"]


def distinct_text(rng: random.Random, i: int) -> str:
    """A sentence no other document of the run shares: two made-up names (rare words, for BM25)
    and a random load, place and count (for the dense side)."""

    def word(parts: int) -> str:
        return "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize()

    return (
        f"Courier {word(3)} {word(2)} number {i} delivered {rng.randint(11, 9_999)} crates of "
        f"{rng.choice(_THINGS)} to the {word(3)} {rng.choice(_PLACES)} on day {rng.randint(1, 365)}."
    )


def ingest(node: Node, doc_id: str, text: str) -> str:
    """POST one document; its job id (RuntimeError unless 202)."""
    status, body = node.post("/v1/documents", {"upsert": [{"id": doc_id, "title": "", "text": text}]})
    if status != 202:
        raise RuntimeError(f"POST /v1/documents on :{node.port}: {status} {body}")
    return str(body["job_id"])


# --- freshness ----------------------------------------------------------------------------------


@dataclass
class Miss:
    doc_id: str
    received_by: int  # node index
    searched_on: int
    diagnosis: str  # job state, whether the receiving replica finds it, replica lags


@dataclass
class FreshnessReport:
    store: str
    replicas: int  # 1: searched on the replica that received it (the baseline)
    documents: int  # ingests sent
    seconds: list[float] = field(default_factory=list)  # 202 -> found on the other replica, found ones
    misses: list[Miss] = field(default_factory=list)
    stopped_early: bool = False  # too many misses: the rest was not sent

    def ms(self, q: float) -> float:
        return percentile([s * 1000 for s in self.seconds], q) if self.seconds else math.nan


def measure_freshness(
    nodes: Sequence[Node],
    documents: int,
    tag: str = "fresh",
    miss_after_s: float = MISS_AFTER_S,
    poll_s: float = POLL_S,
    max_misses: int = 3,
    store: str = "",
) -> FreshnessReport:
    """`documents` single-document ingests, one at a time; ingest i goes to nodes[i % n] and is
    searched for on nodes[(i + 1) % n] (the same node when n is 1) by its own text, top 3, every
    `poll_s` from the `202` until found or `miss_after_s`. Stops after `max_misses` misses (each
    costs `miss_after_s`)."""
    rng = random.Random(tag)
    report = FreshnessReport(store, len(nodes), 0)
    conns = [_connect(n) for n in nodes]
    try:
        for i in range(documents):
            src, dst = i % len(nodes), (i + 1) % len(nodes)
            doc_id, text = f"{tag}-{i}", distinct_text(rng, i)
            status, body = _call(
                conns[src], "POST", "/v1/documents", {"upsert": [{"id": doc_id, "title": "", "text": text}]}
            )
            acknowledged = time.perf_counter()
            report.documents += 1
            if status != 202:
                raise RuntimeError(f"POST /v1/documents on node {src}: {status} {body}")
            while True:
                status, found = _call(conns[dst], "POST", "/v1/retrieve", {"query": text, "top_k": 3})
                elapsed = time.perf_counter() - acknowledged
                if status == 200 and doc_id in {p["doc_id"] for p in found["passages"]}:
                    report.seconds.append(elapsed)
                    break
                if elapsed > miss_after_s:
                    diagnosis = _diagnose(nodes, src, doc_id, text, str(body["job_id"]), status)
                    report.misses.append(Miss(doc_id, src, dst, diagnosis))
                    break
                time.sleep(poll_s)
            if len(report.misses) >= max_misses:
                report.stopped_early = i + 1 < documents
                break
    finally:
        for conn in conns:
            conn.close()
    return report


def _diagnose(nodes: Sequence[Node], src: int, doc_id: str, text: str, job_id: str, last_status: int) -> str:
    _, job = nodes[src].get(f"/v1/jobs/{job_id}")
    _, own = nodes[src].post("/v1/retrieve", {"query": text, "top_k": 3})
    on_src = doc_id in {p["doc_id"] for p in (own or {}).get("passages", [])}
    _, listing = nodes[src].get("/admin/indexes")
    index = (listing or {}).get("indexes", [{}])[0]
    lags = [(r["pid"], r["version"], r["delta_seq"], r["lag_changes"]) for r in index.get("replicas", [])]
    return (
        f"last search status {last_status}; job {job_id} {job.get('state') if job else '?'} "
        f"errors={job.get('errors') if job else '?'}; found on the receiving replica: {on_src}; "
        f"head_seq={index.get('head_seq')}; replicas (pid, version, delta_seq, lag)={lags}"
    )


# --- load ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    node: int
    start: float
    end: float
    status: int  # 0: the connection failed
    version: str


def _client(nodes: Sequence[Node], queries: list[str], stop: threading.Event, seed: int, out: list[Call]) -> None:
    """Closed loop: the next request when the last one is answered, round robin over `nodes`."""
    conns = [_connect(n) for n in nodes]
    i = seed
    while not stop.is_set():
        k = i % len(nodes)
        start = time.perf_counter()
        try:
            status, body = _call(conns[k], "POST", "/v1/retrieve", {"query": queries[i % len(queries)], "top_k": 3})
            version = str(body.get("index_version", "")) if isinstance(body, dict) else ""
        except (OSError, http.client.HTTPException):
            status, version = 0, ""
            conns[k].close()
            conns[k] = _connect(nodes[k])
        out.append(Call(k, start, time.perf_counter(), status, version))
        i += 1
    for conn in conns:
        conn.close()


@contextmanager
def load(nodes: Sequence[Node], clients: int) -> Iterator[list[list[Call]]]:
    """`clients` closed-loop /v1/retrieve clients over `nodes` while the block runs; their calls
    (one list per client; complete once the block has ended)."""
    queries, stop = _queries(), threading.Event()
    results: list[list[Call]] = [[] for _ in range(clients)]
    threads = [
        threading.Thread(target=_client, args=(nodes, queries, stop, c * 7, results[c]), daemon=True)
        for c in range(clients)
    ]
    for t in threads:
        t.start()
    try:
        yield results
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)


# --- a refresh and a rollback rolled to every replica under load --------------------------------


@dataclass
class Change:
    action: str  # refresh | rollback
    previous: str
    version: str  # what serves after it
    start: float  # perf_counter: the request sent
    acknowledged: float  # the refresh job seen `done`, the rollback answered
    converged: float | None  # every replica's /readyz reports `version` (None: not within the limit)

    @property
    def converge_s(self) -> float:
        return math.inf if self.converged is None else self.converged - self.acknowledged


@dataclass
class RollReport:
    initial: str
    calls: list[Call] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # changes that did not happen as asked

    @property
    def non_2xx(self) -> int:
        return sum(1 for c in self.calls if not 200 <= c.status < 300)

    def wrong_calls(self) -> list[Call]:
        """Answers (2xx) from a version that served at no moment of their request: the version of
        change k may serve from the moment change k was sent until every replica serves the
        version of change k+1 (the initial one until change 0 has rolled)."""
        begins = [-math.inf, *(c.start for c in self.changes)]
        versions = [self.initial, *(c.version for c in self.changes)]
        ends = [math.inf if c.converged is None else c.converged for c in self.changes] + [math.inf]
        return [
            call
            for call in self.calls
            if 200 <= call.status < 300
            and not any(
                v == call.version and b <= call.end and call.start <= e
                for b, v, e in zip(begins, versions, ends, strict=True)
            )
        ]

    @property
    def wrong_version(self) -> int:
        return len(self.wrong_calls())

    @property
    def converge_s(self) -> float:
        """The slowest change's time from `done` / the rollback's answer to every replica serving
        it (inf if one did not converge; 0 with no change)."""
        return max((c.converge_s for c in self.changes), default=0.0)


def run_roll(
    nodes: Sequence[Node],
    clients: int = 16,
    rolls: int = 2,
    ingests: int = 5,
    pause_s: float = 1.0,
    tag: str = "roll",
    converge_limit_s: float = 30.0,
) -> RollReport:
    """Under `clients` closed-loop retrieve clients over every node, `rolls` times: `ingests`
    documents (each waited for), a refresh posted to one node and followed to `done`, then a
    rollback to the version before it posted to the next node; `pause_s` of load before, between
    and after the changes. Each change is followed until every replica serves its version."""
    versions = serving_versions(list(nodes))
    if len(set(versions)) != 1 or versions[0] is None:
        raise RuntimeError(f"the replicas do not serve one version: {versions}")
    report = RollReport(initial=versions[0])
    rng = random.Random(tag)
    current = report.initial
    with load(nodes, clients) as results:
        time.sleep(pause_s)
        for r in range(rolls):
            jobs = [
                ingest(nodes[(r + j) % len(nodes)], f"{tag}-{r}-{j}", distinct_text(rng, j)) for j in range(ingests)
            ]
            for job_id in jobs:
                job = wait_job(nodes[0], job_id)
                if job["state"] != "done":
                    report.failures.append(f"ingest job {job_id}: {job}")
            refresh_on = nodes[r % len(nodes)]
            start = time.perf_counter()
            status, body = refresh_on.post("/admin/indexes/default/refresh")
            if status != 202:
                report.failures.append(f"POST refresh: {status} {body}")
                break
            job = wait_job(refresh_on, str(body["job_id"]))
            done = time.perf_counter()
            index = job.get("index") or {}
            if job["state"] != "done" or not index.get("built"):
                report.failures.append(f"refresh job: {job}")
                break
            new = str(index["serving"])
            converged = wait_serving(nodes, new, converge_limit_s)
            report.changes.append(Change("refresh", current, new, start, done, converged))
            previous, current = current, new
            time.sleep(pause_s)
            rollback_on = nodes[(r + 1) % len(nodes)]
            start = time.perf_counter()
            status, body = rollback_on.post("/admin/indexes/default/rollback", {"version": previous})
            answered = time.perf_counter()
            if status != 200 or body.get("serving") != previous:
                report.failures.append(f"POST rollback to {previous}: {status} {body}")
                break
            converged = wait_serving(nodes, previous, converge_limit_s)
            report.changes.append(Change("rollback", current, previous, start, answered, converged))
            current = previous
            time.sleep(pause_s)
    report.calls = [c for per in results for c in per]
    return report


# --- throughput and CPU ---------------------------------------------------------------------------


def cpu_s(pid: int, children: bool = False) -> float:
    """User + system CPU seconds of a process so far (with its reaped children's, if asked)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_cpu_s(pg: PostgresServer) -> float:
    """CPU seconds of the PostgreSQL server: the postmaster (with its exited backends) and every
    live backend."""
    master = int((pg.data / "postmaster.pid").read_text().split()[0])
    total = cpu_s(master, children=True)
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == master:
                total += cpu_s(int(proc.name))
    return total


@dataclass
class Throughput:
    label: str
    replicas: int
    requests: int  # answered within the measured window
    non_2xx: int
    seconds: float
    server_cpu_s: float  # the replica processes
    store_cpu_s: float | None  # the PostgreSQL server (None: SQLite, inside the replicas)
    client_cpu_s: float  # this process (the load generator), on the same cores
    round_rps: list[float] = field(default_factory=list)  # requests/s of each round (`measure_rounds`)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def __add__(self, other: Throughput) -> Throughput:
        """Two measurements of one setup as one (the rounds of `measure_rounds`)."""
        store = None if self.store_cpu_s is None or other.store_cpu_s is None else self.store_cpu_s + other.store_cpu_s
        return Throughput(
            self.label,
            self.replicas,
            self.requests + other.requests,
            self.non_2xx + other.non_2xx,
            self.seconds + other.seconds,
            self.server_cpu_s + other.server_cpu_s,
            store,
            self.client_cpu_s + other.client_cpu_s,
            [*(self.round_rps or [self.rps]), *(other.round_rps or [other.rps])],
        )

    def per_request_ms(self, cpu: float | None) -> float:
        return math.nan if cpu is None else cpu / max(1, self.requests) * 1000


def measure_throughput(
    nodes: Sequence[Node],
    clients: int = 16,
    seconds: float = 10.0,
    warmup_s: float = 2.0,
    label: str = "",
    store_cpu: Callable[[], float] | None = None,
) -> Throughput:
    """`clients` closed-loop /v1/retrieve clients round robin over `nodes`; after `warmup_s`,
    `seconds` are measured: answers that ended inside, and the CPU the replicas (and the store,
    with `store_cpu`) used meanwhile."""
    pids = [n.process.pid for n in nodes]
    with load(nodes, clients) as results:
        time.sleep(warmup_s)
        t0, own0 = time.perf_counter(), os.times()
        cpu0, store0 = sum(cpu_s(p) for p in pids), store_cpu() if store_cpu else None
        time.sleep(seconds)
        t1, own1 = time.perf_counter(), os.times()
        cpu1, store1 = sum(cpu_s(p) for p in pids), store_cpu() if store_cpu else None
    inside = [c for per in results for c in per if t0 <= c.end <= t1]
    return Throughput(
        label,
        len(nodes),
        sum(1 for c in inside if 200 <= c.status < 300),
        sum(1 for c in inside if not 200 <= c.status < 300),
        t1 - t0,
        cpu1 - cpu0,
        None if store0 is None or store1 is None else store1 - store0,
        (own1.user + own1.system) - (own0.user + own0.system),
    )


@dataclass(frozen=True)
class Setup:
    """What one throughput figure loads: these nodes, whose store is `label`."""

    label: str
    nodes: Sequence[Node]
    store_cpu: Callable[[], float] | None = None


def measure_rounds(
    setups: Sequence[Setup], clients: int = 16, seconds: float = 10.0, rounds: int = 3, warmup_s: float = 1.0
) -> list[Throughput]:
    """`measure_throughput` of every setup in turn, `rounds` times (`seconds` / `rounds` each), so
    that load from elsewhere on the machine falls on all of them alike; one sum per setup. Setups
    not measured at a moment stay up, idle."""
    totals: list[Throughput | None] = [None] * len(setups)
    for r in range(rounds):
        for k, setup in enumerate(setups):
            one = measure_throughput(
                setup.nodes, clients, seconds / rounds, warmup_s * (2 if r == 0 else 1), setup.label, setup.store_cpu
            )
            one.round_rps = [one.rps]
            before = totals[k]
            totals[k] = one if before is None else before + one
    return [t for t in totals if t is not None]


# --- clusters that grow and shrink ----------------------------------------------------------------


class Cluster:
    """Replicas of one store on a registry of their own (a copy of `template`), grown and shrunk
    between parts; stopped (drained) at the end."""

    def __init__(
        self,
        store: str,
        template: Path,
        index_version: str,
        root: Path,
        pg: PostgresServer | None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.store = store
        self.registry = root / store
        shutil.copytree(template, self.registry)
        self.index = self.registry / "default" / "versions" / index_version
        self.database_url = pg.new_database() if store == POSTGRES and pg is not None else None
        self.env = replica_env(self.registry, self.database_url, extra_env)
        self.nodes: list[Node] = []

    def size(self, n: int) -> list[Node]:
        """Exactly `n` replicas (started, or the newest ones stopped), ready."""
        while len(self.nodes) > n:
            self.nodes.pop().stop()
        if len(self.nodes) < n:
            if not self.nodes:  # the first alone: the registry imports the index once
                self.nodes.append(start_node(self.index, self.env))
                wait_nodes(self.nodes)
            self.nodes += [start_node(self.index, self.env) for _ in range(n - len(self.nodes))]
            wait_nodes(self.nodes)
        return list(self.nodes)

    def close(self) -> None:
        for node in self.nodes:
            if node.process.poll() is None:
                node.process.terminate()
        for node in self.nodes:
            node.stop(signalled=True)
        self.nodes = []


# --- the run --------------------------------------------------------------------------------------


@dataclass
class Results:
    freshness: list[FreshnessReport] = field(default_factory=list)
    roll: RollReport | None = None
    throughput: list[Throughput] = field(default_factory=list)
    took_s: dict[str, float] = field(default_factory=dict)


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _timed(out: Results, name: str, work: Callable[[], _T]) -> _T:
    _progress(name)
    started = time.perf_counter()
    try:
        return work()
    finally:
        out.took_s[name] = time.perf_counter() - started


def run(args: argparse.Namespace, parts: set[str]) -> Results:
    """The parts asked for: throughput first, with 3 PostgreSQL replicas and 1 SQLite replica up
    (setups of 1, 2 and 3 PostgreSQL replicas and the SQLite baseline measured in turns); the roll
    (3 PostgreSQL replicas; before freshness there: a rollback re-applies every document ingested
    since); freshness on PostgreSQL (2 replicas); freshness on SQLite (1 replica, the baseline,
    then 2)."""
    out = Results()
    started = time.perf_counter()
    env = {"RAGSERVE_TORCH_THREADS": str(args.torch_threads)} if args.torch_threads else {}
    with tempfile.TemporaryDirectory(prefix="ragserve-bench-replicas-") as tmp, postgres_server() as pg:
        root = Path(tmp)
        first, _ = make_versions(root / "template")
        template = root / "template"
        pg_cluster = Cluster(POSTGRES, template, first.name, root, pg, env)
        sqlite_cluster = Cluster(SQLITE, template, first.name, root, None, env)
        try:
            if "throughput" in parts:
                _progress("starting 3 PostgreSQL replicas and 1 SQLite replica")
                pg_nodes, sqlite_nodes = pg_cluster.size(3), sqlite_cluster.size(1)
                pg_cpu = functools.partial(postgres_cpu_s, pg)
                setups = [Setup(SQLITE, sqlite_nodes), *(Setup(POSTGRES, pg_nodes[:n], pg_cpu) for n in (1, 2, 3))]
                out.throughput = _timed(
                    out,
                    f"throughput: 4 setups x {args.rounds} rounds",
                    lambda: measure_rounds(setups, args.clients, args.seconds, args.rounds),
                )
                sqlite_cluster.close()  # started again for freshness: no idle process beside the PostgreSQL parts
            if "roll" in parts:
                nodes = pg_cluster.size(3)
                out.roll = _timed(
                    out,
                    f"roll: {args.rolls} x (refresh, rollback), 3 replicas, {args.clients} clients",
                    lambda: run_roll(nodes, args.clients, args.rolls),
                )
            if "freshness" in parts:
                nodes = pg_cluster.size(2)
                out.freshness.append(
                    _timed(
                        out,
                        f"freshness, PostgreSQL, {args.documents} documents, 2 replicas",
                        lambda: measure_freshness(nodes, args.documents, tag="fresh-pg", store=POSTGRES),
                    )
                )
            pg_cluster.close()
            if "freshness" in parts:
                nodes = sqlite_cluster.size(1)
                baseline = max(1, args.documents // 4)
                out.freshness.insert(
                    0,
                    _timed(
                        out,
                        f"freshness, SQLite, {baseline} documents, 1 replica (baseline)",
                        lambda: measure_freshness(nodes, baseline, tag="fresh-one", store=SQLITE),
                    ),
                )
                nodes = sqlite_cluster.size(2)
                out.freshness.insert(
                    1,
                    _timed(
                        out,
                        f"freshness, SQLite, {args.documents} documents, 2 processes",
                        lambda: measure_freshness(nodes, args.documents, tag="fresh-sqlite", store=SQLITE),
                    ),
                )
        finally:
            sqlite_cluster.close()
            pg_cluster.close()
    out.took_s["all, with starts and stops"] = time.perf_counter() - started
    return out


def _part_command(args: argparse.Namespace, part: str) -> str:
    flags = {"freshness": f"--documents {args.documents}", "roll": f"--clients {args.clients} --rolls {args.rolls}"}
    flags["throughput"] = f"--clients {args.clients} --seconds {args.seconds:g} --rounds {args.rounds}"
    threads = f" --torch-threads {args.torch_threads}" if args.torch_threads else ""
    return f"python -m bench.replicas --only {part} {flags[part]}{threads}"


def print_freshness(args: argparse.Namespace, reports: list[FreshnessReport]) -> None:
    print("\n## Freshness across replicas: 202 on one replica -> found on the other")
    print(f"part: `{_part_command(args, 'freshness')}`")
    print(
        "single-document ingests one at a time, alternating the receiving replica; the other one polled "
        f"every {POLL_S * 1000:.0f} ms (/v1/retrieve, top 3, the document's text); "
        f"a miss: not found in {MISS_AFTER_S:g} s"
    )
    print("| store | replicas | searched on | documents | p50 | p99 | mean | max | misses | goal |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for r in reports:
        label = "PostgreSQL" if r.store == POSTGRES else "SQLite" + (" (processes of one machine)" * (r.replicas > 1))
        where, goal = ("the other replica", "p99 <= 1 s, misses 0") if r.replicas > 1 else ("the same one", "baseline")
        worst = max(r.seconds) * 1000 if r.seconds else math.nan
        mean = statistics.fmean(r.seconds) * 1000 if r.seconds else math.nan
        print(
            f"| {label} | {r.replicas} | {where} | {r.documents} | {r.ms(50):.0f} ms | {r.ms(99):.0f} ms | "
            f"{mean:.0f} ms | {worst:.0f} ms | {len(r.misses)} | {goal} |"
        )
    for r in reports:
        for m in r.misses:
            print(
                f"MISS {r.store} {m.doc_id} (sent to node {m.received_by}, searched on {m.searched_on}): {m.diagnosis}"
            )
        if r.stopped_early:
            print(f"{r.store}: stopped after {len(r.misses)} misses")


def print_roll(args: argparse.Namespace, report: RollReport) -> None:
    print("\n## A refresh and a rollback rolled to 3 replicas under load (PostgreSQL)")
    print(f"part: `{_part_command(args, 'roll')}`")
    by_node = [sum(1 for c in report.calls if c.node == k) for k in range(3)]
    span = (max(c.end for c in report.calls) - min(c.start for c in report.calls)) if report.calls else math.nan
    print(
        f"{args.clients} closed-loop /v1/retrieve clients, round robin over 3 replicas; {len(report.calls)} answers "
        f"in {span:.1f} s (per replica {by_node}); {len(report.changes)} changes"
    )
    print("| change | from -> to | sent -> done/answered | done -> every replica serves it |")
    print("|---|---|---:|---:|")
    for c in report.changes:
        print(
            f"| {c.action} | {c.previous} -> {c.version} | {(c.acknowledged - c.start) * 1000:.0f} ms | "
            f"{c.converge_s * 1000:.0f} ms |"
        )
    print("| figure | value | goal |")
    print("|---|---:|---|")
    print(f"| non-2xx answers | {report.non_2xx} | 0 |")
    print(f"| answers from a version no replica served at that moment | {report.wrong_version} | 0 |")
    print(f"| time until every replica serves the new version, max | {report.converge_s * 1000:.0f} ms | |")
    for failure in report.failures:
        print(f"FAILED: {failure}")
    for call in report.wrong_calls()[:10]:
        print(f"WRONG VERSION: node {call.node} answered {call.version} at [{call.start:.3f}, {call.end:.3f}]")
    statuses: dict[int, int] = {}
    for call in report.calls:
        if not 200 <= call.status < 300:
            statuses[call.status] = statuses.get(call.status, 0) + 1
    if statuses:
        print(f"non-2xx by status (0: connection failed): {statuses}")


def print_throughput(args: argparse.Namespace, results: list[Throughput]) -> None:
    print("\n## /v1/retrieve throughput: 1, 2, 3 replicas on PostgreSQL vs 1 replica on SQLite (baseline)")
    print(f"part: `{_part_command(args, 'throughput')}`")
    cores = os.cpu_count()
    print(
        f"{args.clients} closed-loop clients round robin over the replicas of a setup; the 4 setups measured in "
        f"turns, {args.rounds} rounds of {args.seconds / args.rounds:.3g} s each ({args.seconds:g} s per setup) "
        "after 1 s of warm-up (2 s in the first round), all 4 replica processes up throughout; CPU: utime+stime "
        f"from /proc of the setup's replica processes; the clients and PostgreSQL run on the same {cores} cores"
    )
    base = next((t for t in results if t.label == SQLITE), None)
    print(
        "| store | replicas | requests/s | vs baseline | replica CPU per request | vs baseline "
        "| PostgreSQL CPU per request | client CPU per request | non-2xx | requests/s per round |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for t in results:
        cpu = t.per_request_ms(t.server_cpu_s)
        rps_ratio = f"{t.rps / base.rps:.2f}x" if base else "-"
        cpu_ratio = f"{cpu / base.per_request_ms(base.server_cpu_s):.2f}x" if base else "-"
        store = "-" if t.store_cpu_s is None else f"{t.per_request_ms(t.store_cpu_s):.2f} ms"
        label = "SQLite (baseline)" if t.label == SQLITE else "PostgreSQL"
        print(
            f"| {label} | {t.replicas} | {t.rps:.1f} | {rps_ratio} | {cpu:.2f} ms | {cpu_ratio} | {store} | "
            f"{t.per_request_ms(t.client_cpu_s):.2f} ms | {t.non_2xx} | {' / '.join(f'{r:.0f}' for r in t.round_rps)} |"
        )
    print(
        f"On {cores} cores this shows the overhead, not the speed-up: every replica, the clients and "
        "PostgreSQL share the same cores, so more replicas add no CPU; replicas on machines of their own "
        "add theirs."
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer ingests, fewer seconds, one roll")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of: {', '.join(PARTS)}")
    ap.add_argument("--documents", type=int, help="freshness: ingests per store (default 200, quick 30)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, help="throughput: seconds measured per setup (default 10, quick 3)")
    ap.add_argument("--rounds", type=int, default=3, help="throughput: turns over the setups")
    ap.add_argument("--rolls", type=int, help="roll: refresh + rollback pairs (default 2, quick 1)")
    ap.add_argument(
        "--torch-threads", type=int, help="RAGSERVE_TORCH_THREADS of every replica (default: the setting's)"
    )
    args = ap.parse_args()
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    if unknown := parts - set(PARTS):
        ap.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    args.documents = args.documents or (30 if args.quick else 200)
    args.seconds = args.seconds or (3.0 if args.quick else 10.0)
    args.rolls = args.rolls or (1 if args.quick else 2)
    header("replicas on one store: freshness across replicas, a roll under load, throughput")
    results = run(args, parts)
    if "freshness" in parts:
        print_freshness(args, results.freshness)
    if "roll" in parts and results.roll is not None:
        print_roll(args, results.roll)
    if "throughput" in parts:
        print_throughput(args, results.throughput)
    print("\n" + "; ".join(f"{k}: {v:.0f} s" for k, v in results.took_s.items()))


if __name__ == "__main__":
    main()
