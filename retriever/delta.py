"""Freshness without a rebuild: documents changed since an index version was built live in a
small in-memory delta index searched together with it.

Search asks the version for more than top_k, drops every chunk of a document that the delta
replaces or that was deleted, searches the delta, and merges both by score. The delta is exact
(every one of its live chunks is scored). Chunking and embedding the changed documents is the
indexer's work (indexer/delta.py); this module holds what they became and searches it.

A batch costs what the batch holds, not what the delta holds: its chunks are analysed and weighed
once and appended, and the chunks they replace become dead rows. Searches read the current
snapshot without a lock; the one writer publishes the next by one reference assignment, so nothing
a published snapshot can see is ever rewritten:

- rows are appended past the end of every snapshot, into spare capacity or into a buffer twice
  the size (a row is copied O(1) times, amortised);
- a row that dies is stamped, once, with the generation of the batch that killed it; snapshots of
  earlier generations still see it alive;
- BM25 postings are blocks of consecutive rows (`Postings`, retriever/sparse.py); a new block is
  merged with the last one while that is at most `MERGE_RATIO` times its size: O(log rows) blocks
  (each search scores every block), and a row is merged O(log rows) times;
- a hidden document stays hidden until compaction, so a snapshot's hidden set is a prefix of one
  insertion-ordered dict that the writer only appends to.

When dead rows outnumber live ones, the delta is rewritten with its live rows alone (amortised
O(1) per dead row), so its memory stays proportional to what it holds.

BM25 over the delta uses the version's statistics (document frequencies, average length, and
vocabulary: a term the version has never seen is not searchable until the next compaction), so
delta and version scores are on one scale; hybrid scores depend only on the query and the chunk
(retriever/hybrid.py), so they merge by value too.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from ragserve.types import ChunkRecord, RetrievalMode, SearchResult
from retriever.base import Retriever
from retriever.postings import Postings, SparseHits
from retriever.search import search
from retriever.sparse import SparseIndex, indexed_text

if TYPE_CHECKING:
    from retriever.version import VersionRetriever

# A document as the delta holds it: its chunks and their vectors (chunks, dim).
Embedded = tuple[Sequence[ChunkRecord], np.ndarray]
ALIVE = np.iinfo(np.int64).max  # the death generation of a row that has not died
# Block sizes shrink at least this fast from the first block to the last. 4 rather than 2: a
# search pays ~70 µs per block, a merge copies rows in numpy (bench/delta_ingest.py; simulated
# for batches of 8-64 chunks up to 50,000 rows: 3-4 blocks on average instead of 4-5, at 10-15
# merges per row instead of 8-12).
MERGE_RATIO = 4


@dataclass(frozen=True, slots=True)
class DeltaContents:
    """A consistent snapshot of a delta index, for a compaction."""

    chunks: list[ChunkRecord]
    vectors: np.ndarray  # (len(chunks), dim)
    hidden: frozenset[str]  # document ids whose base chunks are replaced or deleted
    documents: int  # documents the delta holds (some may have no chunks)
    seq: int  # the document change counter the snapshot includes

    @property
    def empty(self) -> bool:
        return not self.hidden


@dataclass(frozen=True, slots=True)
class Hidden:
    """The documents whose chunks in the version must not show, as one snapshot sees them: the
    first `count` ids of a dict the writer only appends to, so a batch adds its ids instead of
    copying the set."""

    order: Mapping[str, int]  # doc id -> how many documents were hidden before it
    count: int

    def __contains__(self, doc_id: str) -> bool:
        return self.order.get(doc_id, self.count) < self.count

    def __bool__(self) -> bool:
        return self.count > 0


@dataclass(frozen=True, slots=True)
class DeltaSnapshot:
    """A consistent view of the delta for one search; a search space (retriever/search.py)."""

    chunks: Sequence[ChunkRecord]  # by row; shared with later snapshots, which append to it
    rows: int  # rows this snapshot holds, live or dead
    live: int
    vectors: np.ndarray  # (rows, dim) a view of the writer's buffer
    died: np.ndarray  # (rows,) a view: the generation that killed each row, ALIVE if none
    generation: int
    postings: tuple[Postings, ...]  # blocks of consecutive rows, together rows 0 .. rows - 1
    hidden: Hidden  # documents whose chunks in the version must not show
    statistics: SparseIndex

    @property
    def size(self) -> int:
        return self.live

    def dense_top(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = (vectors @ self.vectors.T).astype(np.float32)  # (Q, rows): exact, whatever their sign
        scores[:, self.died <= self.generation] = -np.inf  # dead rows sort last and are cut off below
        top = np.argsort(-scores, axis=1, kind="stable")[:, : min(k, self.live)]  # (Q, k)
        return np.take_along_axis(scores, top, axis=1), top

    def dense_scores(self, vector: np.ndarray, rows: np.ndarray) -> np.ndarray:
        scores: np.ndarray = (self.vectors[rows] @ vector).astype(np.float32)  # (n,)
        return scores

    def sparse_hits(self, queries: sp.csr_matrix, ceiling: np.ndarray) -> SparseHits:
        hits = SparseHits.of(self.postings, queries, ceiling)
        return hits.where(self.died[hits.scores.indices] > self.generation)  # live rows only

    def records(self, rows: Sequence[int]) -> Mapping[int, ChunkRecord]:
        return {row: self.chunks[row] for row in rows}


class _Rows:
    """The writer's append-only rows: chunks, vectors and death generations. Appends land past the
    end of every published view; a full buffer is replaced by one twice its size."""

    def __init__(self, chunks: list[ChunkRecord], vectors: np.ndarray) -> None:
        self.chunks = chunks
        self.count = len(chunks)
        self.vectors = vectors  # (capacity, dim)
        self.died = np.full(self.count, ALIVE, np.int64)  # (capacity,)

    def append(self, chunks: Sequence[ChunkRecord], vectors: np.ndarray) -> int:
        """Add rows; returns how many old rows a grown buffer had to copy."""
        end = self.count + len(chunks)
        copied = self._grow(max(end, 2 * len(self.died))) if end > len(self.died) else 0
        self.vectors[self.count : end] = vectors
        self.chunks.extend(chunks)
        self.count = end
        return copied

    def kill(self, rows: range, generation: int) -> None:
        self.died[rows.start : rows.stop] = generation

    def _grow(self, capacity: int) -> int:
        vectors = np.empty((capacity, self.vectors.shape[1]), np.float32)
        vectors[: self.count] = self.vectors[: self.count]
        died = np.full(capacity, ALIVE, np.int64)
        died[: self.count] = self.died[: self.count]
        self.vectors, self.died = vectors, died  # published views keep the old buffers
        return self.count


class DeltaIndex:
    """The changes after document counter value `since`; `seq` is the last one applied. One
    writer at a time (`put`); searches read the current snapshot without a lock."""

    def __init__(self, dimension: int, sparse: SparseIndex, since: int = 0) -> None:
        self.dimension = dimension
        self.sparse = sparse
        self.since = since
        self.seq = since
        # The work done, in rows: what a batch costs (tests/test_delta_incremental.py).
        self.analysed = 0  # texts analysed and weighed: each row once, in its own batch
        self.copied = 0  # rows copied again by buffer growth and rewrites: O(1) per row, amortised
        self.merged = 0  # posting rows copied by block merges: O(log rows) per row, amortised
        self._docs: dict[str, range] = {}  # doc id -> its rows, in the order documents first came
        self._hidden: dict[str, int] = {}  # doc id -> position: only ever appended to
        self._rows = _Rows([], np.empty((0, dimension), np.float32))
        self._postings: tuple[Postings, ...] = ()
        self._dead = 0
        self._generation = 0
        self._snapshot = self._view()
        self._lock = threading.Lock()  # writers only; readers take the current snapshot

    def put(self, embedded: Mapping[str, Embedded], removed: Sequence[str], seq: int) -> None:
        """Hold `embedded` (replacing what the delta held of those documents), drop `removed`,
        note that changes up to `seq` are in."""
        with self._lock:
            self._generation += 1
            for doc_id in [*embedded, *removed]:
                self._hidden.setdefault(doc_id, len(self._hidden))
            gone = set(removed)
            self._replace({doc_id: e for doc_id, e in embedded.items() if doc_id not in gone})
            for doc_id in removed:
                self._kill(self._docs.pop(doc_id, None))
            if self._dead > self._rows.count - self._dead:
                self._rewrite()
            self._snapshot = self._view()
            self.seq = max(self.seq, seq)

    def _replace(self, embedded: Mapping[str, Embedded]) -> None:
        """Kill what the delta held of these documents and append their chunks; a document keeps
        its place in the document order (the order `contents` gives compaction)."""
        start = self._rows.count
        chunks: list[ChunkRecord] = []
        vectors: list[np.ndarray] = []  # (chunks of the document, dim) each
        for doc_id, (doc_chunks, doc_vectors) in embedded.items():
            self._kill(self._docs.get(doc_id))
            self._docs[doc_id] = range(start + len(chunks), start + len(chunks) + len(doc_chunks))
            chunks.extend(doc_chunks)
            vectors.extend([doc_vectors] if len(doc_chunks) else [])
        if chunks:
            self._append(chunks, np.vstack(vectors))

    def _kill(self, rows: range | None) -> None:
        if rows:
            self._rows.kill(rows, self._generation)
            self._dead += len(rows)

    def _append(self, chunks: Sequence[ChunkRecord], vectors: np.ndarray) -> None:
        """Analyse and weigh the new chunks alone, and append them: (len(chunks), dim) vectors."""
        tf, lengths = self.sparse.tf_rows([indexed_text(c.title, c.text) for c in chunks])
        self.analysed += len(chunks)
        self.copied += self._rows.append(chunks, vectors)
        self._push(Postings.of(self.sparse.weigh(tf, lengths)))

    def _push(self, block: Postings) -> None:
        """Append `block`, merged with the last blocks while each is at most MERGE_RATIO times its size."""
        blocks = self._postings
        while blocks and blocks[-1].rows <= MERGE_RATIO * block.rows:
            block = blocks[-1].concat(block)
            self.merged += block.rows
            blocks = blocks[:-1]
        self._postings = (*blocks, block)

    def _rewrite(self) -> None:
        """Keep the live rows alone, in document order; the dead ones are dropped."""
        keep = self._live_rows()  # (live,)
        merged = functools.reduce(Postings.concat, self._postings)
        self._postings = (merged.take(keep),) if keep.size else ()
        self._rows = _Rows([self._rows.chunks[i] for i in keep], self._rows.vectors[keep])
        start = 0
        for doc_id, rows in self._docs.items():
            self._docs[doc_id] = range(start, start + len(rows))
            start += len(rows)
        self._dead = 0
        self.copied += int(keep.size)
        self.merged += int(keep.size)

    def _live_rows(self) -> np.ndarray:
        """(live,) rows of the documents held, in document order (as a rebuild would lay them out)."""
        ranges = [np.arange(rows.start, rows.stop) for rows in self._docs.values()]
        return np.concatenate(ranges) if ranges else np.empty(0, np.int64)

    def _view(self) -> DeltaSnapshot:
        rows = self._rows
        end = rows.count
        vectors, died = rows.vectors[:end], rows.died[:end]  # (rows, dim), (rows,)
        hidden = Hidden(self._hidden, len(self._hidden))
        return DeltaSnapshot(
            rows.chunks, end, end - self._dead, vectors, died, self._generation, self._postings, hidden, self.sparse
        )

    @property
    def chunks(self) -> int:
        return self._snapshot.live

    def snapshot(self) -> DeltaSnapshot:
        return self._snapshot  # replaced whole by `put`; what it shows is never rewritten

    def contents(self) -> DeltaContents:
        """Everything, with vectors, for a compaction."""
        with self._lock:
            keep = self._live_rows()  # (live,)
            chunks = [self._rows.chunks[i] for i in keep]
            vectors = self._rows.vectors[keep]  # (live, dim)
            return DeltaContents(chunks, vectors, frozenset(self._hidden), len(self._docs), self.seq)


class FreshRetriever(Retriever):
    """An index version plus its delta."""

    def __init__(self, base: VersionRetriever, delta: DeltaIndex) -> None:
        self.base = base
        self.delta = delta

    @property
    def index_version(self) -> str:
        return self.base.index_version

    def search_batch(self, queries: Sequence[str], top_k: int, mode: RetrievalMode | None = None) -> list[SearchResult]:
        mode = mode or self.base.mode
        snap = self.delta.snapshot()
        if not snap.hidden:
            return self.base.search_batch(queries, top_k, mode)
        t0 = time.perf_counter()
        vectors = self.base.embed(queries, mode)  # (Q, dim) or None; once for version and delta
        embed_ms = (time.perf_counter() - t0) * 1000
        results = self.base.search_embedded(queries, vectors, top_k * 2 + 8, mode, embed_ms)  # room for hidden
        started = time.perf_counter()
        found = search(snap, self.base.sparse, queries, vectors, top_k, mode, self.base.fusion)
        delta_ms = (time.perf_counter() - started) * 1000 / len(queries)
        merged = []
        for result, fresh in zip(results, found, strict=True):
            kept = [p for p in result.passages if p.doc_id not in snap.hidden] + fresh
            kept.sort(key=lambda p: p.score, reverse=True)
            timings = {**result.timings_ms, "delta": delta_ms}
            merged.append(SearchResult(kept[:top_k], result.index_version, timings))
        return merged
