"""The indexing pipeline: documents -> chunks -> embeddings -> FAISS + BM25 + docstore -> sealed artifact.

Memory stays bounded by the batch sizes: chunks go to SQLite and embeddings to a flat float32
file in the staging directory as they are produced; the FAISS index is built from that file
(memory-mapped) once the corpus has been read, and the file is deleted before sealing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
from tqdm import tqdm

from indexer.artifact import DOCSTORE_FILE, INDEX_FILE, Manifest, clean_stale_staging, seal, staging_directory
from indexer.chunking import CHUNKER_VERSION, Chunk, ChunkingConfig, chunk_document
from indexer.docstore import ChunkRecord, DocstoreWriter
from indexer.sources import Document, batched
from retriever import faiss_index
from retriever.errors import InvalidInputError
from retriever.sparse import ANALYZER_VERSION, SparseIndexWriter, indexed_text

if TYPE_CHECKING:
    from retriever.encoder import Encoder

EMBEDDINGS_FILE = "embeddings.f32"


@dataclass(frozen=True, slots=True)
class BuildConfig:
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    index_factory: str | None = None  # None: chosen by size (see faiss_index.default_factory)
    exact_below: int = 50_000
    doc_batch: int = 256  # documents tokenized together
    embed_window: int = 2_048  # chunks sorted by length and embedded together
    embed_batch: int | None = None  # None: the encoder's own (see retriever/encoder.py)


class ArtifactWriter:
    """Chunks and their vectors in (in FAISS id order), a sealed artifact out. Used by a build
    from documents and by a compaction that carries chunks and vectors over."""

    def __init__(self, staging: Path, encoder: Encoder, config: BuildConfig) -> None:
        self.staging = staging
        self.encoder = encoder
        self.config = config
        self.docstore = DocstoreWriter(staging / DOCSTORE_FILE)
        self.sparse = SparseIndexWriter()
        self._vectors: BinaryIO = (staging / EMBEDDINGS_FILE).open("wb")

    def add(self, chunks: Sequence[ChunkRecord], vectors: np.ndarray) -> None:
        assert vectors.shape == (len(chunks), self.encoder.dimension), "one vector per chunk"
        self._vectors.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
        self.docstore.add(chunks)
        self.sparse.add(indexed_text(c.title, c.text) for c in chunks)

    def seal(self, out: Path, counts: dict[str, int], started: float, **extra: Any) -> Manifest:
        """Build the FAISS index from the spooled vectors and seal the artifact at `out`;
        `started` (a perf_counter reading) dates the whole build for the manifest."""
        self._vectors.close()
        self.docstore.close()
        counts = {**counts, "chunks": self.docstore.rows}
        if counts["chunks"] == 0:
            raise InvalidInputError("the corpus has no text to index")
        factory = self.config.index_factory or faiss_index.default_factory(counts["chunks"], self.config.exact_below)
        spooled = self.staging / EMBEDDINGS_FILE
        vectors = np.memmap(spooled, dtype=np.float32, mode="r").reshape(-1, self.encoder.dimension)
        assert vectors.shape[0] == counts["chunks"], "embeddings and docstore disagree"
        faiss_index.write(faiss_index.build(vectors, factory), self.staging / INDEX_FILE)
        del vectors
        spooled.unlink()
        self.sparse.write(self.staging)
        counts["build_ms"] = round((time.perf_counter() - started) * 1000)
        return seal(
            self.staging,
            out,
            {
                "retriever_model": self.encoder.name,
                "retriever_weights_sha256": self.encoder.weights_sha256,
                "dimension": self.encoder.dimension,
                "embedding_precision": str(self.encoder.precision),
                "metric": faiss_index.METRIC,
                "index_factory": factory,
                "chunking": {
                    "chunk_tokens": self.config.chunking.chunk_tokens,
                    "overlap_tokens": self.config.chunking.overlap_tokens,
                    "version": CHUNKER_VERSION,
                },
                "counts": counts,
                "sparse_analyzer": ANALYZER_VERSION,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **extra,
            },
        )


def build_artifact(
    documents: Iterable[Document],
    out: Path,
    encoder: Encoder,
    config: BuildConfig | None = None,
    progress: bool = True,
) -> Manifest:
    """Build an index artifact at `out` (which must not exist yet) and return its manifest."""
    config = config or BuildConfig()
    config.chunking.validate(encoder.max_tokens)
    clean_stale_staging(out)
    started = time.perf_counter()
    with staging_directory(out) as staging:
        writer = ArtifactWriter(staging, encoder, config)
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
        return writer.seal(out, counts, started)
