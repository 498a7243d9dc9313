"""Freshness without a rebuild: documents changed since an index version was built live in a
small in-memory delta index searched together with it.

Search asks the version for more than top_k, drops every chunk of a document that the delta
replaces or that was deleted, searches the delta, and merges both by score. The delta is exact
(inner product over all its chunks) and its FAISS index is rebuilt whole on each change, which is
cheap at the sizes a delta reaches between compactions (see the `compact_after_chunks` setting).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import faiss
import numpy as np

from indexer.chunking import Chunk, ChunkingConfig, chunk_document
from indexer.compact import DeltaContents
from indexer.sources import Document
from retriever.base import Retriever
from retriever.types import Passage, SearchResult

if TYPE_CHECKING:
    from retriever.dense import DenseRetriever
    from retriever.encoder import Encoder

NO_TEXT = "no text to index: the document is stored but cannot be retrieved"


class DeltaIndex:
    """The changes after document counter value `since`; `seq` is the last one applied."""

    def __init__(self, encoder: Encoder, chunking: ChunkingConfig, since: int = 0) -> None:
        self.encoder = encoder
        self.chunking = chunking
        self.since = since
        self.seq = since
        self._docs: dict[str, tuple[list[Chunk], np.ndarray]] = {}
        self._deleted: frozenset[str] = frozenset()
        self._index = faiss.IndexFlatIP(encoder.dimension)
        self._rows: list[Chunk] = []
        self._lock = threading.Lock()  # writers only; readers take a consistent snapshot

    def apply(self, changed: Sequence[Document], removed: Sequence[str], seq: int) -> dict[str, str]:
        """Index `changed`, drop `removed`, note that changes up to `seq` are in; returns
        {doc id: problem} for documents with no text."""
        problems: dict[str, str] = {}
        embedded: dict[str, tuple[list[Chunk], np.ndarray]] = {}
        tokenized = self.encoder.tokenize([d.text for d in changed]) if changed else []
        for doc, tokens in zip(changed, tokenized, strict=True):
            chunks = chunk_document(doc, tokens, self.chunking)
            if not chunks:
                problems[doc.id] = NO_TEXT
            embedded[doc.id] = (chunks, self.encoder.encode_ids([c.token_ids for c in chunks]))
        with self._lock:
            docs = {**self._docs, **embedded}
            for doc_id in removed:
                docs.pop(doc_id, None)
            rows = [c for chunks, _ in docs.values() for c in chunks]
            index = faiss.IndexFlatIP(self.encoder.dimension)
            if rows:
                index.add(self._stack(docs))
            self._docs, self._rows, self._index = docs, rows, index
            self._deleted = (self._deleted - embedded.keys()) | frozenset(removed)
            self.seq = max(self.seq, seq)
        return problems

    def _stack(self, docs: dict[str, tuple[list[Chunk], np.ndarray]]) -> np.ndarray:
        blocks = [v for chunks, v in docs.values() if chunks]
        return np.ascontiguousarray(np.vstack(blocks), dtype=np.float32)  # (chunks, dim)

    @property
    def chunks(self) -> int:
        return len(self._rows)

    def snapshot(self) -> tuple[faiss.Index, list[Chunk], frozenset[str]]:
        """The index, its rows, and the documents whose chunks in the version must not show."""
        with self._lock:
            return self._index, self._rows, frozenset(self._docs) | self._deleted

    def contents(self) -> DeltaContents:
        """Everything, with vectors, for a compaction."""
        with self._lock:
            vectors = self._stack(self._docs) if self._rows else np.empty((0, self.encoder.dimension), np.float32)
            return DeltaContents(
                list(self._rows), vectors, frozenset(self._docs) | self._deleted, len(self._docs), self.seq
            )


class FreshRetriever(Retriever):
    """An index version plus its delta."""

    def __init__(self, base: DenseRetriever, delta: DeltaIndex) -> None:
        self.base = base
        self.delta = delta

    @property
    def index_version(self) -> str:
        return self.base.index_version

    def search_batch(self, queries: Sequence[str], top_k: int) -> list[SearchResult]:
        index, rows, hidden = self.delta.snapshot()
        if not hidden:
            return self.base.search_batch(queries, top_k)
        results = self.base.search_batch(queries, top_k * 2 + 8)  # room for hidden chunks
        started = time.perf_counter()
        vectors = self.delta.encoder.encode_queries(queries)  # (Q, dim)
        scores, ids = index.search(vectors, min(top_k, len(rows))) if rows else (None, None)
        delta_ms = (time.perf_counter() - started) * 1000 / len(queries)
        merged = []
        for q, result in enumerate(results):
            kept = [p for p in result.passages if p.doc_id not in hidden]
            if scores is not None and ids is not None:
                kept += [_passage(rows[i], float(s)) for s, i in zip(scores[q], ids[q], strict=True) if i >= 0]
            kept.sort(key=lambda p: p.score, reverse=True)
            timings = {**result.timings_ms, "delta": delta_ms}
            merged.append(SearchResult(kept[:top_k], result.index_version, timings))
        return merged


def _passage(chunk: Chunk, score: float) -> Passage:
    return Passage(
        chunk_id=chunk.chunk_id,
        doc_id=chunk.doc_id,
        title=chunk.title,
        text=chunk.text,
        score=score,
        start_char=chunk.start_char,
        end_char=chunk.end_char,
        metadata=chunk.metadata,
    )
