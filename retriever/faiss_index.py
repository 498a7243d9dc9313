"""FAISS helpers: factory choice and validation, training, build, on-disk merge of IVF shards, load.

Every index uses the inner-product metric over unit vectors. Index types that need training (IVF,
PQ, OPQ) are trained once on a sample (`train`); a trained, empty index can then be filled many
times (`build(..., trained=...)`), e.g. once per shard of a corpus too big for one machine, with
disjoint ids (`id_base`), and the shards' inverted lists merged into one index whose lists stay on
disk (`merge_ondisk`): FAISS's recipe for indexes that do not fit in RAM. Compressed indexes (PQ)
score candidates approximately; exact scores come from the vectors kept beside them
(retriever/exact.py). GPU use is optional and guarded (retriever/gpu.py).
"""

import errno
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np

from ragserve.errors import ArtifactError, InvalidInputError
from retriever import gpu
from retriever.gpu import CPU_ONLY, GpuOptions

log = logging.getLogger(__name__)

METRIC = "inner_product"  # embeddings are L2-normalised, so this is cosine similarity
ADD_BATCH = 65_536
TRAIN_SAMPLE = 200_000
BLAS_THRESHOLD = 8
POINTS_PER_CENTROID = 39  # below this many training vectors per k-means centroid FAISS warns of poor clusters
# Read-only (artifacts are immutable), and the inverted lists of an on-disk index are looked up
# beside the index file, whatever the working directory.
READ_FLAGS = faiss.IO_FLAG_READ_ONLY | faiss.IO_FLAG_ONDISK_SAME_DIR
FAISS_WHERE = re.compile(r"^Error in .*? at \S+:\d+: (Error: )?")  # the C++ function and line of a FAISS error


def default_factory(n_vectors: int, exact_below: int) -> str:
    """Exact search below the threshold, HNSW graph above it (no training pass needed)."""
    return "Flat" if n_vectors < exact_below else "HNSW32"


# --- factories ------------------------------------------------------------------------------------


def new_index(factory: str, dimension: int) -> faiss.Index:
    """An empty inner-product index of `factory` for `dimension`-dim vectors; a string FAISS cannot
    parse, whose shapes do not fit the dimension, or that cannot rank by inner product is the
    user's input error (RAGSERVE_INDEX_FACTORY, --index-factory), said as such."""
    try:
        index = faiss.index_factory(dimension, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise InvalidInputError(_factory_error(factory, dimension, str(exc))) from exc
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise InvalidInputError(f"index factory {factory!r}: this index type cannot rank by inner product")
    if isinstance(faiss.downcast_index(index), faiss.IndexIDMap | faiss.IndexIDMap2):
        raise InvalidInputError(f"index factory {factory!r}: drop the IDMap, ragserve assigns the ids")
    _no_polysemous(index)
    return index


def validate_factory(factory: str, dimension: int) -> None:
    """Raise InvalidInputError unless `factory` makes an index of `dimension`-dim vectors (cheap:
    builds an empty one), so a build can refuse a bad setting before it embeds anything."""
    new_index(factory, dimension)


def _factory_error(factory: str, dimension: int, faiss_message: str) -> str:
    reason = FAISS_WHERE.sub("", faiss_message.splitlines()[0])
    message = f"index factory {factory!r} does not make an index of {dimension}-dim vectors: {reason}"
    if "subquantizers" in faiss_message:
        divisors = [m for m in range(4, dimension // 2 + 1) if dimension % m == 0]
        message += f" (PQ m must divide the dimension {dimension}: one of {', '.join(map(str, divisors))})"
    return message


def _no_polysemous(index: faiss.Index) -> None:
    """Switch off polysemous training of IVF-PQ: it only serves Hamming-filtered search, which
    ragserve does not use, and it costs a second pass over the PQ codebooks at training time."""
    ivf = faiss.try_extract_index_ivf(index)
    core = faiss.downcast_index(ivf) if ivf is not None else None
    if isinstance(core, faiss.IndexIVFPQ):
        core.do_polysemous_training = False  # type: ignore[attr-defined]  # missing from faiss's stubs


def min_training_vectors(index: faiss.Index) -> int:
    """Fewest vectors k-means can train `index` on: one per IVF list, one per PQ/OPQ code word."""
    needed = 1
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        needed = max(needed, int(ivf.nlist))
    core = _core(ivf if ivf is not None else index)
    pq = getattr(core, "pq", None)
    if pq is not None:
        needed = max(needed, int(pq.ksub))
    if isinstance(faiss.downcast_index(index), faiss.IndexPreTransform):
        needed = max(needed, 256)  # OPQ trains a PQ of 256 code words per sub-vector
    return needed


def is_ivf(index: faiss.Index) -> bool:
    """Whether `index` has inverted lists (under any pre-transform), so its ids can be chosen."""
    return faiss.try_extract_index_ivf(index) is not None


def is_compressed(index: faiss.Index) -> bool:
    """Whether a CPU index keeps vectors other than exactly as added (PQ/SQ codes, or after a
    transform such as OPQ's rotation), so its scores are approximate and exact re-ranking helps."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexRefine):
        return is_compressed(index.refine_index)
    if isinstance(index, faiss.IndexPreTransform):
        return True
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return not isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFlat)
    storage = faiss.downcast_index(index.storage) if hasattr(index, "storage") else index
    return not isinstance(storage, faiss.IndexFlat)


def _core(index: faiss.Index) -> faiss.Index:
    """The index under any pre-transforms (OPQ, PCA)."""
    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return index


# --- training and building ------------------------------------------------------------------------


def train(sample: np.ndarray, factory: str, options: GpuOptions = CPU_ONLY) -> faiss.Index | None:
    """A trained, empty index of `factory`, trained on `sample` (n, dim); None when the type needs
    no training (Flat, HNSW). Trained on one GPU when the options and the machine allow."""
    n, dim = sample.shape
    index = new_index(factory, dim)
    if index.is_trained:
        return None
    _check_enough(index, factory, n)
    work = gpu.for_training(index, options)
    try:
        work.train(np.ascontiguousarray(sample, dtype=np.float32))
    except RuntimeError as exc:
        raise InvalidInputError(f"index factory {factory!r} could not be trained on {n} vectors: {exc}") from exc
    return gpu.to_cpu(work)


def _check_enough(index: faiss.Index, factory: str, n: int) -> None:
    """Refuse a corpus too small to train `index` (FAISS would fail deep inside k-means), and warn
    where it is big enough only for poor clusters."""
    needed = min_training_vectors(index)
    if n < needed:
        raise InvalidInputError(
            f"index factory {factory!r} needs at least {needed} vectors to train (one per IVF list or PQ "
            f"code word), the corpus has {n}: use fewer lists (e.g. IVF{max(1, n // POINTS_PER_CENTROID)}), "
            "or leave index_factory unset to choose by corpus size"
        )
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and n < POINTS_PER_CENTROID * ivf.nlist:
        want = POINTS_PER_CENTROID * ivf.nlist
        log.warning("%s: %d training vectors for %d lists makes poor clusters (want %d)", factory, n, ivf.nlist, want)


def training_sample(vectors: np.ndarray, size: int = TRAIN_SAMPLE) -> np.ndarray:
    """A seeded sample of up to `size` rows of `vectors` (n, dim), read in row order (cheap on a
    memory-mapped spool) -> (m, dim) float32."""
    n = vectors.shape[0]
    rows = np.sort(np.random.default_rng(0).permutation(n)[:size])
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


def build(
    vectors: np.ndarray,
    factory: str,
    trained: faiss.Index | None = None,
    id_base: int = 0,
    options: GpuOptions = CPU_ONLY,
) -> faiss.Index:
    """Index (n, dim) float32 vectors -> a CPU index. With `trained` (from `train`), a copy of it is
    filled without training; otherwise it is trained here on a sample when the type needs it. IVF
    indexes get ids `id_base + i` (shards over one trained index get disjoint ids and can be
    merged); other types number from 0."""
    n, dim = vectors.shape
    if trained is not None:
        index = faiss.clone_index(trained)
    else:
        index = train(training_sample(vectors), factory, options) or new_index(factory, dim)
    assert id_base == 0 or is_ivf(index), "only IVF indexes take ids: other types number from 0"
    # Flat and HNSW adds compute nothing a GPU speeds up (HNSW has no GPU build at all).
    work = gpu.for_build(index, options) if is_ivf(index) else index
    for start in range(0, n, ADD_BATCH):
        batch = np.ascontiguousarray(vectors[start : start + ADD_BATCH], dtype=np.float32)  # (b, dim)
        if id_base:
            work.add_with_ids(batch, np.arange(id_base + start, id_base + start + batch.shape[0], dtype=np.int64))
        else:
            work.add(batch)  # ids ntotal + i, i.e. the row number
    return gpu.to_cpu(work)


# --- files ----------------------------------------------------------------------------------------


def write(index: faiss.Index, path: Path) -> None:
    """Write `index` to `path` (a GPU index as its CPU copy: artifacts open on any machine). FAISS
    reports a failed write (a full disk, an I/O error) as a RuntimeError; it is raised as the
    OSError it is, so callers treat it like any other file's."""
    try:
        faiss.write_index(gpu.to_cpu(index), str(path))
    except RuntimeError as exc:
        raise OSError(errno.EIO, f"writing the FAISS index {path} failed: {exc}") from exc


def read_cpu(path: Path) -> faiss.Index:
    return faiss.read_index(str(path), READ_FLAGS)


def merge_ondisk(trained: faiss.Index, shard_files: Sequence[Path], index_out: Path, data_out: Path) -> None:
    """Write one IVF index of every shard's vectors: `index_out` holds the quantizer and the list
    directory, `data_out` (same folder: `load` finds it there) the inverted lists, which stay on
    disk when it is loaded. The shards (index files filled from `trained` with disjoint ids) are
    memory-mapped, not read, so neither they nor the result need fit in RAM."""
    assert index_out.parent.resolve() == data_out.parent.resolve(), "the lists must sit beside the index file"
    assert is_ivf(trained) and trained.ntotal == 0, "merge into a trained, empty IVF index"
    merged = faiss.clone_index(trained)
    ivf = faiss.extract_index_ivf(merged)
    shards = [faiss.read_index(str(f), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY) for f in shard_files]
    sources = faiss.InvertedListsPtrVector()  # type: ignore[attr-defined]  # missing from faiss's stubs
    for file, shard in zip(shard_files, shards, strict=True):
        _check_same_quantizer(ivf, faiss.extract_index_ivf(shard), file)
        sources.push_back(faiss.extract_index_ivf(shard).invlists)  # `shards` keeps them alive
    if sum(shard.ntotal for shard in shards) == 0:
        raise InvalidInputError("no vectors to merge: every shard is empty")
    lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(data_out))
    total = lists.merge_from_multiple(sources.data(), sources.size(), False)  # ids kept as the shards have them
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # type: ignore[attr-defined]  # owned by `ivf` now
    ivf.ntotal = merged.ntotal = total
    write(merged, index_out)


def _check_same_quantizer(ivf: faiss.IndexIVF, shard: faiss.IndexIVF, file: Path) -> None:
    """Lists can only be merged when they partition space the same way."""
    same = shard.nlist == ivf.nlist and shard.code_size == ivf.code_size
    if same:
        mine, theirs = ivf.quantizer.reconstruct_n(0, ivf.nlist), shard.quantizer.reconstruct_n(0, shard.nlist)
        same = bool(np.array_equal(mine, theirs))  # (nlist, dim) centroids each
    if not same:
        raise ArtifactError(f"{file} was not filled from this trained index: its inverted lists cannot be merged")


def load(
    path: Path, ef_search: int, nprobe: int, options: GpuOptions = CPU_ONLY, direct_map: bool = True
) -> faiss.Index:
    """An index for search, on the GPUs when the options say and the machine has them.
    `direct_map`: let `reconstruct` give back any IVF vector (costs 8 bytes per vector and a pass
    over every list's ids, on-disk ones included); pass False when exact vectors are kept beside
    the index (retriever/exact.py) and scores come from there."""
    # faiss uses BLAS for batched exact search only above this many queries; its default is far
    # higher than the batches ragserve sends, which would leave them on the slow scalar path.
    faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD
    index = read_cpu(path)
    hnsw = getattr(_core(index), "hnsw", None)
    if hnsw is not None:
        hnsw.efSearch = ef_search
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = nprobe
        if direct_map:
            _direct_map(ivf)
    return gpu.for_search(index, options)


def _direct_map(ivf: faiss.IndexIVF) -> None:
    """Let `reconstruct` find any vector of `ivf` by id (hybrid search scores any candidate): an
    array when the ids are 0..n-1, a hash table for a shard's ids that start at its id base."""
    try:
        ivf.make_direct_map()
    except RuntimeError:  # "direct map supported only for sequential ids"
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]  # missing from the stubs


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
    back (IVF without a direct map, an index on GPUs). Approximate for a compressed index."""
    try:
        vectors: np.ndarray = index.reconstruct_batch(np.ascontiguousarray(rows, dtype=np.int64))
    except RuntimeError:
        return None
    return vectors
