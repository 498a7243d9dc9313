"""Search over one verified index version: dense (FAISS), sparse (BM25) or hybrid (both, fused)."""

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from indexer.artifact import DOCSTORE_FILE, INDEX_FILE, Manifest, verify_artifact
from indexer.docstore import Docstore, StoredChunk
from retriever import faiss_index
from retriever.base import Retriever
from retriever.encoder import Encoder
from retriever.errors import ArtifactError, ModelMismatchError
from retriever.hybrid import FusionWeights, QueryTerms, rank, union_rows
from retriever.sparse import ANALYZER_VERSION, BM25Params, SparseIndex, indexed_text, top_rows
from retriever.types import Passage, RetrievalMode, SearchResult

log = logging.getLogger(__name__)


class VersionRetriever(Retriever):
    def __init__(
        self,
        path: Path,
        encoder: Encoder,
        ef_search: int = 128,
        nprobe: int = 16,
        mode: RetrievalMode = RetrievalMode.HYBRID,
        bm25: BM25Params | None = None,
        fusion: FusionWeights | None = None,
    ) -> None:
        self.path = path
        self.manifest: Manifest = verify_artifact(path)
        if self.manifest.retriever_weights_sha256 != encoder.weights_sha256:
            raise ModelMismatchError(
                f"{path} was built with retriever {self.manifest.retriever_model!r} "
                f"(weights sha256 {self.manifest.retriever_weights_sha256[:12]}…), but the loaded retriever is "
                f"{encoder.name!r} (weights sha256 {encoder.weights_sha256[:12]}…): rebuild the index or "
                "configure the matching model"
            )
        self.encoder = encoder
        self.mode = mode
        self.fusion = fusion or FusionWeights()
        self.index = faiss_index.load(path / INDEX_FILE, ef_search=ef_search, nprobe=nprobe)
        self.docstore = Docstore(path / DOCSTORE_FILE)
        self.sparse = self._open_sparse(bm25 or BM25Params())

    def _open_sparse(self, params: BM25Params) -> SparseIndex:
        if self.manifest.sparse_analyzer == ANALYZER_VERSION:
            return SparseIndex.load(self.path, params)
        # An artifact from before sparse indexes (or another analyzer): build one in memory.
        log.info("%s has no current BM25 index; building one from its docstore", self.path)
        texts = (indexed_text(c.title, c.text) for batch in self.docstore.scan() for c in batch)
        return SparseIndex.from_texts(texts, params)

    @property
    def index_version(self) -> str:
        return self.manifest.version

    def search_batch(self, queries: Sequence[str], top_k: int, mode: RetrievalMode | None = None) -> list[SearchResult]:
        mode = mode or self.mode
        t0 = time.perf_counter()
        vectors = self.embed(queries, mode)
        return self.search_embedded(queries, vectors, top_k, mode, (time.perf_counter() - t0) * 1000)

    def embed(self, queries: Sequence[str], mode: RetrievalMode) -> np.ndarray | None:
        """The query vectors a search in `mode` needs -> (Q, dim), or None for BM25 alone."""
        return self.encoder.encode_queries(queries) if mode is not RetrievalMode.SPARSE else None

    def search_embedded(
        self, queries: Sequence[str], vectors: np.ndarray | None, top_k: int, mode: RetrievalMode, embed_ms: float
    ) -> list[SearchResult]:
        """Search with query vectors already computed (by `embed`); `embed_ms` is what that took."""
        t1 = time.perf_counter()
        if mode is RetrievalMode.SPARSE:
            scores, rows = self.sparse.search(queries, top_k)  # (Q, k) each; row -1 = no hit
        else:
            assert vectors is not None
            scores, rows = self.index.search(vectors, top_k if mode is RetrievalMode.DENSE else self._depth(top_k))
        records = self.docstore.get(sorted({int(r) for r in rows.ravel() if r >= 0}))
        if mode is RetrievalMode.HYBRID:
            assert vectors is not None
            scores, rows, records = self._hybrid(queries, vectors, rows, records, top_k)
        t2 = time.perf_counter()
        per_query = len(queries)
        timings = {"embed": embed_ms / per_query, "search": (t2 - t1) * 1000 / per_query}
        return [self._result(s, r, records, timings) for s, r in zip(scores, rows, strict=True)]

    def _depth(self, top_k: int) -> int:
        return max(top_k, self.fusion.candidates)

    def _hybrid(
        self,
        queries: Sequence[str],
        vectors: np.ndarray,
        dense_rows: np.ndarray,
        records: dict[int, StoredChunk],
        top_k: int,
    ) -> tuple[np.ndarray, np.ndarray, dict[int, StoredChunk]]:
        """Fuse the dense candidates (already found) with the BM25 ones -> (Q, k) scores and rows."""
        matrix, ceiling = self.sparse.query_matrix(queries)
        sparse_all = self.sparse.score(self.sparse.postings, matrix, ceiling)  # (Q, N)
        _, sparse_rows = top_rows(sparse_all, self._depth(top_k))  # (Q, depth)
        missing = {int(r) for r in sparse_rows.ravel() if r >= 0} - records.keys()
        records = {**records, **self.docstore.get(sorted(missing))}
        fused = np.full((len(queries), top_k), -np.inf, np.float32)
        out_rows = np.full((len(queries), top_k), -1, np.int64)
        for q, query in enumerate(queries):
            rows = union_rows(dense_rows[q], sparse_rows[q])  # (n,)
            if rows.size == 0:
                continue
            dense = self._dense_scores(vectors[q], rows)  # (n,)
            chunks = [(records[int(r)].title, records[int(r)].text) for r in rows]
            scores, best = rank(QueryTerms.of(query), rows, dense, sparse_all[q, rows], chunks, self.fusion, top_k)
            fused[q, : best.size], out_rows[q, : best.size] = scores, best
        return fused, out_rows, records

    def _dense_scores(self, vector: np.ndarray, rows: np.ndarray) -> np.ndarray:
        stored = faiss_index.reconstruct(self.index, rows)  # (n, dim) or None
        if stored is None:
            raise ArtifactError(f"{self.path}: index type {self.manifest.index_factory} cannot give back vectors")
        scores: np.ndarray = (stored @ vector).astype(np.float32)  # (n,)
        return scores

    def _result(
        self, scores: np.ndarray, rows: np.ndarray, records: dict[int, StoredChunk], timings: dict[str, float]
    ) -> SearchResult:
        passages = [
            Passage.of(records[row], score)
            for score, row in zip(scores.tolist(), rows.tolist(), strict=True)
            if row >= 0
        ]
        return SearchResult(passages=passages, index_version=self.index_version, timings_ms=dict(timings))
