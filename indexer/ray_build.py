"""A distributed index build on Ray Data (`ragserve index build --engine ray`): the artifact
indexer/build.py writes, row for row, from a driver whose memory does not grow with the corpus.

    read tasks, one per file   documents, by indexer/sources.py's readers (its checks, its messages)
    -> map_batches (tasks)     chunks: the retriever's tokenizer and indexer/chunking.py, nothing more
    -> map_batches (actors)    vectors: each actor of the pool loads the retriever once (a GPU each
                               when the cluster has GPUs)
    -> the driver              streams the embedded blocks in corpus order to one writer actor per
                               shard (an ArtifactWriter on the shard's folder), at most
                               `writer_in_flight` batches ahead of each
    -> the writers             build their FAISS indexes in parallel (over one quantizer, trained
                               once, when the index type needs training); a task seals the artifact.

Order: the Dataset keeps block order, and a writer runs its calls in the order the driver sent
them, so every shard gets its rows in the local build's order. Duplicate ids: equal ids hash to
the same shard (retriever/shards.py), so each writer refuses the ids its shard has seen, which it
keeps in SQLite in the staging directory (memory: SQLite's page cache, whatever the corpus).
The writers and the sealing tasks run on the driver's node: `out` is a path of the machine that
runs the command, and no other node touches it (docs/ray_build.md).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa
import ray
import ray.data
from ray.data import ActorPoolStrategy
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm import tqdm

from indexer.build import BuildConfig
from indexer.ray_stages import (
    COUNTS,
    MESSAGE,
    CorpusSource,
    Embedder,
    ShardWriter,
    SkipLog,
    chunk_items,
    read_units,
    seal,
    tokenizer_spec,
    train_quantizer,
)
from indexer.sources import ReadOptions, SkipHandler
from ragserve.atomic import clean_stale, staged_directory
from ragserve.errors import ArtifactError, InvalidInputError, RagserveError
from retriever.artifact import Manifest
from retriever.shards import shard_name
from retriever.writer import ModelInfo

if TYPE_CHECKING:
    from retriever.encoder import Encoder


class RaySettings(Protocol):
    """The settings a Ray build reads (service/settings.py, `ray_*`)."""

    @property
    def ray_embed_actors(self) -> int: ...
    @property
    def ray_embed_threads(self) -> int: ...
    @property
    def ray_writer_in_flight(self) -> int: ...
    @property
    def ray_block_mib(self) -> int: ...


@dataclass(frozen=True, slots=True)
class RayBuildConfig:
    """What shapes the index (`build`, as for a local build) and how the work is spread."""

    build: BuildConfig
    embed_actors: int  # 0: one per GPU, else cpus // (embed_threads + 1), at least 1
    embed_threads: int  # torch threads per embedding actor
    writer_in_flight: int  # batches sent to one writer and not yet written, at most
    block_bytes: int  # Ray Data's target block size for this build

    @classmethod
    def of(cls, build: BuildConfig, settings: RaySettings) -> RayBuildConfig:
        return cls(
            build,
            settings.ray_embed_actors,
            settings.ray_embed_threads,
            settings.ray_writer_in_flight,
            settings.ray_block_mib << 20,
        )


@contextlib.contextmanager
def ray_session(address: str | None, env: Mapping[str, str]) -> Iterator[None]:
    """Ray for one build: the cluster at `address` (left running), else a local Ray on this
    machine's CPUs (shut down after); a Ray already initialised (tests, a notebook) as it is.
    `env` goes to every worker (a remote node does not share this process's environment)."""
    if ray.is_initialized():
        yield
        return
    if address and address.startswith("ray://"):
        raise InvalidInputError(
            "--address ray://... (Ray Client) is not supported: the shard writers run on the driver's node, "
            "so run the command on a node of the cluster (--address HOST:PORT or auto)"
        )
    options: dict[str, Any] = {
        "runtime_env": {"env_vars": dict(env)},
        "log_to_driver": False,
        "logging_level": "warning",
    }
    if address:
        ray.init(address=address, **options)
    else:
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, **options)
    try:
        yield
    finally:
        ray.shutdown()


def embed_pool(requested: int, threads: int, resources: Mapping[str, float]) -> tuple[int, float, float]:
    """(actors, CPUs and GPUs each) of the embedding pool: a GPU per actor where there are GPUs;
    one CPU is left to the chunk tasks, or they could never run beside the actors."""
    gpus = int(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1))
    actors = requested or gpus or max(1, int(cpus) // (threads + 1))
    return actors, min(float(threads), max(1.0, cpus - 1) / actors), 1.0 if gpus else 0.0


def corpus_dataset(source: CorpusSource, tokenizer: str, model: ModelInfo, config: RayBuildConfig) -> ray.data.Dataset:
    """documents -> chunks -> embedded chunks, in corpus order (ITEMS less token_ids, + vector)."""
    build = config.build
    ds = ray.data.read_datasource(source, override_num_blocks=len(source.units))
    ds.context.execution_options.preserve_order = True  # the artifact's rows are the corpus' order
    ds.context.target_max_block_size = config.block_bytes
    ds.context.enable_progress_bars = False  # the driver shows one bar, in chunks written
    chunks = ds.map_batches(
        chunk_items,
        batch_format="pyarrow",
        batch_size=build.doc_batch,
        fn_kwargs={"tokenizer": tokenizer, "chunking": build.chunking, "shards": build.shards},
    )
    resources = ray.cluster_resources()  # type: ignore[no-untyped-call]
    actors, cpus, gpus = embed_pool(config.embed_actors, config.embed_threads, resources)
    embedded: ray.data.Dataset = chunks.map_batches(
        Embedder,
        batch_format="pyarrow",
        batch_size=build.embed_window,
        fn_constructor_kwargs={"model": model, "threads": config.embed_threads, "batch": build.embed_batch},
        compute=ActorPoolStrategy(size=actors),
        num_cpus=cpus,
        num_gpus=gpus or None,
    )
    return embedded


# --- the driver ---------------------------------------------------------------------------------


class Router:
    """Hands each shard writer its rows in corpus order, keeping at most `in_flight` batches
    unacknowledged per writer: what the driver holds, whatever the corpus."""

    def __init__(self, writers: list[Any], in_flight: int) -> None:
        self.writers = writers
        self.in_flight = in_flight
        self.pending: list[deque[Any]] = [deque() for _ in writers]

    def send(self, items: pa.Table) -> int:
        """Route one embedded block -> chunks acknowledged meanwhile."""
        shard = items["shard"].to_numpy()  # (rows,)
        items = items.drop_columns(["shard"])
        done = 0
        for k in np.unique(shard).tolist():
            done += self._wait(k, self.in_flight - 1)
            part = items if len(self.writers) == 1 else items.take(pa.array(np.flatnonzero(shard == k)))
            self.pending[k].append(self.writers[k].add.remote(part))
        return done

    def drain(self) -> int:
        return sum(self._wait(k, 0) for k in range(len(self.writers)))

    def _wait(self, k: int, keep: int) -> int:
        done = 0
        while len(self.pending[k]) > keep:
            done += int(ray.get(self.pending[k].popleft()))
        return done


def build_artifact_ray(
    paths: Iterable[Path],
    out: Path,
    encoder: Encoder,
    config: RayBuildConfig,
    progress: bool = True,
    options: ReadOptions | None = None,
    on_skip: SkipHandler | None = None,
) -> Manifest:
    """Build at `out` (which must not exist yet), on the running Ray (`ray_session`), the artifact
    `build_artifact(read_corpus(paths, options), out, encoder, config.build)` builds. The driver's
    encoder gives the tokenizer and what the manifest records; the actors load their own copy.
    Skipped files go to `on_skip`: a folder's at once, those the read tasks skip once they are read."""
    build = config.build
    build.chunking.validate(encoder.max_tokens)
    units, skipped = read_units(paths, build.doc_batch)
    report: SkipHandler = on_skip or (lambda _: None)
    for skip in skipped:
        report(skip)
    clean_stale(out)
    if out.exists():
        raise ArtifactError(f"{out} already exists: artifacts are immutable, choose a new --out")
    if not units:
        raise InvalidInputError("the corpus has no text to index")
    started = time.perf_counter()
    model = ModelInfo.of(encoder)
    here = {"scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)}
    with staged_directory(out) as staging, _worker_errors():
        folders = [staging] if build.shards == 1 else [staging / shard_name(i) for i in range(build.shards)]
        chunking = build.chunking.manifest()
        skips = _remote(SkipLog, num_cpus=0, **here).remote()
        source = CorpusSource(units, build.doc_batch, options or ReadOptions(), skips)
        writer = _remote(ShardWriter, num_cpus=0, **here)
        writers = [
            writer.remote(str(f), str(staging / f".ids-{i}.sqlite"), model, chunking, build.layout)
            for i, f in enumerate(folders)
        ]
        try:
            stats = _fill(corpus_dataset(source, tokenizer_spec(encoder), model, config), writers, config, progress)
            for skip in ray.get(skips.all.remote()):
                report(skip)
            return _finish(staging, writers, stats, model, build, here, started)
        finally:
            for actor in [*writers, skips]:
                ray.kill(actor)


def _fill(ds: ray.data.Dataset, writers: list[Any], config: RayBuildConfig, progress: bool) -> list[dict[str, int]]:
    route = Router(writers, config.writer_in_flight)
    with tqdm(desc="indexing", unit=" chunks", disable=not progress) as bar:
        for items in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1):
            bar.update(route.send(items))
        bar.update(route.drain())
    stats: list[dict[str, int]] = ray.get([w.close.remote() for w in writers])
    return stats


def _finish(
    staging: Path,
    writers: list[Any],
    stats: list[dict[str, int]],
    model: ModelInfo,
    build: BuildConfig,
    here: dict[str, Any],
    started: float,
) -> Manifest:
    """Fill every shard's FAISS index at once and seal; the driver only passes references on."""
    rows = [s["rows"] for s in stats]
    counts = {k: sum(s[k] for s in stats) for k in COUNTS}
    if sum(rows) == 0:
        raise InvalidInputError("the corpus has no text to index")
    factory = build.layout.factory(sum(rows))
    threads = max(1, (os.cpu_count() or 1) // len(writers))
    quantizer, bases = None, [0]
    if build.shards > 1:
        task = _remote(train_quantizer, **here)
        quantizer, bases = ray.get(
            task.remote(str(staging), build.shards, model.dimension, factory, rows, build.layout.gpu)
        )
    finished = [w.finish.remote(factory, quantizer, base, threads) for w, base in zip(writers, bases, strict=True)]
    sealing = _remote(seal, num_cpus=0, **here)
    elapsed = time.perf_counter() - started
    chunking = build.chunking.manifest()
    sharded = bases if build.shards > 1 else None
    manifest: Manifest = ray.get(
        sealing.remote(str(staging), model, chunking, factory, sharded, counts, elapsed, *finished)
    )
    return manifest


def _remote(target: Any, **options: Any) -> Any:
    """`ray.remote(target).options(...)`: a task or actor class (Ray's types stop at `options`)."""
    return ray.remote(target).options(**options)


@contextlib.contextmanager
def _worker_errors() -> Iterator[None]:
    """A worker's RagserveError raised as itself, not wrapped in Ray's RayTaskError."""
    try:
        yield
    except RayError as exc:
        node: BaseException | None = exc
        while node is not None:
            if isinstance(node, RagserveError) and not isinstance(node, RayError):
                raise type(node)(getattr(node, MESSAGE, str(node))) from None
            node = getattr(node, "cause", None) or node.__cause__
        raise
