"""Resharding: an artifact's chunks and vectors written again as N shards (or as one unsharded
index), without re-embedding: vectors are the exact ones kept beside a compressed index, or read
back where the index stores them exactly, re-embedded from their text otherwise (compaction's
rule, indexer/compact.py `row_vectors`). The result keeps exact vectors where the source did. The
documents change counter is kept, so a resharded version follows the same change log."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.compact import carry
from ragserve.atomic import clean_stale, staged_directory
from ragserve.errors import ArtifactError, ModelMismatchError
from retriever.artifact import Manifest, shard_folders, verify_artifact
from retriever.exact import EXACT_FILE
from retriever.gpu import CPU_ONLY, GpuOptions
from retriever.writer import ArtifactWriter, Layout, ModelInfo, ShardedArtifactWriter

if TYPE_CHECKING:
    from retriever.encoder import Encoder


def reshard_artifact(source: Path, out: Path, shards: int, encoder: Encoder, gpu: GpuOptions = CPU_ONLY) -> Manifest:
    """Write `source` with its documents split into `shards` shards (1: unsharded) at `out`; the
    index type, chunking and whether exact vectors are kept are the source's; `gpu`: where FAISS
    trains and fills the new index (setting faiss_gpu_build)."""
    started = time.perf_counter()
    manifest = verify_artifact(source)
    if manifest.retriever_weights_sha256 != encoder.weights_sha256:
        raise ModelMismatchError(f"{source} was built with another retriever than {encoder.name!r}")
    clean_stale(out)
    if out.exists():
        raise ArtifactError(f"{out} already exists: artifacts are immutable, choose a new --out")
    model = ModelInfo(encoder.name, encoder.weights_sha256, encoder.dimension, manifest.embedding_precision)
    kept = any(Path(name).name == EXACT_FILE for name in manifest.files)
    layout = Layout(manifest.index_factory, 1, kept, gpu)
    with staged_directory(out) as staging:
        writer: ArtifactWriter | ShardedArtifactWriter = (
            ArtifactWriter(staging, model, manifest.chunking, layout)
            if shards == 1
            else ShardedArtifactWriter(staging, model, manifest.chunking, layout, shards)
        )
        counts = {"documents": 0, "carried_chunks": 0}
        for folder in shard_folders(manifest):
            carried = carry(source / folder, frozenset(), writer, encoder)
            counts["documents"] += carried["documents"]
            counts["carried_chunks"] += carried["carried_chunks"]
        counts["tokens"] = manifest.counts.get("tokens", 0)
        sealed = writer.seal(counts, started, documents_seq=manifest.documents_seq)
    return sealed
