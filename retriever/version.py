"""Search over one verified index version: dense (FAISS), sparse (BM25) or hybrid (both, fused)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np
import scipy.sparse as sp

from ragserve.errors import ArtifactError, ModelMismatchError
from ragserve.types import ChunkRecord, RetrievalMode, SearchResult
from retriever.artifact import DOCSTORE_FILE, INDEX_FILE, Manifest, shard_folders, verify_artifact
from retriever.base import Retriever
from retriever.docstore import Docstore
from retriever.exact import EXACT_FILE
from retriever.gpu import CPU_ONLY, GpuOptions
from retriever.hybrid import FusionWeights
from retriever.postings import SparseHits
from retriever.search import search
from retriever.shard_search import Shard, load_index, merge_top, open_exact, shard_scores, shard_top
from retriever.shards import shard_of
from retriever.sparse import (
    ANALYZER_VERSION,
    SPARSE_FILE,
    VOCAB_FILE,
    BM25Params,
    CorpusStatistics,
    SparseIndex,
    SparseIndexWriter,
    TermCounts,
    indexed_text,
)

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
    rerank_candidates: int  # candidates per query an index with exact vectors kept returns for re-ranking
    gpu: GpuOptions = CPU_ONLY  # where FAISS searches (settings faiss_gpu_search, faiss_gpu_shard)
    shard_threads: int = 0  # threads searching the shards of a sharded version; 0: one per shard, up to the CPUs


class VersionRetriever(Retriever):
    """Search over a version, or over `shards` of a sharded one (all by default).

    The served shards are one search space (retriever/search.py): their rows are numbered one
    after the other, dense search asks every shard for its k best (in parallel threads) and keeps
    the k best of those (a compressed shard re-ranks its candidates exactly where its exact
    vectors are kept: retriever/shard_search.py), BM25 scores every shard's postings under the
    corpus-wide statistics the manifest records, so a search over all shards returns what the
    unsharded index would."""

    def __init__(
        self,
        path: Path,
        encoder: Encoder,
        config: SearchConfig,
        shards: Sequence[int] | None = None,
        reuse: VersionRetriever | None = None,
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
        self.mode = config.mode
        self.fusion = config.fusion
        self.rerank_candidates = config.rerank_candidates
        folders = shard_folders(self.manifest)
        served = list(range(len(folders))) if shards is None else sorted(set(shards))
        if not served or served[0] < 0 or served[-1] >= len(folders):
            raise ArtifactError(f"{path} has {len(folders)} shard(s); cannot serve shards {list(shards or [])}")
        self.shard_numbers = tuple(served)
        kept = {shard.number: shard for shard in reuse.shards} if reuse is not None else {}
        self.shards: list[Shard] = [self._open_shard(i, folders[i], config, kept.get(i), reuse) for i in served]
        self.sparse = SparseIndex(self._statistics(), config.bm25, [s.counts for s in self.shards])
        self._bases = np.cumsum([0] + [s.rows for s in self.shards])  # (shards + 1,) first row of each
        threads = config.shard_threads or min(len(self.shards), os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(threads, "shard-search") if len(self.shards) > 1 and threads > 1 else None

    def _open_shard(
        self, number: int, folder: str, config: SearchConfig, old: Shard | None, old_version: VersionRetriever | None
    ) -> Shard:
        """Shard `number` from the files in `folder`; its index and term counts are `old`'s (the same
        shard of the version serving now) when their files are the same (a compaction links the
        shards it did not change), so a switch reads only the shards that changed."""
        where = self.path / folder
        docstore = Docstore(where / DOCSTORE_FILE)
        id_base = int(self.manifest.shards[number]["id_base"]) if self.manifest.shards else 0

        def same(name: str) -> bool:
            return old_version is not None and _digest(old_version.manifest, name) == _digest(self.manifest, name)

        has_exact = f"{folder}{EXACT_FILE}" in self.manifest.files
        if old is not None and old.id_base == id_base and same(f"{folder}{INDEX_FILE}"):
            index = old.index
        else:
            index = load_index(where, config.ef_search, config.nprobe, config.gpu, has_exact)
        reused = old is not None and same(f"{folder}{SPARSE_FILE}") and same(f"{folder}{VOCAB_FILE}")
        counts = old.counts if old is not None and reused else self._term_counts(where, docstore)
        exact = open_exact(where, has_exact, self.manifest.dimension, int(counts.tf.shape[0]))
        return Shard(number, index, docstore, counts, id_base, exact)

    def owns(self, doc_id: str) -> bool:
        """Whether document `doc_id` belongs to the shards served here (always, unsharded)."""
        count = self.manifest.shard_count
        return count == 1 or len(self.shard_numbers) == count or shard_of(doc_id, count) in self.shard_numbers

    def _term_counts(self, where: Path, docstore: Docstore) -> TermCounts:
        if self.manifest.sparse_analyzer == ANALYZER_VERSION:
            return TermCounts.load(where)
        # An artifact from before sparse indexes (or another analyzer): counted from the docstore.
        log.info("%s has no current BM25 index; building one from its docstore", where)
        writer = SparseIndexWriter()
        writer.add(indexed_text(c.title, c.text) for batch in docstore.scan() for c in batch)
        return writer.counts()

    def _statistics(self) -> CorpusStatistics:
        """The corpus-wide BM25 statistics: recorded by a sharded artifact, an unsharded one's own."""
        if not self.manifest.shards:
            return self.shards[0].counts.statistics()
        totals = self.manifest.bm25_statistics
        return CorpusStatistics.load(self.path, totals["chunks"], totals["total_length"])

    @property
    def index(self) -> faiss.Index:
        """The FAISS index of an unsharded version."""
        assert len(self.shards) == 1, "a sharded version has an index per shard"
        return self.shards[0].index

    @property
    def docstore(self) -> Docstore:
        """The docstore of an unsharded version."""
        assert len(self.shards) == 1, "a sharded version has a docstore per shard"
        return self.shards[0].docstore

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)

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

    # --- the served shards as one search space (retriever/search.py) -------------------------------

    @property
    def size(self) -> int:
        return int(self._bases[-1])

    def dense_top(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        def one(shard: Shard) -> tuple[np.ndarray, np.ndarray]:
            return shard_top(shard, vectors, k, self.rerank_candidates)  # (Q, k) each

        if len(self.shards) == 1:
            return one(self.shards[0])
        parts = list(self._pool.map(one, self.shards)) if self._pool else [one(s) for s in self.shards]
        return merge_top(parts, self._bases.tolist(), k)

    def dense_scores(self, vector: np.ndarray, rows: np.ndarray) -> np.ndarray:
        scores = np.empty(rows.shape[0], np.float32)  # (n,)
        for i, at, local in self._by_shard(rows):
            found = shard_scores(self.shards[i], vector, local)  # (m,) or None
            if found is None:
                raise ArtifactError(f"{self.path}: index type {self.manifest.index_factory} cannot give back vectors")
            scores[at] = found
        return scores

    def sparse_hits(self, queries: sp.csr_matrix, ceiling: np.ndarray) -> SparseHits:
        return SparseHits.of(self.sparse.blocks, queries, ceiling)  # the shards' rows side by side

    def records(self, rows: Sequence[int]) -> Mapping[int, ChunkRecord]:
        found: dict[int, ChunkRecord] = {}
        for i, _, local in self._by_shard(np.asarray(rows, np.int64)):
            got = self.shards[i].docstore.get(local.tolist())
            base = int(self._bases[i])
            found.update({base + row: chunk for row, chunk in got.items()})
        return found

    def _by_shard(self, rows: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Rows (n,) of the space grouped by shard: (its place in `shards`, positions in `rows`, its own rows)."""
        owner = np.searchsorted(self._bases, rows, side="right") - 1  # (n,)
        groups = []
        for i in np.unique(owner).tolist():
            at = np.flatnonzero(owner == i)
            groups.append((i, at, rows[at] - self._bases[i]))
        return groups


def _digest(manifest: Manifest, name: str) -> str | None:
    info = manifest.files.get(name)
    return None if info is None else str(info["sha256"])
