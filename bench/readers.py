"""Every reader on open-domain SQuAD v1.1 dev: the same questions, the same retrieved passages
(retrieved once per question), EM / F1 and p50 latency per question (retrieval included).

    python -m bench.readers [--limit 500] [--top-k 3] [--readers stuff,rag-token,rag-sequence,fusion,retro]
"""

import argparse
import json
from pathlib import Path

from bench.common import header
from service.evaluation import run_squad_eval
from service.settings import Settings

SQUAD = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "squad-v1.1-dev.parquet"
READERS = "stuff,rag-token,rag-sequence,fusion,retro"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--readers", default=READERS)
    ap.add_argument("--out", type=Path, help="also write the full JSON report here")
    args = ap.parse_args()
    header(f"readers on {args.limit} SQuAD-open dev questions, top-{args.top_k} passages each")
    settings = Settings()
    report = run_squad_eval(settings, SQUAD, args.limit, args.readers.split(","), False, args.top_k, progress=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(
        f"recall@1 {report['recall@1']}, recall@5 {report['recall@5']}; torch threads {settings.torch_threads}; "
        f"rag temperature {settings.rag_temperature}; beams {settings.num_beams}"
    )
    print("| reader | exact match | F1 | p50 latency ms | mean latency ms |")
    print("|---|---:|---:|---:|---:|")
    for name, r in report["readers"].items():
        em, f1, p50, mean = r["exact_match"], r["f1"], r["p50_latency_ms"], r["mean_latency_ms"]
        print(f"| `{name}` | {em:.3f} | {f1:.3f} | {p50:.0f} | {mean:.0f} |")


if __name__ == "__main__":
    main()
