"""Open-domain SQuAD evaluation: index every distinct paragraph, answer each question from
retrieval alone, report recall of the gold paragraph and SQuAD EM/F1."""

import logging
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from ragserve.errors import InvalidInputError
from ragserve.types import Document, Passage, SearchResult
from retriever.base import Retriever
from service.application.squad import exact_match, f1_score, select_articles
from service.settings import Settings

if TYPE_CHECKING:
    from retriever.version import VersionRetriever
    from service.application.engine import QAEngine

log = logging.getLogger(__name__)

RECALL_AT = (1, 5, 20)
SEARCH_BATCH = 64


@dataclass(frozen=True, slots=True)
class Question:
    id: str
    question: str
    answers: list[str]
    gold_doc: str
    article: str  # the title of the Wikipedia article


@dataclass(frozen=True, slots=True)
class SquadData:
    paragraphs: list[Document]
    questions: list[Question]


def load_squad(path: Path) -> SquadData:
    """Distinct paragraphs become documents `<title>/<n>`; each question points at its paragraph."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file (SQuAD v1.1 dev as Parquet)")
    rows = pq.read_table(path, columns=["id", "title", "context", "question", "answers"]).to_pylist()
    doc_of: dict[str, str] = {}
    per_title: dict[str, int] = {}
    paragraphs: list[Document] = []
    questions: list[Question] = []
    for row in rows:
        context = row["context"]
        if context not in doc_of:
            n = per_title.get(row["title"], 0)
            per_title[row["title"]] = n + 1
            doc_of[context] = f"{row['title']}/{n}"
            paragraphs.append(Document(doc_of[context], row["title"].replace("_", " "), context))
        answers = list(row["answers"]["text"])
        questions.append(Question(row["id"], row["question"], answers, doc_of[context], row["title"]))
    return SquadData(paragraphs, questions)


def spread_sample(items: list[Question], limit: int | None) -> list[Question]:
    """`limit` questions evenly spaced over the whole set (so every article is represented)."""
    if limit is None or limit >= len(items):
        return items
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def gold_passage(paragraph: Document) -> Passage:
    return Passage(f"{paragraph.id}#gold", paragraph.id, paragraph.title, paragraph.text, 1.0, 0, len(paragraph.text))


def ranked_docs(result: SearchResult) -> list[str]:
    """Distinct documents in rank order (a long paragraph may come back as several chunks)."""
    return list(dict.fromkeys(p.doc_id for p in result.passages))


def _batches(items: list[Question], size: int) -> Iterator[list[Question]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class ReaderScores:
    em: list[float] = field(default_factory=list)
    f1: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        return {
            "exact_match": round(statistics.fmean(self.em), 4),
            "f1": round(statistics.fmean(self.f1), 4),
            "p50_latency_ms": round(statistics.median(self.latency_ms), 1),
            "mean_latency_ms": round(statistics.fmean(self.latency_ms), 1),
        }


def evaluate(
    retriever: Retriever,
    engine: "QAEngine | None",
    reader_names: Sequence[str | None],
    questions: list[Question],
    top_k: int,
    progress: bool = True,
    extractive: bool | None = None,
    gold: dict[str, Document] | None = None,
    adapter: str | None = None,
) -> dict[str, Any]:
    """Recall@1/5/20 of the gold paragraph; for each reader, EM/F1 and latency of answers from the
    same top_k passages (retrieved once per question; `engine` may be None without readers).
    Answers go through the engine's own read path (`QAEngine.plan` and `read`, what `/v1/ask`
    runs): `extractive` and `adapter` mean what
    they mean in a request (None: the engine's defaults; an adapter is given only to readers that
    run one). Given `gold` (paragraphs by id), readers get each question's own paragraph instead
    of the retrieved ones: how well they read when retrieval is perfect. The top-level
    exact_match, f1 and p50_latency_ms are the first reader's; latency includes retrieval."""
    assert engine is not None or not reader_names, "readers need an engine"
    plans = [engine.plan(n, extractive, adapter if engine.reader(n).adapts else None) for n in reader_names if engine]
    hits = dict.fromkeys(RECALL_AT, 0)
    scores = {plan.reader.name: ReaderScores() for plan in plans}
    depth = max(*RECALL_AT, top_k) * 2  # chunks fetched, so that 20 distinct paragraphs remain
    started = time.perf_counter()
    bar = tqdm(total=len(questions), desc="evaluating", unit=" q", disable=not progress)
    for batch in _batches(questions, SEARCH_BATCH):
        results = retriever.search_batch([q.question for q in batch], depth)
        for q, result in zip(batch, results, strict=True):
            docs = ranked_docs(result)
            for k in RECALL_AT:
                hits[k] += q.gold_doc in docs[:k]
            passages = [gold_passage(gold[q.gold_doc])] if gold is not None else result.passages[:top_k]
            for plan in plans:
                t0 = time.perf_counter()
                assert engine is not None
                answer = engine.read(q.question, passages, plan, result, t0)
                got = scores[plan.reader.name]
                retrieval_ms = result.timings_ms["embed"] + result.timings_ms["search"]
                got.latency_ms.append(answer.timings_ms["total"] + retrieval_ms)
                got.em.append(exact_match(answer.answer, q.answers))
                got.f1.append(f1_score(answer.answer, q.answers))
            bar.update()
    bar.close()
    elapsed = time.perf_counter() - started
    n = len(questions)
    report: dict[str, Any] = {f"recall@{k}": round(hits[k] / n, 4) for k in RECALL_AT}
    per_reader = {name: s.report() for name, s in scores.items()}
    first = next(iter(per_reader.values()), {})
    report["exact_match"] = first.get("exact_match")
    report["f1"] = first.get("f1")
    report["questions"] = n
    report["questions_per_second"] = round(n / elapsed, 3)
    report["p50_latency_ms"] = first.get("p50_latency_ms")
    report["readers"] = per_reader
    return report


def squad_retriever(
    settings: Settings, data_path: Path, progress: bool = True, data: SquadData | None = None
) -> "VersionRetriever":
    """Search over every paragraph of a SQuAD file: its index is built once into the cache."""
    from service.application.loading import cached_index_path, ensure_index, make_encoder, open_version

    paragraphs = (data or load_squad(data_path)).paragraphs
    encoder = make_encoder(settings)
    index_path = cached_index_path(settings, "squad", data_path)
    ensure_index(settings, index_path, lambda: paragraphs, lambda: encoder, progress)
    return open_version(settings, index_path, encoder)


def run_squad_eval(
    settings: Settings,
    data_path: Path,
    limit: int | None,
    reader_names: Sequence[str | None],
    retrieval_only: bool,
    top_k: int,
    progress: bool = True,
    articles: str = "all",
    passages: str = "retrieved",
    adapter: str | None = None,
) -> dict[str, Any]:
    """`adapter`: a name, a folder or "none"; None: the configured default (as `serve` answers)."""
    from ragserve.precision import resolve_device, resolve_precision
    from service.application.loading import configure_threads, load_engine

    configure_threads(settings)
    data = load_squad(data_path)
    chosen = select_articles((q.article for q in data.questions), articles)
    questions = spread_sample([q for q in data.questions if q.article in chosen], limit)
    retriever = squad_retriever(settings, data_path, progress, data)
    encoder = retriever.encoder
    engine = None if retrieval_only else load_engine(settings, retriever)
    names = [] if engine is None else reader_names
    adapter = _adapter(settings, engine, adapter) if engine is not None else None
    used = engine.adapters.resolve(adapter) if engine is not None and engine.adapters is not None else None
    gold = {p.id: p for p in data.paragraphs} if passages == "gold" else None
    report = evaluate(retriever, engine, names, questions, top_k, progress, None, gold, adapter)
    report["settings"] = {
        "data": str(data_path),
        "limit": limit,
        "articles": articles,
        "retrieval": settings.retrieval.value,
        "paragraphs": len(data.paragraphs),
        "index": str(retriever.path),
        "index_version": retriever.index_version,
        "readers": [engine.reader(name).name for name in names] if engine is not None else [],
        "extractive": settings.extractive,
        "adapter": None if used is None else {"name": used.name, "path": str(used.path), "method": used.method},
        "passages": passages,
        "top_k": top_k,
        "retriever_model": settings.retriever_model,
        "generator_model": settings.generator_model if names else None,
        "rag_temperature": settings.rag_temperature,
        "num_beams": settings.num_beams,
        "chunk_tokens": settings.chunk_tokens,
        "overlap_tokens": settings.overlap_tokens,
        "max_new_tokens": settings.max_new_tokens,
        "torch_threads": settings.torch_threads,
        "encoder_precision": str(encoder.precision),
        "generator_device": (device := resolve_device(settings.generator_device, "generator")),
        "generator_precision": str(resolve_precision(settings.generator_precision, device)),
    }
    return report


def _adapter(settings: Settings, engine: "QAEngine", name_or_path: str | None) -> str | None:
    """The adapter name an evaluation asks for: a folder is attached as it is (not copied into the
    adapter directory); a name, "none" or None (the default) are what a request would say."""
    from service.application.adapters import adapter_folder

    if name_or_path is None or engine.adapters is None or not Path(name_or_path).expanduser().is_dir():
        return name_or_path
    return engine.adapters.attach(*adapter_folder(settings.adapters_root, name_or_path))
