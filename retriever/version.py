"""Search over one verified index version: dense (FAISS), sparse (BM25) or hybrid (both, fused)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from ragserve.errors import ArtifactError, ModelMismatchError
from ragserve.types import ChunkRecord, RetrievalMode, SearchResult
from retriever import faiss_index
from retriever.artifact import DOCSTORE_FILE, INDEX_FILE, Manifest, verify_artifact
from retriever.base import Retriever
from retriever.docstore import Docstore
from retriever.hybrid import FusionWeights
from retriever.search import search
from retriever.sparse import ANALYZER_VERSION, BM25Params, SparseHits, SparseIndex, indexed_text

if TYPE_CHECKING:
    from retriever.encoder import Encoder

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SearchConfig:
    """How a version is searched (from the settings: service/application/loading.py `search_config`)."""

    mode: RetrievalMode  # used when a search names none
    ef_search: int  # HNSW
    nprobe: int  # IVF
    bm25: BM25Params
    fusion: FusionWeights


class VersionRetriever(Retriever):
    def __init__(self, path: Path, encoder: Encoder, config: SearchConfig) -> None:
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
        self.mode = config.mode
        self.fusion = config.fusion
        self.index = faiss_index.load(path / INDEX_FILE, ef_search=config.ef_search, nprobe=config.nprobe)
        self.docstore = Docstore(path / DOCSTORE_FILE)
        self.sparse = self._open_sparse(config.bm25)

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
        started = time.perf_counter()
        found = search(self, self.sparse, queries, vectors, top_k, mode, self.fusion)
        per_query = len(queries)
        timings = {"embed": embed_ms / per_query, "search": (time.perf_counter() - started) * 1000 / per_query}
        return [SearchResult(passages, self.index_version, dict(timings)) for passages in found]

    # --- the version as a search space (retriever/search.py) ---------------------------------------

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def dense_top(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search(vectors, k)  # (Q, k) each; row -1 where the index has fewer
        return scores, rows

    def dense_scores(self, vector: np.ndarray, rows: np.ndarray) -> np.ndarray:
        stored = faiss_index.reconstruct(self.index, rows)  # (n, dim) or None
        if stored is None:
            raise ArtifactError(f"{self.path}: index type {self.manifest.index_factory} cannot give back vectors")
        scores: np.ndarray = (stored @ vector).astype(np.float32)  # (n,)
        return scores

    def sparse_hits(self, queries: sp.csr_matrix, ceiling: np.ndarray) -> SparseHits:
        return SparseHits.of([self.sparse.postings], queries, ceiling)

    def records(self, rows: Sequence[int]) -> Mapping[int, ChunkRecord]:
        return self.docstore.get(rows)
