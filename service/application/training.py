"""`ragserve train reader`: question-answer pairs from a file, their passages from the retriever,
then an adapter trained on them (reader/adapter_train.py). And `ragserve train retro`: the RETRO
retrofit trained on an index's chunks, with neighbours from the same index (reader/retro_train.py).

QA files are JSONL (one object a line) or Parquet, with a `question` and the answer as `answer`
(a string), `answers` (a list of strings, the first is trained on) or SQuAD's `answers.text`;
`id` and `title` (the article, for `--articles`) are optional. A SQuAD file (it has `context`) is
searched in the same index that `ragserve eval squad` builds of its paragraphs, unless `--index`
names another.
"""

import functools
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragserve.errors import InvalidInputError, UnknownIndexError
from retriever.base import Retriever
from service.application.squad import select_articles
from service.settings import Settings

if TYPE_CHECKING:
    from reader.train_config import AdapterTrainConfig, RetroTrainConfig

log = logging.getLogger(__name__)

SEARCH_BATCH = 64


@dataclass(frozen=True, slots=True)
class QA:
    id: str
    question: str
    answer: str
    article: str | None


def _answer_of(record: dict[str, Any], where: str) -> str:
    answer = record.get("answer")
    if answer is None:
        answers = record.get("answers")
        if isinstance(answers, dict):  # SQuAD: {"text": [...], "answer_start": [...]}
            answers = answers.get("text")
        if isinstance(answers, list) and answers:
            answer = answers[0]
    if not isinstance(answer, str) or not answer.strip():
        raise InvalidInputError(f"{where}: needs a non-empty 'answer' string or 'answers' list")
    return answer.strip()


def qa_of(record: Any, where: str) -> QA:
    if not isinstance(record, dict):
        raise InvalidInputError(f"{where}: expected an object with 'question' and 'answer'")
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise InvalidInputError(f"{where}: needs a non-empty 'question' string")
    article = record.get("title", record.get("article"))
    return QA(str(record.get("id", where)), question.strip(), _answer_of(record, where), article)


def read_qa(path: Path) -> Iterator[QA]:
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if "question" not in table.column_names:
            raise InvalidInputError(f"{path}: Parquet QA data needs a 'question' column")
        for row, record in enumerate(table.to_pylist(), 1):
            yield qa_of(record, f"{path}: row {row}")
        return
    if path.suffix not in (".jsonl", ".json"):
        raise InvalidInputError(f"{path}: QA data is JSONL (.jsonl) or Parquet (.parquet)")
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InvalidInputError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
                yield qa_of(record, f"{path}:{lineno}")


def choose(qas: list[QA], articles: str, limit: int | None) -> list[QA]:
    """The questions of one article split (see service/application/squad.py), then `limit` of them spread
    evenly over it."""
    if articles != "all":
        if any(q.article is None for q in qas):
            raise InvalidInputError(f"--articles {articles} needs a 'title' (article) for every question")
        chosen = select_articles((q.article for q in qas if q.article), articles)
        qas = [q for q in qas if q.article in chosen]
    if limit is not None and limit < len(qas):
        step = len(qas) / limit
        qas = [qas[int(i * step)] for i in range(limit)]
    if not qas:
        raise InvalidInputError("no questions to train on")
    return qas


def is_squad(path: Path) -> bool:
    if path.suffix != ".parquet":
        return False
    import pyarrow.parquet as pq

    return "context" in pq.ParquetFile(path).schema_arrow.names


def training_retriever(settings: Settings, data: Path, index: str | None, progress: bool) -> Retriever:
    """The retriever whose passages the examples get: an artifact folder, a registry index's
    serving version, or (for SQuAD files, by default) the evaluation's index of their paragraphs."""
    from service.application.evaluation import squad_retriever
    from service.application.loading import make_encoder, open_registry, open_version, serving_version

    if index is None:
        if not is_squad(data):
            raise InvalidInputError("--index is needed: which index's passages the examples are trained with")
        return squad_retriever(settings, data, progress)
    encoder = make_encoder(settings)
    if Path(index).is_dir():
        return open_version(settings, Path(index), encoder)
    named = settings.model_copy(update={"index_name": index})
    registry = open_registry(named)
    version = serving_version(named, registry)
    if version is None:
        raise UnknownIndexError(f"index {index!r} is neither an artifact folder nor a registry index with a version")
    return open_version(settings, registry.path_of(version), encoder)


def run_train_reader(
    settings: Settings,
    data: Path,
    out: Path,
    config: "AdapterTrainConfig",
    articles: str = "all",
    limit: int | None = None,
    top_k: int = 1,
    index: str | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any] | None:
    from reader.adapter_train import Example, train
    from reader.adapters import RAGSERVE_INFO
    from service.application.loading import configure_threads, make_generator

    if (out / RAGSERVE_INFO).is_file():  # before any retrieval or model loading
        raise InvalidInputError(f"{out} already holds a trained adapter; choose another --out or delete it")
    if stop_after is not None and stop_after < 1:
        raise InvalidInputError("--stop-after must be at least 1")
    configure_threads(settings)
    qas = choose(list(read_qa(data)), articles, limit)
    retriever = training_retriever(settings, data, index, progress)
    examples: list[Example] = []
    for start in range(0, len(qas), SEARCH_BATCH):
        part = qas[start : start + SEARCH_BATCH]
        for qa, found in zip(part, retriever.search_batch([q.question for q in part], top_k), strict=True):
            examples.append(Example(qa.id, qa.question, qa.answer, found.passages[:top_k]))
    log.info("training on %d questions with their top %d passages from %s", len(examples), top_k, retriever)
    generator = make_generator(settings)
    about: dict[str, Any] = {"data": str(data), "articles": articles, "limit": limit, "top_k": top_k}
    about["retrieval"] = settings.retrieval.value
    return train(generator, examples, out, config, progress, about, stop_after)


def run_train_retro(settings: Settings, config: "RetroTrainConfig", out: Path | None) -> dict[str, Any]:
    """Train the retrofit on the chunks of index `settings.index_name`'s serving version; the
    weights go to `out`, else the `retro_weights` setting, else the reader's default path."""
    from ragserve.types import Precision, RetrievalMode
    from reader.generator import Generator
    from reader.retro import default_weights_path
    from reader.retro_train import train
    from service.application.loading import (
        configure_threads,
        make_encoder,
        open_registry,
        open_version,
        serving_version,
    )

    configure_threads(settings)
    registry = open_registry(settings)
    version = serving_version(settings, registry)
    if version is None:
        raise UnknownIndexError(
            f"index {settings.index_name!r} has no serving version (build one with `ragserve index build`)"
        )
    out = out or settings.retro_weights or default_weights_path(settings.cache_dir, settings.generator_model)
    retriever = open_version(settings, registry.path_of(version), make_encoder(settings))
    corpus = ((c.doc_id, c.text) for batch in retriever.docstore.scan() for c in batch)

    neighbours = functools.partial(retriever.passages, mode=RetrievalMode.DENSE)  # kNN, as in RETRO
    generator = Generator(settings.generator_model, settings.cache_dir, Precision.FP32)  # trained in fp32
    return dict(train(corpus, neighbours, generator, out, config))
