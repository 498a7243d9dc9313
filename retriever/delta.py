"""Freshness without a rebuild: documents ingested since the serving version was built live in a
small in-memory delta index searched together with it.

Search asks the serving version for more than top_k, drops every chunk of a document that the
delta replaces or that was deleted (tombstones), searches the delta, and merges both by score.
The delta is exact (inner product over all its chunks) and rebuilt whole on each change, which is
cheap at the sizes a delta has between compactions.
"""

import threading
import time
from collections.abc import Sequence

import faiss
import numpy as np

from indexer.chunking import Chunk, ChunkingConfig, chunk_document
from indexer.sources import Document
from retriever.base import Retriever
from retriever.encoder import Encoder
from retriever.types import Passage, SearchResult


class DeltaIndex:
    def __init__(self, encoder: Encoder, chunking: ChunkingConfig) -> None:
        self.encoder = encoder
        self.chunking = chunking
        self._docs: dict[str, tuple[list[Chunk], np.ndarray]] = {}
        self._hidden: frozenset[str] = frozenset()  # doc ids whose serving-version chunks must not show
        self._index = faiss.IndexFlatIP(encoder.dimension)
        self._rows: list[Chunk] = []
        self._lock = threading.Lock()  # writers only; readers take a consistent snapshot

    def apply(self, changed: Sequence[Document], removed: Sequence[str], tombstones: set[str]) -> dict[str, str]:
        """Index `changed`, drop `removed`; returns {doc id: problem} for documents with no text."""
        problems: dict[str, str] = {}
        embedded: dict[str, tuple[list[Chunk], np.ndarray]] = {}
        tokenized = self.encoder.tokenize([d.text for d in changed]) if changed else []
        for doc, tokens in zip(changed, tokenized, strict=True):
            chunks = chunk_document(doc, tokens, self.chunking)
            if not chunks:
                problems[doc.id] = "no text to index: the document is stored but cannot be retrieved"
            embedded[doc.id] = (chunks, self.encoder.encode_ids([c.token_ids for c in chunks]))
        with self._lock:
            docs = {**self._docs, **embedded}
            for doc_id in removed:
                docs.pop(doc_id, None)
            rows = [c for chunks, _ in docs.values() for c in chunks]
            index = faiss.IndexFlatIP(self.encoder.dimension)
            blocks = [v for chunks, v in docs.values() if chunks]
            if blocks:
                index.add(np.ascontiguousarray(np.vstack(blocks), dtype=np.float32))
            self._docs, self._rows, self._index = docs, rows, index
            self._hidden = frozenset(docs) | frozenset(tombstones)
        return problems

    @property
    def documents(self) -> int:
        return len(self._docs)

    def snapshot(self) -> tuple[faiss.Index, list[Chunk], frozenset[str]]:
        with self._lock:
            return self._index, self._rows, self._hidden


class FreshRetriever(Retriever):
    """The serving version plus the delta."""

    def __init__(self, base: Retriever, delta: DeltaIndex) -> None:
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
