"""Compaction: the serving version + the delta − deletions → a new version, without re-embedding.

The base version's chunks are carried over in row order with their vectors — read back from the
FAISS index when it stores them exactly, otherwise re-embedded from their text (the same vectors:
a chunk's text tokenizes back to exactly its tokens) — except the chunks of documents the delta
replaces or that were deleted. The delta's chunks and vectors follow. The new manifest records
the document change counter the delta had reached, so a delta started on the new version holds
only changes after it.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from indexer.build import BuildConfig, artifact_writer
from indexer.chunking import ChunkingConfig
from ragserve.atomic import clean_stale, staged_directory
from ragserve.errors import ModelMismatchError
from retriever import faiss_index
from retriever.artifact import DOCSTORE_FILE, INDEX_FILE, Manifest, verify_artifact
from retriever.delta import DeltaContents
from retriever.docstore import Docstore, StoredChunk

if TYPE_CHECKING:
    from retriever.encoder import Encoder


def compact_artifact(base: Path, delta: DeltaContents, out: Path, encoder: Encoder, config: BuildConfig) -> Manifest:
    """Write the artifact of `base` with `delta` folded in at `out`. The base's chunking is kept
    (the delta chunks with it too); the index type follows `config` and the new size."""
    started = time.perf_counter()
    manifest = verify_artifact(base)
    if manifest.retriever_weights_sha256 != encoder.weights_sha256:
        raise ModelMismatchError(f"{base} was built with another retriever than {encoder.name!r}")
    # Carried vectors keep the base's number format, delta vectors have the encoder's.
    same = manifest.embedding_precision == encoder.precision or not delta.chunks
    precision = manifest.embedding_precision if same else "mixed"
    config = replace(config, chunking=ChunkingConfig.of(manifest.chunking))
    index = faiss_index.read_cpu(base / INDEX_FILE)
    docstore = Docstore(base / DOCSTORE_FILE)
    counts = {"documents": 0, "carried_chunks": 0, "dropped_chunks": 0, "delta_chunks": len(delta.chunks)}
    clean_stale(out)
    with staged_directory(out) as staging:
        writer = artifact_writer(staging, encoder, config)
        last_doc: str | None = None
        for rows in docstore.scan():
            vectors = _base_vectors(index, rows, encoder)
            keep = [i for i, chunk in enumerate(rows) if chunk.doc_id not in delta.hidden]
            counts["dropped_chunks"] += len(rows) - len(keep)
            if keep:
                writer.add([rows[i] for i in keep], vectors[keep])
            for i in keep:  # a document's chunks are contiguous rows
                counts["documents"] += rows[i].doc_id != last_doc
                last_doc = rows[i].doc_id
            counts["carried_chunks"] += len(keep)
        if delta.chunks:
            writer.add(delta.chunks, delta.vectors)
        counts["documents"] += len({c.doc_id for c in delta.chunks})
        sealed = writer.seal(counts, started, documents_seq=delta.seq, embedding_precision=precision)
    return sealed


def _base_vectors(index: faiss.Index, rows: list[StoredChunk], encoder: Encoder) -> np.ndarray:
    """(len(rows), dim) vectors of consecutive rows."""
    assert [r.row for r in rows] == list(range(rows[0].row, rows[0].row + len(rows))), "rows must be consecutive"
    stored = faiss_index.stored_vectors(index, rows[0].row, len(rows))
    if stored is not None:
        return stored
    return encoder.encode_ids([t.ids for t in encoder.tokenize([r.text for r in rows])])
