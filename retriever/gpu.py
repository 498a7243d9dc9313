"""FAISS on GPUs, guarded: everything here is a no-op on CPU-only faiss (the `faiss-cpu` wheel,
or faiss-gpu on a machine without a device), so callers never branch on the hardware.

Indexes go to every visible GPU, replicated (each GPU holds the whole index and takes a share of
the queries) or sharded (`GpuOptions.shard`: each GPU holds a slice, for an index bigger than one
GPU's memory), and always come back to the CPU before they are written: artifacts must open on any
machine. Index types FAISS has no GPU implementation of (HNSW, fast-scan PQ) stay on the CPU with a
log line; so does anything the GPU cloner refuses (e.g. PQ shapes without a GPU kernel).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import faiss

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GpuOptions:
    """Where FAISS work runs when faiss reports GPUs (the settings faiss_gpu_build, faiss_gpu_search,
    faiss_gpu_shard). The defaults are CPU only, so a caller that passes nothing gets what any
    machine can do."""

    build: bool = False  # train and fill indexes on the GPUs
    search: bool = False  # search them there (the index is copied into GPU memory at load)
    shard: bool = False  # split an index across the GPUs instead of a full copy on each


CPU_ONLY = GpuOptions()


def gpu_count() -> int:
    """The GPUs faiss can use: 0 with faiss-cpu, or with faiss-gpu and no device."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def has_gpu_implementation(index: faiss.Index) -> bool:
    """Whether the GPU cloner can copy `index` (under any pre-transform such as OPQ): flat, IVF-flat,
    IVF-SQ and IVF-PQ can; HNSW and the fast-scan PQ variants cannot."""
    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    if isinstance(index, faiss.IndexIVFPQFastScan | faiss.IndexPQFastScan):
        return False
    return isinstance(index, faiss.IndexFlat | faiss.IndexIVFFlat | faiss.IndexIVFScalarQuantizer | faiss.IndexIVFPQ)


def for_build(index: faiss.Index, options: GpuOptions) -> faiss.Index:
    """`index` on the GPUs for adding vectors when the options ask for it, else `index` itself."""
    return _to_gpus(index, options.shard, gpus=-1) if options.build else index


def for_training(index: faiss.Index, options: GpuOptions) -> faiss.Index:
    """`index` on one GPU for training: k-means gives the same centroids whichever GPU runs it, and
    shards trained apart could disagree on them, which would make their lists unmergeable."""
    return _to_gpus(index, shard=False, gpus=1) if options.build else index


def for_search(index: faiss.Index, options: GpuOptions) -> faiss.Index:
    """`index` on the GPUs for queries when the options ask for it, else `index` itself."""
    return _to_gpus(index, options.shard, gpus=-1) if options.search else index


def _to_gpus(index: faiss.Index, shard: bool, gpus: int) -> faiss.Index:
    """`index` cloned onto `gpus` GPUs (-1: all), or `index` itself where that cannot be done."""
    if gpu_count() == 0:
        return index
    if not has_gpu_implementation(index):
        log.info("FAISS index %s stays on the CPU: faiss has no GPU implementation of it", type(index).__name__)
        return index
    options = faiss.GpuMultipleClonerOptions()
    options.shard = shard
    try:
        return faiss.index_cpu_to_all_gpus(index, co=options, ngpu=gpus)
    except RuntimeError as exc:  # e.g. a PQ sub-vector size without a GPU kernel
        log.info("FAISS index %s stays on the CPU: %s", type(index).__name__, str(exc).splitlines()[0])
        return index


def on_gpu(index: faiss.Index) -> bool:
    """Whether `index` (or what a pre-transform wraps) lives on GPUs."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        return on_gpu(index.index)
    return type(index).__name__.startswith("Gpu") or isinstance(index, faiss.IndexReplicas | faiss.IndexShards)


def to_cpu(index: faiss.Index) -> faiss.Index:
    """A CPU copy of a GPU index (shards merged into one), or a CPU index itself."""
    return faiss.index_gpu_to_cpu(index) if on_gpu(index) else index
