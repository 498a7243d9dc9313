"""`index build --engine ray` (Ray Data, local Ray on this machine's CPUs) against the local indexer
on the same corpus, each build its own process: chunks/s as a ratio, equal search results, and
the driver's peak memory at 1x and 10x SQuAD.

    python -m bench.ray_build [--data ../shared/data/squad-v1.1-dev.parquet] [--scale 1 10] [--pairs 2]

Corpus: the distinct SQuAD v1.1 dev paragraphs as documents (`<title>/<n>`, the article title),
written as JSONL files of `--file-docs` documents each. At scale N > 1 the corpus is repeated N
times; copy k > 0 gets the id `<id>~k` and its text followed by " (k)", so every document is
distinct in id and text and nothing is deduplicated (the chunks differ from copy 0 by that
suffix only, the chunk count by a few boundary shifts).

Runs: at the first scale, `--pairs` pairs alternating local, ray, local, ray (ratios per pair,
then their median); at every other scale one run of each. Each run is `python -m bench.ray_build
--child ENGINE ...`, which runs `ragserve index build --engine ENGINE --no-progress` in-process
(service/cli/main.py) and reports, from inside: its own peak RSS (VmHWM of the driver alone), the
seconds `ray.init` and `ray.shutdown` took, and the CLI's report. The parent polls /proc every
0.2 s for the driver's descendants (Ray's GCS, raylet and workers): the largest peak RSS of one of
them and the peak of their summed RSS (shared pages, e.g. the object store, count in every process
that maps them). Times:
  process  the child's whole life: interpreter, imports, the driver's encoder, Ray start and stop
  cli      what `index build` reports: ray.init included, the driver's encoder excluded
  build    the manifest's build_ms: the build function alone (Ray: the actors' start and model
           loading included, ray.init excluded)
  steady   marginal chunks/s between the two scales (d chunks / d build seconds): fixed costs
           (start-up of Ray, actors, models) cancel out.
Equality, on the artifacts of the last pair: chunks (ids, texts, offsets) row for row, vectors
within float tolerance, and the top-k chunk ids of `--questions` SQuAD questions in every
retrieval mode.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import SQUAD, header

KIB = 1024


def write_corpus(data: Path, scale: int, folder: Path, file_docs: int, limit: int | None) -> int:
    """The SQuAD paragraphs `scale` times (see the module doc) as JSONL files -> documents."""
    from service.application.evaluation import load_squad

    paragraphs = load_squad(data).paragraphs[:limit]
    folder.mkdir(parents=True)
    docs = (
        {"id": p.id if k == 0 else f"{p.id}~{k}", "title": p.title, "text": p.text if k == 0 else f"{p.text} ({k})"}
        for k in range(scale)
        for p in paragraphs
    )
    n, out = 0, None
    for doc in docs:
        if n % file_docs == 0:
            if out:
                out.close()
            out = (folder / f"part-{n // file_docs:04d}.jsonl").open("w", encoding="utf-8")
        assert out is not None
        out.write(json.dumps(doc, ensure_ascii=False) + "\n")
        n += 1
    if out:
        out.close()
    return n


# --- one build, in its own process ---------------------------------------------------------------


def child(engine: str, corpus: Path, out: Path) -> None:
    """Run the CLI's index build here and print what it measured, as one JSON line."""
    timings: dict[str, float] = {}
    if engine == "ray":
        import ray

        def timed(name: str, fn: Any) -> Any:
            def call(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    timings[name] = timings.get(name, 0.0) + time.perf_counter() - started

            return call

        ray.init = timed("ray_init_s", ray.init)
        ray.shutdown = timed("ray_shutdown_s", ray.shutdown)
    from retriever.artifact import read_manifest
    from service.cli.main import main

    argv = ["index", "build", "--engine", engine, "--input", str(corpus), "--out", str(out), "--no-progress"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(argv)
    if code:
        raise SystemExit(f"index build --engine {engine} failed ({code})")
    status = Path("/proc/self/status").read_text()
    hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    report = json.loads(printed.getvalue())
    build_s = read_manifest(out).counts["build_ms"] / 1000
    print(json.dumps({"cli": report, "driver_hwm_kib": hwm, "build_s": build_s, **timings}))


@dataclass
class Run:
    engine: str
    scale: int
    chunks: int
    process_s: float
    cli_s: float
    build_s: float
    ray_init_s: float
    driver_mib: float
    worker_mib: float  # the largest peak RSS of one descendant (a Ray process)
    tree_mib: float  # the peak of the descendants' summed RSS
    workers: dict[str, float] = field(default_factory=dict)
    other_cpu: float = 0.0  # % of the machine's CPU time used by processes outside this build
    variant: str = ""


def _status(pid: int) -> tuple[int, str, int, int] | None:
    """(ppid, name, rss KiB, VmHWM KiB) of a live process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    kib = lambda k: int(fields.get(k, "0 kB").split()[0])  # noqa: E731
    return int(fields["PPid"]), fields["Name"].strip(), kib("VmRSS"), kib("VmHWM")


def _cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0
    return int(fields[11]) + int(fields[12])


def _busy_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of the whole machine so far (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def run_build(engine: str, scale: int, corpus: Path, out: Path, variant: str = "") -> Run:
    """One build as a child process, its descendants polled from here."""
    cmd = [sys.executable, "-m", "bench.ray_build", "--child", engine, "--input", str(corpus), "--out", str(out)]
    env = dict(os.environ)
    for pair in filter(None, variant.split(",")):
        key, value = pair.split("=", 1)
        env[f"RAGSERVE_{key.upper()}"] = value
    busy0 = _busy_ticks()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak: dict[int, tuple[str, int]] = {}  # descendant pid -> (name, VmHWM KiB)
    ticks: dict[int, int] = {}  # pid of the build's tree -> CPU ticks last seen
    tree_peak = 0
    while proc.poll() is None:
        live = {p: s for p in map(int, filter(str.isdigit, os.listdir("/proc"))) if (s := _status(p))}
        family, grew = {proc.pid}, True
        while grew:
            found = {p for p, s in live.items() if s[0] in family} - family
            family |= found
            grew = bool(found)
        for p in family:
            ticks[p] = max(ticks.get(p, 0), _cpu_ticks(p))
        family.discard(proc.pid)
        tree_peak = max(tree_peak, sum(live[p][2] for p in family if p in live))
        for p in family & live.keys():
            peak[p] = (live[p][1], max(peak.get(p, ("", 0))[1], live[p][3]))
        time.sleep(0.2)
    stdout, stderr = proc.communicate()
    process_s = time.perf_counter() - started
    busy1 = _busy_ticks()
    other = max(0.0, (busy1[0] - busy0[0] - sum(ticks.values())) / max(1, busy1[1] - busy0[1]) * 100)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{stderr[-4000:]}")
    got = json.loads(stdout.strip().splitlines()[-1])
    by_name: dict[str, float] = {}
    for name, hwm in peak.values():
        by_name[name] = max(by_name.get(name, 0.0), hwm / KIB)
    return Run(
        engine,
        scale,
        got["cli"]["counts"]["chunks"],
        process_s,
        got["cli"]["seconds"],
        got["build_s"],
        got.get("ray_init_s", 0.0),
        got["driver_hwm_kib"] / KIB,
        max((h for _, h in peak.values()), default=0) / KIB,
        tree_peak / KIB,
        by_name,
        other,
        variant,
    )


# --- equal search results -------------------------------------------------------------------------


def compare(local: Path, distributed: Path, data: Path, questions: int, top_k: int) -> list[tuple[str, str]]:
    """(check, result) rows: the two artifacts hold the same chunks and vectors and answer alike."""
    import numpy as np

    from ragserve.types import RetrievalMode
    from retriever import faiss_index
    from retriever.artifact import read_manifest, shard_folders
    from retriever.docstore import Docstore
    from retriever.version import VersionRetriever
    from service.application.evaluation import load_squad, spread_sample
    from service.application.loading import configure_threads, make_encoder, search_config
    from service.settings import Settings

    settings = Settings()
    configure_threads(settings)
    manifest = read_manifest(local)
    rows: list[tuple[str, str]] = [
        ("index factory", f"{manifest.index_factory} / {read_manifest(distributed).index_factory}")
    ]
    for folder in shard_folders(manifest):
        a = [c for batch in Docstore(local / folder / "docstore.sqlite").scan() for c in batch]
        b = [c for batch in Docstore(distributed / folder / "docstore.sqlite").scan() for c in batch]
        rows.append(("chunks (ids, texts, offsets) row for row", f"{a == b} ({len(a)} / {len(b)})"))
        va, vb = (faiss_index.read_cpu(p / folder / "index.faiss") for p in (local, distributed))
        x, y = va.reconstruct_n(0, va.ntotal), vb.reconstruct_n(0, vb.ntotal)
        rows.append(("vectors: max |difference|", f"{float(np.abs(x - y).max()):.2e}"))
        rows.append(("vectors: min cosine", f"{float((x * y).sum(axis=1).min()):.6f}"))
    encoder = make_encoder(settings)
    search = search_config(settings)
    asked = [q.question for q in spread_sample(load_squad(data).questions, questions)]
    whole, ray_built = VersionRetriever(local, encoder, search), VersionRetriever(distributed, encoder, search)
    for mode in RetrievalMode:
        pairs = zip(whole.search_batch(asked, top_k, mode), ray_built.search_batch(asked, top_k, mode), strict=True)
        same = sum([p.chunk_id for p in w.passages] == [p.chunk_id for p in g.passages] for w, g in pairs)
        rows.append((f"top-{top_k} chunk ids identical, {mode}", f"{same}/{len(asked)}"))
    return rows


# --- the tables ----------------------------------------------------------------------------------


def runs_table(runs: list[Run]) -> None:
    print(
        "\n| scale | engine | chunks | process s | ray.init s | cli s | build s | chunks/s (process) "
        "| chunks/s (build) | other load % |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        engine = f"{r.engine} {r.variant}".strip()
        print(
            f"| {r.scale}x | {engine} | {r.chunks} | {r.process_s:.1f} | {r.ray_init_s:.1f} | {r.cli_s:.1f} "
            f"| {r.build_s:.1f} | {r.chunks / r.process_s:.1f} | {r.chunks / r.build_s:.1f} | {r.other_cpu:.0f} |"
        )
    print("\n(other load: CPU time of processes outside the build, % of the machine's, during the run)")


def ratio_table(runs: list[Run], first: int, last: int) -> None:
    runs = [r for r in runs if not r.variant]
    pairs = [(a, b) for a, b in zip(runs[::2], runs[1::2], strict=False) if a.scale == first == b.scale]
    print(f"\nray / local chunks/s at {first}x, per pair and the median (>= 0.9 is the goal)")
    print("\n| time counted | " + " | ".join(f"pair {i + 1}" for i in range(len(pairs))) + " | median |")
    print("|---|" + "---:|" * (len(pairs) + 1))
    for name, key in (
        ("process (everything, incl. Ray start/stop)", "process_s"),
        ("cli (incl. ray.init)", "cli_s"),
        ("build (excl. ray.init; incl. actor start-up)", "build_s"),
    ):
        ratios = [getattr(local, key) / getattr(ray, key) for local, ray in pairs]
        print(f"| {name} | " + " | ".join(f"{r:.2f}" for r in ratios) + f" | {statistics.median(ratios):.2f} |")
    if last != first:
        rate = {}
        for engine in ("local", "ray"):
            a = [r for r in runs if r.engine == engine and r.scale == first]
            b = next(r for r in runs if r.engine == engine and r.scale == last)
            small = statistics.median(r.build_s for r in a), statistics.median(r.chunks for r in a)
            rate[engine] = (b.chunks - small[1]) / (b.build_s - small[0])
        print(
            f"| steady state: marginal chunks/s {first}x -> {last}x (local {rate['local']:.1f}, "
            f"ray {rate['ray']:.1f}) | " + " | ".join("" for _ in pairs) + f" | {rate['ray'] / rate['local']:.2f} |"
        )


def memory_table(runs: list[Run]) -> None:
    print("\npeak RSS, MiB (driver: VmHWM of the build's own process; Ray: its descendants, polled every 0.2 s)")
    print("\n| scale | engine | chunks | driver peak | largest Ray process peak | Ray processes' summed RSS peak |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in runs:
        if r.variant:
            continue
        ray = r.engine == "ray"
        biggest = max(r.workers.items(), key=lambda kv: kv[1], default=("-", 0.0))
        worker = f"{r.worker_mib:.0f} ({biggest[0]})" if ray else "-"
        print(f"| {r.scale}x | {r.engine} | {r.chunks} | {r.driver_mib:.0f} | {worker} | {r.tree_mib:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=SQUAD.resolve())
    ap.add_argument("--scale", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--pairs", type=int, default=2, help="alternating local/ray pairs at the first scale")
    ap.add_argument("--file-docs", type=int, default=1_000, help="documents per JSONL file")
    ap.add_argument("--limit", type=int, default=None, help="first N paragraphs only (development)")
    ap.add_argument("--questions", type=int, default=1_000)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        help="extra Ray runs at the first scale with these settings, e.g. ray_embed_actors=2,ray_embed_threads=1",
    )
    ap.add_argument("--child", choices=["local", "ray"], help=argparse.SUPPRESS)
    ap.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.input, args.out)
        return
    header("index build: Ray Data engine vs the local indexer")
    from service.settings import Settings

    s = Settings()
    print(
        f"settings: ray_embed_actors={s.ray_embed_actors} ray_embed_threads={s.ray_embed_threads} "
        f"ray_writer_in_flight={s.ray_writer_in_flight} ray_block_mib={s.ray_block_mib} "
        f"torch_threads={s.torch_threads} encoder_precision={s.encoder_precision}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-ray-build-") as tmp:
        root = Path(tmp)
        corpora = {}
        for scale in args.scale:
            n = write_corpus(args.data, scale, root / f"corpus-{scale}x", args.file_docs, args.limit)
            corpora[scale] = root / f"corpus-{scale}x"
            print(f"corpus {scale}x: {n} documents in {len(list(corpora[scale].iterdir()))} JSONL files")
        runs: list[Run] = []
        first, last = args.scale[0], args.scale[-1]
        plan = [(e, first) for _ in range(args.pairs) for e in ("local", "ray")]
        plan = [(e, scale, "") for e, scale in plan]
        plan += [(e, scale, "") for scale in args.scale[1:] for e in ("local", "ray")]
        plan += [("ray", first, v) for v in args.variant]
        for i, (engine, scale, variant) in enumerate(plan):
            runs.append(run_build(engine, scale, corpora[scale], root / f"out-{i}-{engine}-{scale}x", variant))
            r = runs[-1]
            print(
                f"  {engine} {variant} {scale}x: {r.chunks} chunks, {r.process_s:.1f} s process, "
                f"{r.build_s:.1f} s build, other load {r.other_cpu:.0f}%",
                flush=True,
            )
        runs_table(runs)
        ratio_table(runs, first, last)
        memory_table(runs)
        last_pair = 2 * args.pairs - 2
        local, distributed = (root / f"out-{i}-{e}-{first}x" for i, e in ((last_pair, "local"), (last_pair + 1, "ray")))
        print(f"\nequal search results ({first}x, pair {args.pairs}; {args.questions} SQuAD questions)")
        print("\n| check | result |\n|---|---|")
        for check, result in compare(local, distributed, args.data, args.questions, args.top_k):
            print(f"| {check} | {result} |")


if __name__ == "__main__":
    main()
