"""The indexing pipeline: documents -> chunks -> embeddings -> a sealed artifact (retriever/writer.py).

Memory stays bounded by the batch sizes: documents are read and tokenized in batches, chunks are
embedded in length-sorted windows and handed to the writer, which spools vectors to disk.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from indexer.chunking import Chunk, ChunkingConfig, chunk_document
from indexer.sources import batched
from ragserve.atomic import clean_stale, staged_directory
from ragserve.errors import ArtifactError
from ragserve.types import Document
from retriever.artifact import Manifest
from retriever.gpu import CPU_ONLY, GpuOptions
from retriever.writer import ArtifactWriter, Finished, Layout, ModelInfo, ShardedArtifactWriter

if TYPE_CHECKING:
    from retriever.encoder import Encoder


@dataclass(frozen=True, slots=True)
class BuildConfig:
    """What shapes an index (from the settings: service/application/loading.py `build_config`)
    and how the work is batched."""

    chunking: ChunkingConfig
    index_factory: str | None  # None: chosen by size (see retriever/faiss_index.py default_factory)
    exact_below: int  # below this many chunks the default index is exact (Flat), above it HNSW
    keep_vectors: bool  # keep the exact vectors beside a compressed index, to re-rank with (retriever/exact.py)
    doc_batch: int = 256  # documents tokenized together
    embed_window: int = 2_048  # chunks sorted by length and embedded together
    embed_batch: int | None = None  # None: the encoder's own (see retriever/encoder.py)
    shards: int = 1  # > 1: a sharded artifact (retriever/writer.py ShardedArtifactWriter)
    gpu: GpuOptions = CPU_ONLY  # where FAISS trains and fills the index (retriever/gpu.py)

    @property
    def layout(self) -> Layout:
        return Layout(self.index_factory, self.exact_below, self.keep_vectors, self.gpu)


def artifact_writer(staging: Path, model: ModelInfo, config: BuildConfig) -> ArtifactWriter | ShardedArtifactWriter:
    """The writer of an artifact as `config` shapes it: sharded ones fill their shards in parallel
    threads (FAISS releases the GIL while it adds vectors)."""
    chunking = config.chunking.manifest()
    if config.shards == 1:
        return ArtifactWriter(staging, model, chunking, config.layout)
    return ShardedArtifactWriter(staging, model, chunking, config.layout, config.shards, run=_threads)


def _threads(fill: Callable[[int], Finished], shards: Sequence[int]) -> list[Finished]:
    with ThreadPoolExecutor(max_workers=min(len(shards), os.cpu_count() or 1)) as pool:
        return list(pool.map(fill, shards))


def build_artifact(
    documents: Iterable[Document],
    out: Path,
    encoder: Encoder,
    config: BuildConfig,
    progress: bool = True,
) -> Manifest:
    """Build an index artifact at `out` (which must not exist yet) and return its manifest."""
    config.chunking.validate(encoder.max_tokens)
    clean_stale(out)
    if out.exists():
        raise ArtifactError(f"{out} already exists: artifacts are immutable, choose a new --out")
    started = time.perf_counter()
    with staged_directory(out) as staging:
        writer = artifact_writer(staging, ModelInfo.of(encoder), config)
        counts = {"documents": 0, "empty_documents": 0, "tokens": 0}
        bar = tqdm(desc="indexing", unit=" chunks", disable=not progress)
        pending: list[Chunk] = []

        def flush() -> None:
            writer.add(pending, encoder.encode_ids([c.token_ids for c in pending], config.embed_batch))
            bar.update(len(pending))
            pending.clear()

        for docs in batched(documents, config.doc_batch):
            tokenized = encoder.tokenize([d.text for d in docs])
            for doc, tokens in zip(docs, tokenized, strict=True):
                chunks = chunk_document(doc, tokens, config.chunking)
                counts["documents"] += 1
                counts["empty_documents"] += not chunks
                counts["tokens"] += sum(len(c.token_ids) for c in chunks)
                pending.extend(chunks)
            if len(pending) >= config.embed_window:
                flush()
        if pending:
            flush()
        bar.close()
        manifest = writer.seal(counts, started)
    return manifest
