"""The indexing pipeline: documents -> chunks -> embeddings -> FAISS + docstore -> sealed artifact.

Memory stays bounded by the batch sizes: chunks go to SQLite and embeddings to a flat float32
file in the staging directory as they are produced; the FAISS index is built from that file
(memory-mapped) once the corpus has been read, and the file is deleted before sealing.
"""

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from indexer.artifact import DOCSTORE_FILE, INDEX_FILE, Manifest, clean_stale_staging, seal, staging_directory
from indexer.chunking import CHUNKER_VERSION, Chunk, ChunkingConfig, chunk_document
from indexer.docstore import DocstoreWriter
from indexer.sources import Document, batched
from retriever import faiss_index
from retriever.encoder import Encoder
from retriever.errors import InvalidInputError

EMBEDDINGS_FILE = "embeddings.f32"


@dataclass(frozen=True, slots=True)
class BuildConfig:
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    index_factory: str | None = None  # None: chosen by size (see faiss_index.default_factory)
    exact_below: int = 50_000
    doc_batch: int = 256  # documents tokenized together
    embed_window: int = 2_048  # chunks sorted by length and embedded together
    embed_batch: int = 64


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
        docstore = DocstoreWriter(staging / DOCSTORE_FILE)
        counts = {"documents": 0, "empty_documents": 0, "chunks": 0, "tokens": 0}
        bar = tqdm(desc="indexing", unit=" chunks", disable=not progress)
        pending: list[Chunk] = []
        with (staging / EMBEDDINGS_FILE).open("wb") as vectors_out:

            def flush() -> None:
                vectors = encoder.encode_ids([c.token_ids for c in pending], config.embed_batch)
                vectors_out.write(vectors.tobytes())
                docstore.add(pending)
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
        docstore.close()
        counts["chunks"] = docstore.rows
        if counts["chunks"] == 0:
            raise InvalidInputError("the corpus has no text to index")

        factory = config.index_factory or faiss_index.default_factory(counts["chunks"], config.exact_below)
        vectors = np.memmap(staging / EMBEDDINGS_FILE, dtype=np.float32, mode="r").reshape(-1, encoder.dimension)
        assert vectors.shape[0] == counts["chunks"], "embeddings and docstore disagree"
        faiss_index.write(faiss_index.build(vectors, factory), staging / INDEX_FILE)
        del vectors
        (staging / EMBEDDINGS_FILE).unlink()

        counts["build_ms"] = round((time.perf_counter() - started) * 1000)
        return seal(
            staging,
            out,
            {
                "retriever_model": encoder.name,
                "retriever_weights_sha256": encoder.weights_sha256,
                "dimension": encoder.dimension,
                "metric": faiss_index.METRIC,
                "index_factory": factory,
                "chunking": {
                    "chunk_tokens": config.chunking.chunk_tokens,
                    "overlap_tokens": config.chunking.overlap_tokens,
                    "version": CHUNKER_VERSION,
                },
                "counts": counts,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
