"""Compaction: the serving version + the delta − deletions → a new version, without re-embedding.

The base version's chunks are carried over in row order with their vectors — the exact vectors
kept beside a compressed index (retriever/exact.py), else read back from the FAISS index when it
stores them exactly (Flat, HNSW), otherwise re-embedded from their text (the same vectors: a
chunk's text tokenizes back to exactly its tokens; never the approximate vectors a PQ index would
reconstruct) — except the chunks of documents the delta replaces or that were deleted. The
delta's chunks and vectors follow. The new manifest records the document change counter the delta
had reached, so a delta started on the new version holds only changes after it.

A sharded version is compacted shard by shard: a shard none of whose documents changed is linked
into the new version unchanged (same files, same checksums, nothing re-read), a changed one is
rewritten from its carried rows and its share of the delta (filled from the artifact's shared
quantizer when it has one, with FAISS ids past every other shard's), and the corpus-wide BM25
statistics are merged anew.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
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
from retriever.exact import EXACT_FILE, ExactVectors
from retriever.shards import shard_name, shard_of
from retriever.sparse import TermCounts
from retriever.writer import (
    QUANTIZER_FILE,
    ArtifactWriter,
    Finished,
    Layout,
    ModelInfo,
    ShardedArtifactWriter,
    seal_shards,
)

if TYPE_CHECKING:
    from retriever.encoder import Encoder

log = logging.getLogger(__name__)


def compact_artifact(base: Path, delta: DeltaContents, out: Path, encoder: Encoder, config: BuildConfig) -> Manifest:
    """Write the artifact of `base` with `delta` folded in at `out`. The base's chunking and
    sharding are kept (the delta chunks with them too); an unsharded index's type follows
    `config` and the new size, a sharded one keeps its own."""
    started = time.perf_counter()
    manifest = verify_artifact(base)
    if manifest.retriever_weights_sha256 != encoder.weights_sha256:
        raise ModelMismatchError(f"{base} was built with another retriever than {encoder.name!r}")
    # Carried vectors keep the base's number format, delta vectors have the encoder's.
    same = manifest.embedding_precision == encoder.precision or not delta.chunks
    precision = manifest.embedding_precision if same else "mixed"
    model = ModelInfo(encoder.name, encoder.weights_sha256, encoder.dimension, precision)
    config = replace(config, chunking=ChunkingConfig.of(manifest.chunking), shards=1)
    extra = {"documents_seq": delta.seq}
    clean_stale(out)
    with staged_directory(out) as staging:
        if manifest.shards:
            return _compact_shards(base, manifest, delta, staging, model, encoder, config, extra)
        writer = artifact_writer(staging, model, config)
        assert isinstance(writer, ArtifactWriter), "an unsharded base compacts into one set of files"
        counts = carry(base, delta.hidden, writer, encoder)
        counts["delta_chunks"] = len(delta.chunks)
        if delta.chunks:
            writer.add(delta.chunks, delta.vectors)
        counts["documents"] += len({c.doc_id for c in delta.chunks})
        sealed = writer.seal(counts, started, **extra)
    return sealed


def _compact_shards(
    base: Path,
    manifest: Manifest,
    delta: DeltaContents,
    staging: Path,
    model: ModelInfo,
    encoder: Encoder,
    config: BuildConfig,
    extra: dict[str, int],
) -> Manifest:
    started = time.perf_counter()
    n = manifest.shard_count
    owner = np.array([shard_of(c.doc_id, n) for c in delta.chunks], np.int64)  # (delta chunks,)
    changed = {shard_of(doc_id, n) for doc_id in delta.hidden}
    trained = faiss_index.read_cpu(base / QUANTIZER_FILE) if (base / QUANTIZER_FILE).is_file() else None
    if trained is not None:
        _link(base / QUANTIZER_FILE, staging / QUANTIZER_FILE)
    next_id = max(int(s["id_base"]) + int(s["chunks"]) for s in manifest.shards)
    counts = {"documents": 0, "carried_chunks": 0, "dropped_chunks": 0, "delta_chunks": len(delta.chunks)}
    finished: list[Finished] = []
    bases: list[int] = []
    for i, shard in enumerate(manifest.shards):
        source, target = base / shard["name"], staging / shard_name(i)
        if i not in changed:
            target.mkdir()
            for file in source.iterdir():
                _link(file, target / file.name)
            finished.append(Finished(int(shard["chunks"]), TermCounts.load(target).statistics()))
            bases.append(int(shard["id_base"]))
            counts["carried_chunks"] += int(shard["chunks"])
            continue
        layout = Layout(manifest.index_factory, 1, config.keep_vectors, config.gpu)
        writer = ArtifactWriter(target, model, manifest.chunking, layout)
        shard_counts = carry(source, delta.hidden, writer, encoder)
        mine = np.flatnonzero(owner == i)
        if mine.size:
            writer.add([delta.chunks[j] for j in mine.tolist()], delta.vectors[mine])
        id_base = next_id if trained is not None and faiss_index.is_ivf(trained) else 0
        next_id += writer.rows if id_base else 0
        finished.append(writer.finish(manifest.index_factory, trained, id_base))
        bases.append(id_base)
        for key in ("documents", "carried_chunks", "dropped_chunks"):
            counts[key] += shard_counts[key]
    counts["documents"] += len({c.doc_id for c in delta.chunks})
    return seal_shards(
        staging, model, manifest.chunking, manifest.index_factory, finished, bases, counts, started, **extra
    )


def carry(
    source: Path, hidden: frozenset[str], writer: ArtifactWriter | ShardedArtifactWriter, encoder: Encoder
) -> dict[str, int]:
    """Add the rows of the index files in `source` whose documents are not `hidden`, in row order
    (also for resharding, indexer/reshard.py)."""
    vectors_of = row_vectors(source, encoder)
    counts = {"documents": 0, "carried_chunks": 0, "dropped_chunks": 0}
    last_doc: str | None = None
    for rows in Docstore(source / DOCSTORE_FILE).scan():
        vectors = vectors_of(rows)  # (len(rows), dim)
        keep = [i for i, chunk in enumerate(rows) if chunk.doc_id not in hidden]
        counts["dropped_chunks"] += len(rows) - len(keep)
        if keep:
            writer.add([rows[i] for i in keep], vectors[keep])
        for i in keep:  # a document's chunks are contiguous rows
            counts["documents"] += rows[i].doc_id != last_doc
            last_doc = rows[i].doc_id
        counts["carried_chunks"] += len(keep)
    return counts


def _link(source: Path, target: Path) -> None:
    """`target` is `source`'s file: a hard link where the filesystem allows, else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def row_vectors(source: Path, encoder: Encoder) -> Callable[[list[StoredChunk]], np.ndarray]:
    """How the exact vectors of consecutive docstore rows of the index files in `source` are had:
    from the exact vectors kept beside a compressed index (a memory-mapped read), else the index's
    own where it stores them exactly, else by embedding the rows' text again. Never reconstructed
    from PQ codes: a compaction must not make a version's vectors worse than its build's."""
    if (source / EXACT_FILE).is_file():
        exact = ExactVectors.open(source / EXACT_FILE, encoder.dimension)
        return lambda rows: exact.block(_first(rows), len(rows))
    index = faiss_index.read_cpu(source / INDEX_FILE)
    if faiss_index.is_compressed(index):
        log.info("%s keeps no exact vectors beside its compressed index: embedding its chunks again", source)
    return lambda rows: _base_vectors(index, rows, encoder)


def _first(rows: list[StoredChunk]) -> int:
    """The first of consecutive docstore rows (what `Docstore.scan` gives: vectors are read as a block)."""
    assert [r.row for r in rows] == list(range(rows[0].row, rows[0].row + len(rows))), "rows must be consecutive"
    return rows[0].row


def _base_vectors(index: faiss.Index, rows: list[StoredChunk], encoder: Encoder) -> np.ndarray:
    """(len(rows), dim) vectors of consecutive rows."""
    stored = faiss_index.stored_vectors(index, _first(rows), len(rows))
    if stored is not None:
        return stored
    return encoder.encode_ids([t.ids for t in encoder.tokenize([r.text for r in rows])])
