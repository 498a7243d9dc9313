"""Reader adapters on the held-out SQuAD articles: the base model against each adapter, free and
evidence-copying (extractive) answers, from retrieved and from gold passages. EM / F1 and p50
latency per question (retrieval included), every row over the same questions in one run.

    python -m bench.reader_adapters [--limit 300] [--adapters lora=DIR,ia3=DIR,prompt=DIR]

Adapters: folders written by `ragserve train reader` (docs/readers.md, *Reader adapters*), trained on the
24 training articles only; default: the bundled ones. Questions: `--limit` spread evenly over the
24 held-out articles. Retrieval: the default (hybrid), top `--top-k` (default: setting
ask_top_k). Reader: `stuff`, one question at a time. The base model reads with its few-shot
prompt, adapters with the prompt they were trained with.
"""

import argparse
from pathlib import Path

from bench.common import SQUAD, header
from ragserve.precision import resolve_precision
from reader.adapters import Adapter
from service.application.adapters import bundled_adapters
from service.application.evaluation import evaluate, load_squad, spread_sample, squad_retriever
from service.application.loading import configure_threads, load_engine
from service.application.squad import select_articles
from service.settings import Settings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--top-k", type=int)
    ap.add_argument("--adapters", help="name=folder,... (default: the bundled adapters)")
    args = ap.parse_args()
    header("reader adapters on the held-out SQuAD articles")
    settings = Settings(adapter="none")
    configure_threads(settings)
    data = load_squad(SQUAD)
    held_out = select_articles((q.article for q in data.questions), "heldout")
    questions = spread_sample([q for q in data.questions if q.article in held_out], args.limit)
    retriever = squad_retriever(settings, SQUAD, progress=True, data=data)
    engine = load_engine(settings, retriever)
    assert engine.adapters is not None
    folders = (
        {name: Path(folder) for name, folder in (pair.split("=", 1) for pair in args.adapters.split(","))}
        if args.adapters
        else bundled_adapters()
    )
    names = {"base": "none", **{name: engine.adapters.attach(name, folder) for name, folder in folders.items()}}
    adapters: dict[str, Adapter | None] = {label: engine.adapters.resolve(name) for label, name in names.items()}
    gold = {p.id: p for p in data.paragraphs}
    top_k = args.top_k or settings.ask_top_k
    print(
        f"{len(questions)} questions from {len(held_out)} held-out articles; retrieval {settings.retrieval.value}, "
        f"top {top_k}; reader stuff; generator {resolve_precision(settings.generator_precision, 'cpu')}; "
        f"torch threads {settings.torch_threads}"
    )
    for name, adapter in adapters.items():
        if adapter is not None:
            trained = adapter.info.get("training", {})
            print(
                f"adapter {name}: {adapter.method}, {adapter.parameters:,} parameters, {adapter.path}; trained on "
                f"{trained.get('examples')} examples in {trained.get('seconds')} s"
            )
    print("\n| passages | adapter | answers | exact match | F1 | p50 ms |\n|---|---|---|---:|---:|---:|")
    for from_gold in (False, True):
        for name in names:
            for extractive in (False, True):
                passages = gold if from_gold else None
                report = evaluate(
                    retriever, engine, ["stuff"], questions, top_k, False, extractive, passages, names[name]
                )
                print(
                    f"| {'gold' if from_gold else 'retrieved'} | {name} | {'extractive' if extractive else 'free'} "
                    f"| {report['exact_match']:.3f} | {report['f1']:.3f} | {report['p50_latency_ms']:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
