"""Reader quality on the held-out SQuAD articles: free vs evidence-copying (extractive) answers,
from retrieved and from gold passages; then the generator's number format (fp32, bf16, dynamic
int8 linear layers) on the default path. EM / F1 and p50 latency per question (retrieval
included), every row over the same questions in one run.

    python -m bench.reader_quality [--limit 200] [--formats fp32,bf16,int8]

Questions: `--limit` spread evenly over the 24 held-out articles (titles sorted, the last 24).
Retrieval: the default (hybrid), top `ask_top_k` passages (1). Gold: each question's own
paragraph alone. Reader: `stuff`, one question at a time.
"""

import argparse

import torch

from bench.common import SQUAD, header
from ragserve.precision import resolve_precision
from reader.generator import Generator
from service.application.evaluation import evaluate, load_squad, spread_sample
from service.application.loading import (
    cached_index_path,
    configure_threads,
    ensure_index,
    load_engine,
    make_encoder,
    open_version,
)
from service.application.squad import select_articles
from service.settings import Settings


def generator_in(settings: Settings, number_format: str) -> Generator:
    """The default generator in fp32 or bf16, or fp32 with its linear layers dynamically quantized to int8."""
    precision = "fp32" if number_format == "int8" else number_format
    generator = Generator(settings.generator_model, settings.cache_dir, precision)
    if number_format == "int8":
        torch.ao.quantization.quantize_dynamic(generator.model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    return generator


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--formats", default="fp32,bf16,int8", help="generator number formats for the second table")
    args = ap.parse_args()
    header("reader quality on the held-out SQuAD articles")
    settings = Settings(adapter="none")  # the base model: adapters have bench.reader_adapters
    configure_threads(settings)
    data = load_squad(SQUAD)
    held_out = select_articles((q.article for q in data.questions), "heldout")
    questions = spread_sample([q for q in data.questions if q.article in held_out], args.limit)
    encoder = make_encoder(settings)
    index = cached_index_path(settings, "squad", SQUAD)
    ensure_index(settings, index, lambda: data.paragraphs, lambda: encoder, progress=True)
    retriever = open_version(settings, index, encoder)
    gold = {p.id: p for p in data.paragraphs}
    top_k = settings.ask_top_k
    print(
        f"{len(questions)} questions from {len(held_out)} held-out articles; retrieval {settings.retrieval.value}, "
        f"top {top_k}; reader stuff; torch threads {settings.torch_threads}"
    )

    def row(generator: Generator, extractive: bool, from_gold: bool) -> dict[str, float]:
        engine = load_engine(settings, retriever, generator)
        report = evaluate(
            retriever, engine, ["stuff"], questions, top_k, False, extractive, gold if from_gold else None
        )
        return {k: report[k] for k in ("exact_match", "f1", "p50_latency_ms")}

    default_format = str(resolve_precision(settings.generator_precision, "cpu"))
    generators = {default_format: generator_in(settings, default_format)}
    print(f"\ngenerator {default_format} (the default on this machine)")
    print("| passages | answers | exact match | F1 | p50 ms |\n|---|---|---:|---:|---:|")
    for from_gold in (False, True):
        for extractive in (False, True):
            r = row(generators[default_format], extractive, from_gold)
            passages, answers = ("gold" if from_gold else "retrieved"), ("extractive" if extractive else "free")
            print(
                f"| {passages} | {answers} | {r['exact_match']:.3f} | {r['f1']:.3f} | {r['p50_latency_ms']:.0f} |",
                flush=True,
            )

    print("\nnumber format of the generator (retrieved passages, free answers)")
    print("| generator | exact match | F1 | p50 ms |\n|---|---:|---:|---:|")
    for number_format in args.formats.split(","):
        generator = generators.get(number_format) or generator_in(settings, number_format)
        r = row(generator, False, False)
        print(f"| {number_format} | {r['exact_match']:.3f} | {r['f1']:.3f} | {r['p50_latency_ms']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
