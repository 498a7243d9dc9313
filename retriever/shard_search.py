"""One shard of a version (the whole of an unsharded one) opened for search, and dense search
over it and over several of them (retriever/version.py).

A shard whose index is compressed (PQ) and which keeps its exact vectors (retriever/exact.py)
is searched for `rerank_candidates` candidates that are then re-ranked by their exact inner
product: recall close to exact search at PQ's memory. Its FAISS index is then loaded without a
direct map, since nothing reconstructs from it: hybrid search scores candidates from the exact
vectors too. Without the file, search and scores are the index's own (approximate for PQ).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from ragserve.errors import ArtifactError
from retriever import faiss_index
from retriever.artifact import INDEX_FILE
from retriever.docstore import Docstore
from retriever.exact import EXACT_FILE, ExactVectors, best
from retriever.gpu import GpuOptions
from retriever.sparse import TermCounts


@dataclass(frozen=True, slots=True)
class Shard:
    """One set of index files of a version (the whole of an unsharded one): FAISS ids are
    `id_base` + row (IVF shards sharing a quantizer have disjoint ids), rows are docstore rows and
    rows of `exact`, the exact vectors kept beside a compressed index (None: none kept)."""

    number: int
    index: faiss.Index
    docstore: Docstore
    counts: TermCounts
    id_base: int
    exact: ExactVectors | None = None

    @property
    def rows(self) -> int:
        return int(self.counts.tf.shape[0])


def open_exact(where: Path, kept: bool, dimension: int, rows: int) -> ExactVectors | None:
    """The exact vectors in `where` when the manifest lists them (`kept`), checked to hold one
    vector per docstore row, memory-mapped."""
    if not kept:
        return None
    exact = ExactVectors.open(where / EXACT_FILE, dimension)
    if exact.rows != rows:
        raise ArtifactError(f"{where / EXACT_FILE} holds {exact.rows} vectors for {rows} chunks")
    return exact


def load_index(where: Path, ef_search: int, nprobe: int, gpu: GpuOptions, exact: bool) -> faiss.Index:
    """The FAISS index in `where`; with a direct map only where vectors are reconstructed from it
    (no exact vectors kept)."""
    return faiss_index.load(where / INDEX_FILE, ef_search, nprobe, options=gpu, direct_map=not exact)


def shard_top(shard: Shard, vectors: np.ndarray, k: int, candidates: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest rows of `shard` to each of (Q, dim) query vectors -> scores (Q, k), rows (Q, k)
    (-1: none); re-ranked exactly from `candidates` (at least k) where exact vectors are kept."""
    if shard.exact is None:
        scores, ids = shard.index.search(vectors, k)  # (Q, k); id -1 where the shard has fewer
        return scores, np.where(ids >= 0, ids - shard.id_base, -1)
    _, ids = shard.index.search(vectors, max(k, candidates))  # (Q, k') approximate
    return shard.exact.rerank(vectors, np.where(ids >= 0, ids - shard.id_base, -1), k)


def merge_top(
    parts: Sequence[tuple[np.ndarray, np.ndarray]], bases: Sequence[int], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k best of every shard's (scores (Q, k), rows (Q, k)), their rows numbered from each
    shard's first row in the space (`bases`) -> scores (Q, k), rows (Q, k)."""
    scores = np.hstack([s for s, _ in parts])  # (Q, shards * k)
    rows = np.hstack([np.where(r >= 0, r + base, -1) for (_, r), base in zip(parts, bases, strict=False)])
    return best(np.where(rows >= 0, scores, -np.inf), rows, k)  # (Q, k) the k best of all shards


def shard_scores(shard: Shard, vector: np.ndarray, rows: np.ndarray) -> np.ndarray | None:
    """Inner products of one (dim,) query vector with `rows` (m,) of `shard` -> (m,): exact from the
    kept vectors, else from the index's stored vectors; None when it cannot give them back."""
    if shard.exact is not None:
        return shard.exact.scores(vector, rows)
    stored = faiss_index.reconstruct(shard.index, rows + shard.id_base)  # (m, dim) or None
    return None if stored is None else np.asarray(stored @ vector, np.float32)
