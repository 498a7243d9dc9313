"""Every reader on open-domain SQuAD v1.1 dev: the same questions, the same retrieved passages
(dense retrieval, once per question), EM / F1 and p50 latency per question (retrieval included).

    python -m bench.readers [--limit 500] [--top-k 2] [--readers stuff,rag-token,rag-sequence,fusion,retro]
                            [--processes 2]

With --processes N the readers are dealt round-robin to N worker processes, each with
cores / N torch threads, so the machine's cores answer different readers at once instead of
sharing each small forward pass (which scales badly on 2 cores). Every process retrieves the
same passages: retrieval is deterministic. Every reader reads with the base generator (no
adapter: only some readers can run one; bench.reader_adapters measures them).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import SQUAD, header
from service.application.evaluation import run_squad_eval
from service.settings import Settings

READERS = "stuff,rag-token,rag-sequence,fusion,retro"


def run_workers(args: argparse.Namespace, readers: list[str]) -> dict[str, Any]:
    """Run each share of the readers in its own process; merge their reports."""
    shares = [readers[i :: args.processes] for i in range(args.processes)]
    threads = max(1, (os.cpu_count() or 1) // args.processes)
    env = {**os.environ, "RAGSERVE_TORCH_THREADS": str(threads)}
    command = [sys.executable, "-m", "bench.readers", "--limit", str(args.limit), "--top-k", str(args.top_k), "--quiet"]
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"share{i}.json" for i in range(len(shares))]
        procs = [
            subprocess.Popen([*command, "--readers", ",".join(share), "--out", str(out)], env=env)
            for share, out in zip(shares, outs, strict=True)
            if share
        ]
        if any(p.wait() != 0 for p in procs):
            raise SystemExit("a worker process failed")
        reports = [json.loads(out.read_text(encoding="utf-8")) for out in outs if out.exists()]
    merged = reports[0]
    merged["readers"] = {name: r for report in reports for name, r in report["readers"].items()}
    merged["readers"] = {name: merged["readers"][name] for name in readers}  # requested order
    merged["settings"]["readers"] = readers
    merged["settings"]["processes"] = args.processes
    return merged


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--readers", default=READERS)
    ap.add_argument("--processes", type=int, default=1, help="worker processes (readers split among them)")
    ap.add_argument("--out", type=Path, help="also write the full JSON report here")
    ap.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)  # a worker of --processes
    args = ap.parse_args()
    readers = args.readers.split(",")
    if not args.quiet:
        header(f"readers on {args.limit} SQuAD-open dev questions, top-{args.top_k} passages each")
    if args.processes > 1:
        report = run_workers(args, readers)
    else:
        settings = Settings(adapter="none")
        report = run_squad_eval(settings, SQUAD, args.limit, readers, False, args.top_k, progress=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.quiet:
        return
    s = report["settings"]
    print(
        f"recall@1 {report['recall@1']}, recall@5 {report['recall@5']}; processes {args.processes}, "
        f"torch threads {s['torch_threads']} each; max new tokens {s['max_new_tokens']}; "
        f"rag temperature {s['rag_temperature']}; beams {s['num_beams']}; retrieval {s['retrieval']}; "
        f"encoder {s['encoder_precision']}, generator {s['generator_precision']}"
    )
    print("| reader | exact match | F1 | p50 latency ms | mean latency ms |")
    print("|---|---:|---:|---:|---:|")
    for name, r in report["readers"].items():
        em, f1, p50, mean = r["exact_match"], r["f1"], r["p50_latency_ms"], r["mean_latency_ms"]
        print(f"| `{name}` | {em:.3f} | {f1:.3f} | {p50:.0f} | {mean:.0f} |")


if __name__ == "__main__":
    main()
