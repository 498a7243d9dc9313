"""FAISS helpers: factory choice, build (GPU when faiss reports one), load, search parameters."""

import errno
import logging
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger(__name__)

METRIC = "inner_product"  # embeddings are L2-normalised, so this is cosine similarity
ADD_BATCH = 65_536
TRAIN_SAMPLE = 200_000
BLAS_THRESHOLD = 8


def gpu_count() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def default_factory(n_vectors: int, exact_below: int) -> str:
    """Exact search below the threshold, HNSW graph above it (no training pass needed)."""
    return "Flat" if n_vectors < exact_below else "HNSW32"


def is_ivf(index: faiss.Index) -> bool:
    return faiss.try_extract_index_ivf(index) is not None


def train(sample: np.ndarray, factory: str) -> faiss.Index | None:
    """A trained, empty index of `factory` from (n, dim) sample vectors; None if it needs no training."""
    index = faiss.index_factory(sample.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if index.is_trained:
        return None
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


def build(vectors: np.ndarray, factory: str, trained: faiss.Index | None = None, id_base: int = 0) -> faiss.Index:
    """Index (n, dim) float32 vectors; trains on a sample when the index type needs it."""
    n, dim = vectors.shape
    if trained is not None:
        index = faiss.clone_index(trained)
        assert id_base == 0 or is_ivf(index), "only IVF indexes take ids"
        for start in range(0, n, ADD_BATCH):
            batch = np.ascontiguousarray(vectors[start : start + ADD_BATCH], dtype=np.float32)
            ids = np.arange(id_base + start, id_base + start + batch.shape[0], dtype=np.int64)
            index.add_with_ids(batch, ids) if is_ivf(index) else index.add(batch)
        return index
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    work = _to_gpu(index)
    if not work.is_trained:
        sample = vectors[np.random.default_rng(0).permutation(n)[:TRAIN_SAMPLE]]
        work.train(np.ascontiguousarray(sample, dtype=np.float32))
    for start in range(0, n, ADD_BATCH):
        work.add(np.ascontiguousarray(vectors[start : start + ADD_BATCH], dtype=np.float32))
    return faiss.index_gpu_to_cpu(work) if work is not index else index


def _to_gpu(index: faiss.Index) -> faiss.Index:
    if gpu_count() == 0:
        return index
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except RuntimeError as exc:  # some index types have no GPU implementation (e.g. HNSW)
        log.info("index stays on CPU: %s", exc)
        return index


def write(index: faiss.Index, path: Path) -> None:
    """Write `index` to `path`. FAISS reports a failed write (a full disk, an I/O error) as a
    RuntimeError; it is raised as the OSError it is, so callers treat it like any other file's."""
    try:
        faiss.write_index(index, str(path))
    except RuntimeError as exc:
        raise OSError(errno.EIO, f"writing the FAISS index {path} failed: {exc}") from exc


def read_cpu(path: Path) -> faiss.Index:
    return faiss.read_index(str(path))


def stored_vectors(index: faiss.Index, start: int, n: int) -> np.ndarray | None:
    """Vectors start..start+n exactly as they were added, or None when the index keeps them
    compressed or not at all (IVF without a direct map, PQ, SQ)."""
    storage = faiss.downcast_index(index.storage) if hasattr(index, "storage") else index
    if not isinstance(storage, faiss.IndexFlat):
        return None
    vectors: np.ndarray = storage.reconstruct_n(start, n)  # (n, dim)
    return vectors


def reconstruct(index: faiss.Index, rows: np.ndarray) -> np.ndarray | None:
    """The stored vectors of `rows` -> (n, dim) float32, or None when the index cannot give them
    back (IVF without a direct map, or compressed codes)."""
    try:
        vectors: np.ndarray = index.reconstruct_batch(np.ascontiguousarray(rows, dtype=np.int64))
    except RuntimeError:
        return None
    return vectors


def load(path: Path, ef_search: int, nprobe: int) -> faiss.Index:
    # faiss uses BLAS for batched exact search only above this many queries; its default is far
    # higher than the batches ragserve sends, which would leave them on the slow scalar path.
    faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD
    index = faiss.read_index(str(path))
    hnsw = getattr(index, "hnsw", None)
    if hnsw is not None:
        hnsw.efSearch = ef_search
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = nprobe
        _direct_map(ivf)  # so hybrid search can score any candidate (see `reconstruct`)
    return _to_gpu(index)


def _direct_map(ivf: faiss.IndexIVF) -> None:
    """An id -> list position map: an array for ids 0..n-1, a hash table for the disjoint id ranges
    of IVF shards that share one quantizer (retriever/writer.py id_bases)."""
    try:
        ivf.make_direct_map()
    except RuntimeError:
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
