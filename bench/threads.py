"""Which `torch_threads` to use: /v1/ask's work (embed, search, generate) with 1 and 2 intra-op
threads, on an idle machine and with one core kept busy by another process.

    python -m bench.threads [--questions 10]
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from bench.common import header
from bench.latency import QUESTIONS
from service.application.loading import load_services
from service.settings import Settings

BUSY_LOOP = "import time\nend = time.time() + 600\nwhile time.time() < end: pass"


def median_ask_seconds(engine, questions: list[str]) -> float:  # type: ignore[no-untyped-def]
    seconds = []
    for q in questions:
        started = time.perf_counter()
        engine.ask(q, 1)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=10)
    args = ap.parse_args()
    header("torch intra-op threads vs. /v1/ask latency")
    engine = load_services(Settings()).engine
    lines = QUESTIONS.read_text().splitlines()
    questions = [json.loads(line)["question"] for line in lines if line.strip()][: args.questions]
    engine.ask(questions[0], 1)  # warm-up
    results: dict[tuple[str, int], float] = {}
    for load in ("idle", "one core busy"):
        hog = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if load != "idle" else None
        try:
            for threads in (1, 2):
                torch.set_num_threads(threads)
                results[(load, threads)] = median_ask_seconds(engine, questions)
        finally:
            if hog is not None:
                hog.kill()
    print(f"{'machine':<16}{'1 thread p50 s':>16}{'2 threads p50 s':>17}{'2 vs 1':>8}")
    for load in ("idle", "one core busy"):
        one, two = results[(load, 1)], results[(load, 2)]
        print(f"{load:<16}{one:>16.2f}{two:>17.2f}{two / one:>7.2f}x")


if __name__ == "__main__":
    main()
