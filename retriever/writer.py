"""The artifact writers: chunks and their vectors in (in FAISS id order), the files of an index
artifact out: docstore, BM25 postings, FAISS index and the manifest (retriever/artifact.py).

Used by a build from documents (local or on Ray) and by a compaction that carries chunks and
vectors over (both in indexer/). Vectors are spooled to a flat float32 file in the staging
directory as they arrive, and the FAISS index is built from that file, memory-mapped, when the
artifact is sealed. Then the spool is deleted, or, when the index is compressed (PQ: approximate
scores) and the layout keeps vectors, renamed to the exact vectors file that search re-ranks with
(retriever/exact.py): it is already that file, row i the vector of FAISS id `id_base + i`, and it
is written before the manifest, so its checksum is in it.

`ArtifactWriter` writes one set of index files; `ShardedArtifactWriter` routes each document's
chunks to the shard its id hashes to (retriever/shards.py), one `ArtifactWriter` per shard folder,
trains a coarse quantizer once for all shards when the index type needs one, fills the shards (in
parallel where the caller's `run` says) and writes the corpus-wide BM25 statistics and one
manifest over everything.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import numpy as np

from ragserve.errors import InvalidInputError
from ragserve.types import ChunkRecord
from retriever import faiss_index
from retriever.artifact import DOCSTORE_FILE, INDEX_FILE, Manifest, write_manifest
from retriever.docstore import DocstoreWriter
from retriever.exact import EXACT_FILE
from retriever.gpu import CPU_ONLY, GpuOptions
from retriever.shards import shard_name, shard_of
from retriever.sparse import ANALYZER_VERSION, CorpusStatistics, SparseIndexWriter, indexed_text

if TYPE_CHECKING:
    import faiss

    from retriever.encoder import Encoder

EMBEDDINGS_FILE = "embeddings.f32"
QUANTIZER_FILE = "quantizer.faiss"  # the trained, empty index the shards of an artifact were filled from
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a manifest records of the retriever that embedded the chunks (picklable, so a shard
    writer can run in another process)."""

    name: str
    weights_sha256: str
    dimension: int
    precision: str

    @classmethod
    def of(cls, encoder: Encoder) -> ModelInfo:
        return cls(encoder.name, encoder.weights_sha256, encoder.dimension, str(encoder.precision))


@dataclass(frozen=True, slots=True)
class Layout:
    """How the FAISS index of an artifact is chosen (a factory string, or None to choose by size),
    whether the exact vectors are kept beside a compressed one, and where FAISS builds it."""

    index_factory: str | None
    exact_below: int
    keep_vectors: bool  # setting index_keep_vectors: only a compressed index keeps them (retriever/exact.py)
    gpu: GpuOptions = CPU_ONLY  # settings faiss_gpu_build, faiss_gpu_shard

    def factory(self, chunks: int) -> str:
        return self.index_factory or faiss_index.default_factory(chunks, self.exact_below)


@dataclass(frozen=True, slots=True)
class Finished:
    """One set of index files, written: its row count and its BM25 statistics."""

    rows: int
    statistics: CorpusStatistics


class ArtifactWriter:
    """Writes one set of index files into `staging`; `seal` finishes an unsharded artifact (the
    caller publishes the directory), `finish` one shard of a sharded one."""

    def __init__(self, staging: Path, model: ModelInfo, chunking: Mapping[str, int], layout: Layout) -> None:
        staging.mkdir(exist_ok=True)
        self.staging = staging
        self.model = model
        self.chunking = dict(chunking)
        self.layout = layout
        self.docstore = DocstoreWriter(staging / DOCSTORE_FILE)
        self.sparse = SparseIndexWriter()
        self._vectors: BinaryIO = (staging / EMBEDDINGS_FILE).open("wb")

    @property
    def rows(self) -> int:
        return self.docstore.rows

    def add(self, chunks: Sequence[ChunkRecord], vectors: np.ndarray) -> None:
        assert vectors.shape == (len(chunks), self.model.dimension), "one vector per chunk"
        self._vectors.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
        self.docstore.add(chunks)
        self.sparse.add(indexed_text(c.title, c.text) for c in chunks)

    def close(self) -> None:
        """Stop taking rows (the vectors are then all on disk, for a shared quantizer's sample)."""
        if not self._vectors.closed:
            self._vectors.close()
            self.docstore.close()

    def spooled(self) -> np.ndarray:
        """The vectors added so far, memory-mapped (rows, dim); after `close`."""
        return read_spool(self.staging, self.model.dimension)

    def finish(self, factory: str, trained: faiss.Index | None = None, id_base: int = 0) -> Finished:
        """Build the FAISS index from the spooled vectors (filling `trained`, a quantizer shared
        by the shards, when given), keep or drop the spool (`_keep_spool`) and write the BM25 files."""
        self.close()
        vectors = self.spooled()  # (rows, dim) memory-mapped
        assert vectors.shape[0] == self.rows, "embeddings and docstore disagree"
        index = faiss_index.build(vectors, factory, trained=trained, id_base=id_base, options=self.layout.gpu)
        faiss_index.write(index, self.staging / INDEX_FILE)
        del vectors
        self._keep_spool(self.layout.keep_vectors and faiss_index.is_compressed(index))
        counts = self.sparse.write(self.staging)
        return Finished(self.rows, counts.statistics())

    def _keep_spool(self, keep: bool) -> None:
        """The spool becomes the exact vectors file (a rename: it is that format already), or goes."""
        spool = self.staging / EMBEDDINGS_FILE
        if keep:
            spool.rename(self.staging / EXACT_FILE)
        else:
            spool.unlink()

    def seal(self, counts: dict[str, int], started: float, **extra: Any) -> Manifest:
        """Finish the artifact and write its manifest; `started` (a perf_counter reading) dates the
        whole build for the manifest."""
        if self.rows == 0:
            raise InvalidInputError("the corpus has no text to index")
        factory = self.layout.factory(self.rows)
        finished = self.finish(factory)
        return seal_single(self.staging, self.model, self.chunking, factory, finished, counts, started, **extra)


def read_spool(folder: Path, dimension: int) -> np.ndarray:
    """The vectors spooled in `folder` (an `ArtifactWriter`'s staging), memory-mapped -> (rows, dim)
    float32; public so that a process that did not write them (a distributed build's quantizer
    training, indexer/ray_build.py) samples them the way `ShardedArtifactWriter.seal` does."""
    path = folder / EMBEDDINGS_FILE
    if path.stat().st_size == 0:
        return np.empty((0, dimension), np.float32)
    return np.memmap(path, dtype=np.float32, mode="r").reshape(-1, dimension)


def seal_single(
    staging: Path,
    model: ModelInfo,
    chunking: Mapping[str, int],
    factory: str,
    finished: Finished,
    counts: dict[str, int],
    started: float,
    **extra: Any,
) -> Manifest:
    """Write the manifest of an unsharded artifact whose index files are written (`finished`):
    what `ArtifactWriter.seal` ends with, public so that a build whose writer ran in another
    process (indexer/ray_build.py) writes the very same manifest."""
    fields = manifest_fields(model, chunking, factory, {**counts, "chunks": finished.rows}, started)
    return write_manifest(staging, {**fields, **extra})


def manifest_fields(
    model: ModelInfo, chunking: Mapping[str, int], factory: str, counts: dict[str, int], started: float
) -> dict[str, Any]:
    """What every manifest records besides its files and shards."""
    return {
        "retriever_model": model.name,
        "retriever_weights_sha256": model.weights_sha256,
        "dimension": model.dimension,
        "embedding_precision": model.precision,
        "metric": faiss_index.METRIC,
        "index_factory": factory,
        "chunking": dict(chunking),
        "counts": {**counts, "build_ms": round((time.perf_counter() - started) * 1000)},
        "sparse_analyzer": ANALYZER_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _serial(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    return [fn(item) for item in items]


class ShardedArtifactWriter:
    """Writes an artifact of `shards` shard folders into `staging`; the same `add`/`seal` as
    `ArtifactWriter`. `run` maps a function over the shards when they are filled (default: one
    after the other; a thread pool or Ray tasks fill them in parallel)."""

    def __init__(
        self,
        staging: Path,
        model: ModelInfo,
        chunking: Mapping[str, int],
        layout: Layout,
        shards: int,
        run: Callable[[Callable[[int], Finished], Sequence[int]], list[Finished]] = _serial,
    ) -> None:
        assert shards >= 1, "a sharded artifact has at least one shard"
        self.staging = staging
        self.model = model
        self.chunking = dict(chunking)
        self.layout = layout
        self.parts = [ArtifactWriter(staging / shard_name(i), model, chunking, layout) for i in range(shards)]
        self._run = run

    @property
    def rows(self) -> int:
        return sum(part.rows for part in self.parts)

    def add(self, chunks: Sequence[ChunkRecord], vectors: np.ndarray) -> None:
        """Rows go to their document's shard, in the order given (a document's rows stay together)."""
        assert vectors.shape == (len(chunks), self.model.dimension), "one vector per chunk"
        shard = np.array([shard_of(c.doc_id, len(self.parts)) for c in chunks], np.int64)  # (n,)
        for i in np.unique(shard).tolist():
            rows = np.flatnonzero(shard == i)
            self.parts[i].add([chunks[r] for r in rows.tolist()], vectors[rows])

    def seal(self, counts: dict[str, int], started: float, **extra: Any) -> Manifest:
        rows = [part.rows for part in self.parts]
        if sum(rows) == 0:
            raise InvalidInputError("the corpus has no text to index")
        factory = self.layout.factory(sum(rows))
        for part in self.parts:
            part.close()
        trained = faiss_index.train(shared_sample([p.spooled() for p in self.parts]), factory, self.layout.gpu)
        if trained is not None:  # kept, so a compaction refills a changed shard over the same lists
            faiss_index.write(trained, self.staging / QUANTIZER_FILE)
        bases = id_bases(rows, trained)

        def fill(i: int) -> Finished:
            return self.parts[i].finish(factory, trained, int(bases[i]))

        finished = self._run(fill, range(len(self.parts)))
        return seal_shards(self.staging, self.model, self.chunking, factory, finished, bases, counts, started, **extra)


def id_bases(rows: Sequence[int], trained: faiss.Index | None) -> list[int]:
    """The first FAISS id of each shard: disjoint ranges for IVF shards over one quantizer (their
    lists can then be merged into one index), 0 for every other index type."""
    if trained is None or not faiss_index.is_ivf(trained):
        return [0] * len(rows)
    return [int(b) for b in np.concatenate([[0], np.cumsum(rows)[:-1]])]


def shared_sample(spools: Sequence[np.ndarray], size: int = faiss_index.TRAIN_SAMPLE) -> np.ndarray:
    """A seeded sample of up to `size` vectors drawn from every shard in proportion to its size,
    for the coarse quantizer they share -> (n, dim) float32."""
    total = sum(s.shape[0] for s in spools)
    rng = np.random.default_rng(0)
    picked = []
    for spool in spools:
        take = min(spool.shape[0], round(size * spool.shape[0] / total)) if total else 0
        rows = np.sort(rng.choice(spool.shape[0], take, replace=False)) if take else np.empty(0, np.int64)
        picked.append(np.asarray(spool[rows], np.float32))
    return np.concatenate(picked) if picked else np.empty((0, 0), np.float32)


def seal_shards(
    staging: Path,
    model: ModelInfo,
    chunking: Mapping[str, int],
    factory: str,
    finished: Sequence[Finished],
    id_bases: Sequence[int],
    counts: dict[str, int],
    started: float,
    **extra: Any,
) -> Manifest:
    """Write the corpus-wide BM25 statistics of filled shard folders and the one manifest over them."""
    statistics = CorpusStatistics.merge([f.statistics for f in finished])
    statistics.write(staging)
    shards = [
        {"name": shard_name(i), "chunks": f.rows, "id_base": int(base)}
        for i, (f, base) in enumerate(zip(finished, id_bases, strict=True))
    ]
    fields = manifest_fields(model, chunking, factory, {**counts, "chunks": statistics.chunks}, started)
    return write_manifest(staging, {**fields, "shards": shards, "bm25_statistics": statistics.manifest(), **extra})
