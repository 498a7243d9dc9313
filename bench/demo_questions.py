"""The README's demo questions against the bundled demo index, with 1 and with 3 passages.

A question counts as answered when the answer's SQuAD token F1 against the expected answer is at
least 0.5 ("2023" for "August 2023" counts, "2" for "64 hexadecimal characters" does not), and as
cited when the expected document is among the citations.

    python -m bench.demo_questions [--top-k 1 3]
"""

import argparse
import json
import statistics
import time

from bench.common import header
from bench.latency import QUESTIONS
from service.application.loading import load_services
from service.application.squad import f1_score
from service.settings import Settings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--top-k", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--show", action="store_true", help="print every question and answer")
    args = ap.parse_args()
    header("demo questions on the demo index")
    settings = Settings()
    engine = load_services(settings).engine
    cases = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    print(f"{'top_k':>5}{'answered':>10}{'cited':>8}{'abstained':>10}{'p50 s':>8}  (abstention {settings.abstain})")
    for k in args.top_k:
        answered = cited = abstained = 0
        seconds: list[float] = []
        for case in cases:
            started = time.perf_counter()
            result = engine.ask(case["question"], k)
            seconds.append(time.perf_counter() - started)
            ok = f1_score(result.answer, [case["answer"]]) >= 0.5
            answered += ok
            cited += case["doc_id"] in {p.doc_id for p in result.passages}
            abstained += result.abstained
            if args.show:
                cited_ids = ", ".join(p.doc_id for p in result.passages)
                print(f"  [{'ok' if ok else '--'}] {case['question']} -> {result.answer} [{cited_ids}]")
        line = f"{k:>5}{answered:>7}/{len(cases)}{cited:>5}/{len(cases)}{abstained:>10}"
        print(f"{line}{statistics.median(seconds):>8.2f}")


if __name__ == "__main__":
    main()
