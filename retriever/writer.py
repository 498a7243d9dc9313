"""The artifact writer: chunks and their vectors in (in FAISS id order), the files of an index
artifact out: docstore, BM25 postings, FAISS index and the manifest (retriever/artifact.py).

Used by a build from documents and by a compaction that carries chunks and vectors over (both in
indexer/). Vectors are spooled to a flat float32 file in the staging directory as they arrive, and
the FAISS index is built from that file, memory-mapped, when the artifact is sealed; the spool is
deleted before the manifest is written.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from ragserve.errors import InvalidInputError
from ragserve.types import ChunkRecord
from retriever import faiss_index
from retriever.artifact import DOCSTORE_FILE, INDEX_FILE, Manifest, write_manifest
from retriever.docstore import DocstoreWriter
from retriever.sparse import ANALYZER_VERSION, SparseIndexWriter, indexed_text

if TYPE_CHECKING:
    from retriever.encoder import Encoder

EMBEDDINGS_FILE = "embeddings.f32"


class ArtifactWriter:
    """Writes one artifact into `staging`; `seal` finishes it (the caller publishes the directory).
    `chunking` is what the manifest records of how the chunks were cut."""

    def __init__(
        self,
        staging: Path,
        encoder: Encoder,
        chunking: Mapping[str, int],
        index_factory: str | None,
        exact_below: int,
    ) -> None:
        self.staging = staging
        self.encoder = encoder
        self.chunking = dict(chunking)
        self.index_factory = index_factory  # None: chosen by size (faiss_index.default_factory)
        self.exact_below = exact_below
        self.docstore = DocstoreWriter(staging / DOCSTORE_FILE)
        self.sparse = SparseIndexWriter()
        self._vectors: BinaryIO = (staging / EMBEDDINGS_FILE).open("wb")

    def add(self, chunks: Sequence[ChunkRecord], vectors: np.ndarray) -> None:
        assert vectors.shape == (len(chunks), self.encoder.dimension), "one vector per chunk"
        self._vectors.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
        self.docstore.add(chunks)
        self.sparse.add(indexed_text(c.title, c.text) for c in chunks)

    def seal(self, counts: dict[str, int], started: float, **extra: Any) -> Manifest:
        """Build the FAISS index from the spooled vectors, write the BM25 files and the manifest;
        `started` (a perf_counter reading) dates the whole build for the manifest."""
        self._vectors.close()
        self.docstore.close()
        counts = {**counts, "chunks": self.docstore.rows}
        if counts["chunks"] == 0:
            raise InvalidInputError("the corpus has no text to index")
        factory = self.index_factory or faiss_index.default_factory(counts["chunks"], self.exact_below)
        spooled = self.staging / EMBEDDINGS_FILE
        vectors = np.memmap(spooled, dtype=np.float32, mode="r").reshape(-1, self.encoder.dimension)
        assert vectors.shape[0] == counts["chunks"], "embeddings and docstore disagree"
        faiss_index.write(faiss_index.build(vectors, factory), self.staging / INDEX_FILE)
        del vectors
        spooled.unlink()
        self.sparse.write(self.staging)
        counts["build_ms"] = round((time.perf_counter() - started) * 1000)
        return write_manifest(
            self.staging,
            {
                "retriever_model": self.encoder.name,
                "retriever_weights_sha256": self.encoder.weights_sha256,
                "dimension": self.encoder.dimension,
                "embedding_precision": str(self.encoder.precision),
                "metric": faiss_index.METRIC,
                "index_factory": factory,
                "chunking": self.chunking,
                "counts": counts,
                "sparse_analyzer": ANALYZER_VERSION,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **extra,
            },
        )
