"""How the cost of `stuff` and `fusion` grows with the number of passages: answer latency for k
passages of ~200 tokens each (SQuAD dev paragraphs), same question, same passages, same run.

    python -m bench.fusion_scaling [--ks 1,2,4,8,16] [--repeat 3]
"""

import argparse
import statistics
import time

import torch

from bench.common import SQUAD, header
from ragserve.types import Passage, Precision
from reader import builtin  # noqa: F401  (registers the readers)
from reader.generator import Generator
from reader.registry import ReaderContext, create_reader
from service.application.evaluation import load_squad
from service.application.loading import reader_config
from service.settings import Settings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ks", default="1,2,4,8,16")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    header("stuff vs fusion: latency against the number of passages")
    settings = Settings()
    torch.set_num_threads(settings.torch_threads)
    generator = Generator(settings.generator_model, settings.cache_dir, Precision.FP32)
    config = reader_config(settings, max_new_tokens=8, max_passage_tokens=200)
    readers = {name: create_reader(name, ReaderContext(generator, config)) for name in ("stuff", "fusion")}
    paragraphs = load_squad(SQUAD).paragraphs
    question = "Which team won the game?"
    print(f"torch threads {settings.torch_threads}; passages cut to 200 generator tokens; 8 answer tokens at most")
    print("| passages | prompt tokens (stuff) | stuff ms | fusion ms | fusion / stuff |")
    print("|---:|---:|---:|---:|---:|")
    for k in (int(x) for x in args.ks.split(",")):
        passages = [Passage(f"{d.id}#0", d.id, d.title, d.text, 1.0) for d in paragraphs[:k]]
        ms = {}
        for name, reader in readers.items():
            reader.answer(question, passages)  # warm
            times = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                reader.answer(question, passages)
                times.append((time.perf_counter() - started) * 1000)
            ms[name] = statistics.median(times)
        tokens = sum(min(200, len(generator.text.encode(p.text))) for p in passages)
        print(f"| {k} | {tokens} | {ms['stuff']:.0f} | {ms['fusion']:.0f} | {ms['fusion'] / ms['stuff']:.2f} |")


if __name__ == "__main__":
    main()
