"""Merging: a sharded artifact whose shards are IVF lists over one shared quantizer written as one
unsharded artifact whose inverted lists stay on disk (retriever/faiss_index.py `merge_ondisk`):
an index bigger than RAM searched by one process, the shards' lists read page by page.

Nothing is embedded or trained again. The shards are taken in the order of their first FAISS id
(`id_base`), and their docstores, BM25 term counts and exact vectors (when every shard keeps them,
retriever/exact.py) are concatenated in that order, so FAISS id i of the merged index is row i of
its docstore. A shard whose ids do not start where the previous shard's end (a compaction gave a
changed shard ids past all others) has its lists moved to the right ids first: the codes are
relative to the shared centroids, so they move unchanged, compressed or not. The documents change
counter is kept, so the merged version follows the same change log.

Searched with the same nprobe, the merged index finds what the shards found: the same lists are
probed. With exact re-ranking (PQ) the shards each re-rank `rerank_candidates`, the merged index
that many in all, so the two agree where the candidates cover the probed lists, and the merged one
may otherwise miss a neighbour the shards' larger pool re-ranked in (raise rerank_candidates).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import scipy.sparse as sp

from ragserve.atomic import clean_stale, staged_directory
from ragserve.errors import ArtifactError, InvalidInputError
from retriever import faiss_index
from retriever.artifact import DOCSTORE_FILE, INDEX_FILE, Manifest, verify_artifact
from retriever.docstore import Docstore, DocstoreWriter
from retriever.exact import EXACT_FILE
from retriever.sparse import ANALYZER_VERSION, SparseIndexWriter, TermCounts, indexed_text
from retriever.writer import QUANTIZER_FILE, Finished, ModelInfo, seal_single

IVFDATA_FILE = "index.ivfdata"  # the inverted lists of an on-disk index, beside INDEX_FILE
COPY_BLOCK = 16 << 20  # bytes of exact vectors copied at once


def merge_artifact(source: Path, out: Path) -> Manifest:
    """Write the IVF shards of `source` as one unsharded artifact at `out` (which must not exist)."""
    started = time.perf_counter()
    manifest = verify_artifact(source)
    trained = _shared_quantizer(source, manifest)
    clean_stale(out)
    if out.exists():
        raise ArtifactError(f"{out} already exists: artifacts are immutable, choose a new --out")
    shards = sorted(manifest.shards, key=lambda s: int(s["id_base"]))  # FAISS id order
    folders = [source / str(s["name"]) for s in shards]
    exact = _kept_exact(source, manifest, shards)
    with staged_directory(out) as staging:
        _merge_lists(trained, folders, [int(s["chunks"]) for s in shards], [int(s["id_base"]) for s in shards], staging)
        finished = _concatenate(folders, staging, manifest.sparse_analyzer == ANALYZER_VERSION)
        if exact:
            _concatenate_exact(folders, staging / EXACT_FILE)
        model = ModelInfo(
            manifest.retriever_model,
            manifest.retriever_weights_sha256,
            manifest.dimension,
            manifest.embedding_precision,
        )
        counts = {k: v for k, v in manifest.counts.items() if k not in ("chunks", "build_ms")}
        extra: dict[str, Any] = {"documents_seq": manifest.documents_seq}
        sealed = seal_single(
            staging, model, manifest.chunking, manifest.index_factory, finished, counts, started, **extra
        )
    return sealed


def _shared_quantizer(source: Path, manifest: Manifest) -> faiss.Index:
    """The trained, empty IVF index the shards of `source` were filled from; an unsharded source, or
    shards of any other index type (whose vectors are numbered per shard and cannot be merged
    list by list), are refused."""
    if not manifest.shards:
        raise InvalidInputError(f"{source} is not sharded: there is nothing to merge")
    refusal = (
        f"{source}: its shards are {manifest.index_factory!r}, not IVF lists over one shared quantizer, so "
        "they cannot be merged; `ragserve index reshard --shards 1` writes any index type as one index"
    )
    if not (source / QUANTIZER_FILE).is_file():
        raise InvalidInputError(refusal)
    trained = faiss_index.read_cpu(source / QUANTIZER_FILE)
    if not faiss_index.is_ivf(trained):
        raise InvalidInputError(refusal)
    return trained


def _kept_exact(source: Path, manifest: Manifest, shards: Sequence[dict[str, Any]]) -> bool:
    """Whether every shard keeps its exact vectors (then the merged artifact does); a mix is refused,
    as merging would silently drop the exact re-ranking of the shards that have them."""
    kept = [f"{s['name']}/{EXACT_FILE}" in manifest.files for s in shards]
    if any(kept) and not all(kept):
        raise InvalidInputError(
            f"{source}: some shards keep exact vectors and others do not; reshard it first "
            "(`ragserve index reshard`, which embeds the missing ones again)"
        )
    return all(kept)


def _merge_lists(
    trained: faiss.Index, folders: Sequence[Path], rows: Sequence[int], id_bases: Sequence[int], staging: Path
) -> None:
    """The shards' inverted lists, in id order, merged into staging's INDEX_FILE and IVFDATA_FILE,
    with ids 0..n-1: a shard whose ids start elsewhere is first rebased into a scratch file."""
    files: list[Path] = []
    scratch: list[Path] = []
    first = 0
    for folder, n, base in zip(folders, rows, id_bases, strict=True):
        files.append(folder / INDEX_FILE)
        if base != first:
            scratch.append(staging / f".rebased-{len(scratch)}.faiss")
            _rebase(trained, files[-1], first - base, scratch[-1])
            files[-1] = scratch[-1]
        first += n
    try:
        faiss_index.merge_ondisk(trained, files, staging / INDEX_FILE, staging / IVFDATA_FILE)
    finally:
        for file in scratch:
            file.unlink(missing_ok=True)


def _rebase(trained: faiss.Index, shard_file: Path, shift: int, out: Path) -> None:
    """The shard in `shard_file` written to `out` with every FAISS id moved by `shift` (one shard
    in memory at a time)."""
    target = faiss.clone_index(trained)
    ivf = faiss.extract_index_ivf(target)
    shard = faiss.read_index(str(shard_file))
    ivf.merge_from(faiss.extract_index_ivf(shard), shift)  # moves the codes, adding `shift` to their ids
    target.ntotal = ivf.ntotal  # the pre-transform (OPQ) around the lists counts them too
    faiss_index.write(target, out)


def _concatenate(folders: Sequence[Path], staging: Path, current_sparse: bool) -> Finished:
    """The shards' docstores and BM25 term counts, one after the other, into staging's files; term
    counts of an older analyzer are counted again from the text."""
    writer = DocstoreWriter(staging / DOCSTORE_FILE)
    parts: list[TermCounts] = []
    for folder in folders:
        recount = SparseIndexWriter()
        for rows in Docstore(folder / DOCSTORE_FILE).scan():
            writer.add(rows)
            if not current_sparse:
                recount.add(indexed_text(c.title, c.text) for c in rows)
        parts.append(TermCounts.load(folder) if current_sparse else recount.counts())
    writer.close()
    counts = concatenate_counts(parts)
    counts.write(staging)
    assert counts.tf.shape[0] == writer.rows, "term counts and docstore disagree"
    return Finished(writer.rows, counts.statistics())


def concatenate_counts(parts: Sequence[TermCounts]) -> TermCounts:
    """Term counts of consecutive chunk ranges as one: rows stacked over the union vocabulary
    (ascending, as artifacts store it)."""
    words = sorted(set().union(*(p.words for p in parts)))
    at = {w: i for i, w in enumerate(words)}
    tf = sp.vstack([p.over(at) for p in parts], format="csr")  # (chunks, words)
    tf.sort_indices()
    return TermCounts(words, tf.astype(np.int32), np.concatenate([p.lengths for p in parts]).astype(np.int32))


def _concatenate_exact(folders: Sequence[Path], target: Path) -> None:
    """The shards' exact vectors files, one after the other (rows in the merged id order)."""
    with target.open("wb") as out:
        for folder in folders:
            with (folder / EXACT_FILE).open("rb") as part:
                shutil.copyfileobj(part, out, COPY_BLOCK)
