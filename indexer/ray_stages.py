"""The stages of a Ray build (indexer/ray_build.py) that run in Ray workers: the corpus as a
Ray Data source (indexer/sources.py's readers in read tasks), the chunk tasks (the retriever's
tokenizer and indexer/chunking.py, no model), the embedding actors (the retriever, once per actor),
the shard writers (an ArtifactWriter each, with the ids its shard has seen) and the tasks that
train the shared quantizer and seal the artifact.

A block of chunks ("items", ITEMS) has one row per chunk and one marker row (ordinal -1) per
document without text, so that every document reaches its shard's writer: to be counted, and for
its id to be checked.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask
from tokenizers import Tokenizer

from indexer.chunking import Chunk, ChunkingConfig, chunk_document
from indexer.sources import (
    RECORD_SUFFIXES,
    ReadOptions,
    Skipped,
    SourceFile,
    batched,
    check_path,
    corpus_files,
    read_file,
)
from ragserve.errors import InvalidInputError, ModelMismatchError, RagserveError
from ragserve.types import Document, TokenizedText
from retriever import faiss_index
from retriever.artifact import Manifest
from retriever.gpu import GpuOptions
from retriever.shards import shard_name, shard_of
from retriever.writer import (
    QUANTIZER_FILE,
    ArtifactWriter,
    Finished,
    Layout,
    ModelInfo,
    id_bases,
    read_spool,
    seal_shards,
    seal_single,
    shared_sample,
)

if TYPE_CHECKING:
    from ray.data import DataContext

    from retriever.encoder import Encoder

DOCUMENTS = pa.schema(
    [
        ("id", pa.string()),
        ("title", pa.string()),
        ("text", pa.string()),
        ("metadata", pa.string()),
        ("source", pa.string()),
    ]
)
ITEMS = pa.schema(
    [
        ("doc_id", pa.string()),
        ("ordinal", pa.int32()),  # -1: a document without text (no chunk), so its id is still checked
        ("title", pa.string()),
        ("text", pa.string()),
        ("start_char", pa.int64()),
        ("end_char", pa.int64()),
        ("metadata", pa.string()),  # JSON, as the docstore keeps it
        ("source", pa.string()),  # the file, for a duplicate id's message
        ("token_ids", pa.list_(pa.int32())),
        ("shard", pa.int32()),
    ]
)
COUNTS = ("documents", "empty_documents", "tokens")
MESSAGE = "ragserve_message"  # where a worker keeps its error's own message (see `kept_message`)


# --- documents and chunks (tasks) ---------------------------------------------------------------


def read_units(paths: Iterable[Path], doc_batch: int) -> tuple[list[list[SourceFile]], list[Skipped]]:
    """The corpus files in the local reader's order, refused as it refuses them, grouped into read
    tasks: a file of many documents (JSONL, Parquet, CSV) alone, consecutive files of one document
    each (text, PDF, HTML, ...) `doc_batch` at a time; and the files a folder has that are skipped.
    The driver holds these lists: its memory grows with the number of files, not their content."""
    units: list[list[SourceFile]] = []
    skipped: list[Skipped] = []
    paths = list(paths)
    for path in paths:
        check_path(Path(path))
    for path in paths:
        for file in corpus_files(Path(path)):
            if isinstance(file, Skipped):
                skipped.append(file)
                continue
            single = file.suffix not in RECORD_SUFFIXES
            last = units[-1] if units else []
            if single and last and len(last) < doc_batch and last[0].suffix not in RECORD_SUFFIXES:
                last.append(file)
            else:
                units.append([file])
    return units, skipped


class SkipLog:
    """What the read tasks skipped, by read task, for the driver to report (an actor)."""

    def __init__(self) -> None:
        self.skipped: dict[int, list[Skipped]] = {}

    def add(self, unit: int, skipped: list[Skipped]) -> None:
        self.skipped[unit] = skipped

    def all(self) -> list[Skipped]:
        """In corpus order."""
        return [s for unit in sorted(self.skipped) for s in self.skipped[unit]]


class CorpusSource(Datasource):
    """The corpus as a Ray Data source: one read task per unit of `read_units`, in order."""

    def __init__(self, units: list[list[SourceFile]], doc_batch: int, options: ReadOptions, skips: Any) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.units = units
        self.doc_batch = doc_batch
        self.options = options
        self.skips = skips  # a SkipLog actor

    def estimate_inmemory_data_size(self) -> int:
        return sum(f.size() for unit in self.units for f in unit)

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: DataContext | None = None
    ) -> list[ReadTask]:
        def task(at: int, unit: list[SourceFile]) -> ReadTask:
            size = sum(f.size() for f in unit)
            metadata = BlockMetadata(
                num_rows=None, size_bytes=size, input_files=tuple(f.where for f in unit), exec_stats=None
            )
            read = functools.partial(read_documents, unit, self.doc_batch, self.options, (self.skips, at))
            return ReadTask(read, metadata, per_task_row_limit=per_task_row_limit)

        return [task(at, unit) for at, unit in enumerate(self.units)]


def read_documents(
    files: list[SourceFile], doc_batch: int, options: ReadOptions, report: tuple[Any, int] | None = None
) -> Iterator[pa.Table]:
    """Blocks of `doc_batch` documents of `files`, read and checked by indexer/sources.py; what
    it skips goes to the SkipLog of `report` (actor, unit) once the files are read."""
    skipped: list[Skipped] = []

    def documents() -> Iterator[tuple[Document, SourceFile]]:
        for file in files:
            for item in read_file(file, options):
                if isinstance(item, Skipped):
                    skipped.append(item)
                else:
                    yield item, file

    with kept_message():
        for batch in batched(documents(), doc_batch):
            yield pa.table(
                [
                    [d.id for d, _ in batch],
                    [d.title for d, _ in batch],
                    [d.text for d, _ in batch],
                    [json.dumps(d.metadata, ensure_ascii=False) for d, _ in batch],
                    [f.where for _, f in batch],
                ],
                schema=DOCUMENTS,
            )
    if skipped and report is not None:
        log, unit = report
        ray.get(log.add.remote(unit, skipped))  # delivered before the task ends, so the driver sees it


@functools.lru_cache(maxsize=2)
def _tokenizer(spec: str) -> Tokenizer:
    """Built once per worker process (a task gets the tokenizer's JSON, ~0.7 MB, not a model)."""
    return Tokenizer.from_str(spec)


def tokenizer_spec(encoder: Encoder) -> str:
    """The encoder's own tokenizer (padding and truncation off, as `Encoder.tokenize` uses it),
    serialised, so the chunk tasks cut exactly the chunks a local build cuts."""
    return encoder._tokenizer.to_str()


def chunk_items(docs: pa.Table, tokenizer: str, chunking: ChunkingConfig, shards: int) -> pa.Table:
    """A block of documents -> one row per chunk (ITEMS), and one marker row (ordinal -1) per
    document that has no chunk; tokenized as `Encoder.tokenize` does (no special tokens)."""
    records = docs.to_pylist()
    encodings = _tokenizer(tokenizer).encode_batch([r["text"] for r in records], add_special_tokens=False)
    rows: list[tuple[Any, ...]] = []
    for r, e in zip(records, encodings, strict=True):
        doc = Document(r["id"], r["title"], r["text"], json.loads(r["metadata"]))
        chunks = chunk_document(doc, TokenizedText(e.ids, e.offsets, e.word_ids), chunking)
        shard = shard_of(r["id"], shards)
        if not chunks:
            rows.append((r["id"], -1, r["title"], "", 0, 0, r["metadata"], r["source"], [], shard))
        rows.extend(
            (
                c.doc_id,
                c.ordinal,
                c.title,
                c.text,
                c.start_char,
                c.end_char,
                r["metadata"] if c.metadata is doc.metadata else json.dumps(c.metadata, ensure_ascii=False),
                r["source"],
                c.token_ids,
                shard,
            )
            for c in chunks
        )
    columns = [list(column) for column in zip(*rows, strict=True)] or [[] for _ in ITEMS.names]
    return pa.table(columns, schema=ITEMS)


# --- vectors (an actor pool) --------------------------------------------------------------------


class Embedder:
    """The embedding stage: each actor loads the retriever once and embeds whole blocks (the
    encoder sorts a block's chunks by length, as a local build sorts its embedding window)."""

    def __init__(self, model: ModelInfo, threads: int, batch: int | None) -> None:
        import torch

        from retriever.encoder import Encoder

        torch.set_num_threads(threads)
        self.encoder = Encoder(model.name, model.precision)
        if ModelInfo.of(self.encoder) != model:  # a node with other weights would break the manifest's word
            raise ModelMismatchError(f"this node's retriever is {ModelInfo.of(self.encoder)}, the build's {model}")
        self.batch = batch

    def __call__(self, items: pa.Table) -> pa.Table:
        """ITEMS -> ITEMS without token_ids, with `tokens` and `vector` (zero for marker rows)."""
        dim = self.encoder.dimension
        chunks = np.flatnonzero(items["ordinal"].to_numpy() >= 0)  # (chunks,) rows
        ids = items["token_ids"].to_pylist()
        vectors = np.zeros((items.num_rows, dim), np.float32)  # (rows, dim)
        if chunks.size:
            vectors[chunks] = self.encoder.encode_ids([ids[i] for i in chunks.tolist()], self.batch)
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
        tokens = pc.list_value_length(items["token_ids"])
        return items.drop_columns(["token_ids"]).append_column("tokens", tokens).append_column("vector", column)


# --- shard writers (actors on the driver's node) --------------------------------------------------


class SeenIds:
    """The document ids one writer has seen, in a SQLite table on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path)
        self._db.executescript(
            "PRAGMA journal_mode=MEMORY; PRAGMA synchronous=OFF; CREATE TABLE ids (id TEXT PRIMARY KEY) WITHOUT ROWID;"
        )

    def add(self, ids: list[str], sources: list[str]) -> None:
        """Refuse the first id seen before, with the local reader's message (indexer/sources.py)."""
        try:
            with self._db:
                self._db.executemany("INSERT INTO ids VALUES (?)", ((i,) for i in ids))
        except sqlite3.IntegrityError:
            at = self._first_duplicate(ids)
            raise InvalidInputError(f"{sources[at]}: duplicate document id {ids[at]!r}") from None

    def _first_duplicate(self, ids: list[str]) -> int:
        batch: set[str] = set()
        for at, doc_id in enumerate(ids):
            if doc_id in batch or self._db.execute("SELECT 1 FROM ids WHERE id = ?", (doc_id,)).fetchone():
                return at
            batch.add(doc_id)
        raise AssertionError("an integrity error without a duplicate id")

    def close(self) -> None:
        self._db.close()
        self.path.unlink(missing_ok=True)


class ShardWriter:
    """One shard's writer: an ArtifactWriter on its folder, the ids it has seen, its counts."""

    def __init__(self, folder: str, ids: str, model: ModelInfo, chunking: dict[str, int], layout: Layout) -> None:
        self.writer = ArtifactWriter(Path(folder), model, chunking, layout)
        self.ids = SeenIds(Path(ids))
        self.counts = dict.fromkeys(COUNTS, 0)

    def add(self, items: pa.Table) -> int:
        """Write embedded items (the driver's order is the corpus order) -> chunks written."""
        ordinal = items["ordinal"].to_numpy()  # (rows,)
        starts = pa.array(np.flatnonzero(ordinal <= 0))  # a document's first row: chunk 0 or its marker
        with kept_message():
            self.ids.add(items["doc_id"].take(starts).to_pylist(), items["source"].take(starts).to_pylist())
        self.counts["documents"] += len(starts)
        self.counts["empty_documents"] += int((ordinal < 0).sum())
        self.counts["tokens"] += int(pc.sum(items["tokens"]).as_py() or 0)
        rows = np.flatnonzero(ordinal >= 0)  # (chunks,)
        fields = ["doc_id", "ordinal", "title", "text", "start_char", "end_char", "metadata"]
        chunks = [
            Chunk(
                r["doc_id"],
                r["ordinal"],
                r["title"],
                r["text"],
                r["start_char"],
                r["end_char"],
                [],
                json.loads(r["metadata"]),
            )
            for r in items.select(fields).take(pa.array(rows)).to_pylist()
        ]  # token ids stay behind: the writer keeps none
        vectors = items["vector"].combine_chunks().flatten().to_numpy().reshape(items.num_rows, -1)  # (rows, dim)
        self.writer.add(chunks, vectors[rows])
        return len(chunks)

    def close(self) -> dict[str, int]:
        """Stop taking rows -> this shard's counts and rows."""
        self.writer.close()
        self.ids.close()
        return {**self.counts, "rows": self.writer.rows}

    def finish(self, factory: str, quantizer: str | None, id_base: int, threads: int) -> Finished:
        """Build this shard's FAISS index (over the shared quantizer when there is one)."""
        import faiss

        faiss.omp_set_num_threads(threads)  # the shards of this node share its cores
        trained = faiss_index.read_cpu(Path(quantizer)) if quantizer else None
        return self.writer.finish(factory, trained, id_base)


def train_quantizer(
    staging: str, shards: int, dimension: int, factory: str, rows: list[int], gpu: GpuOptions
) -> tuple[str | None, list[int]]:
    """The quantizer the shards share, trained once as `ShardedArtifactWriter.seal` trains it (on a
    GPU of this node when `gpu` says and it has one), and each shard's first FAISS id."""
    spools = [read_spool(Path(staging) / shard_name(i), dimension) for i in range(shards)]
    trained = faiss_index.train(shared_sample(spools), factory, gpu)
    if trained is None:
        return None, id_bases(rows, None)
    path = Path(staging) / QUANTIZER_FILE
    faiss_index.write(trained, path)
    return str(path), id_bases(rows, trained)


def seal(
    staging: str,
    model: ModelInfo,
    chunking: dict[str, int],
    factory: str,
    bases: list[int] | None,
    counts: dict[str, int],
    elapsed: float,
    *finished: Finished,
) -> Manifest:
    """The manifest (and the corpus-wide BM25 statistics of shards), as the local writers write
    them; `elapsed` is the build's time so far (perf_counter readings do not cross machines)."""
    started = time.perf_counter() - elapsed
    if bases is None:
        return seal_single(Path(staging), model, chunking, factory, finished[0], counts, started)
    return seal_shards(Path(staging), model, chunking, factory, finished, bases, counts, started)


@contextlib.contextmanager
def kept_message() -> Iterator[None]:
    """Ray Data appends retry advice to the message of an exception raised in a task; the
    message is kept aside first, so the driver raises what the local build raises."""
    try:
        yield
    except RagserveError as exc:
        setattr(exc, MESSAGE, str(exc))
        raise
