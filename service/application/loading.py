"""The composition root: settings turned into components (encoder, generator, index versions,
readers, adapters, jobs) for the server, the CLI and the benchmarks. This is where torch gets
imported, and the only place component configurations are built from the settings, so every
default lives in service/settings.py alone."""

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch

from indexer.build import BuildConfig, build_artifact
from indexer.chunking import CHUNKER_VERSION, ChunkingConfig
from indexer.sources import read_corpus
from ragserve.compute import on_compute, use_compute_thread
from ragserve.errors import ReaderUnavailableError
from ragserve.types import Document, RetrievalMode
from reader import builtin  # noqa: F401  (registers the built-in readers)
from reader.base import Reader, ReaderConfig
from reader.generator import Generator
from reader.models import resolve_generator
from reader.registry import ReaderContext, create_reader, reader_names
from retriever.artifact import read_manifest, sha256_file
from retriever.base import Retriever
from retriever.batching import BatchedRetriever
from retriever.encoder import Encoder, resolve_retriever, weights_sha256
from retriever.gpu import GpuOptions
from retriever.hybrid import FusionWeights
from retriever.registry import IndexRegistry
from retriever.sparse import BM25Params
from retriever.version import SearchConfig, VersionRetriever
from service.application.adapters import AdapterManager
from service.application.edits import EditMemory, EditPolicy
from service.application.engine import Abstention, QAEngine
from service.application.indexes import IndexManager
from service.application.jobs import JobPolicy, Jobs
from service.application.replicas import Following, Replica, new_replica_id
from service.application.services import Services, Serving
from service.application.store import Store, open_store
from service.settings import Settings

log = logging.getLogger(__name__)

DEMO_CORPUS = Path(str(files("indexer").joinpath("data", "demo_corpus.jsonl")))


def configure_threads(settings: Settings) -> None:
    torch.set_num_threads(settings.torch_threads)


def make_encoder(settings: Settings) -> Encoder:
    return Encoder(settings.retriever_model, precision=settings.encoder_precision, device=settings.retriever_device)


def make_generator(settings: Settings) -> Generator:
    return Generator(
        settings.generator_model, settings.cache_dir, settings.generator_precision, settings.generator_device
    )


def search_config(settings: Settings) -> SearchConfig:
    fusion = FusionWeights(
        sparse=settings.hybrid_sparse_weight,
        phrase=settings.hybrid_phrase_weight,
        title=settings.hybrid_title_weight,
        candidates=settings.hybrid_candidates,
    )
    return SearchConfig(
        mode=settings.retrieval,
        ef_search=settings.hnsw_ef_search,
        nprobe=settings.ivf_nprobe,
        bm25=BM25Params(settings.bm25_k1, settings.bm25_b),
        fusion=fusion,
        rerank_candidates=settings.rerank_candidates,
        gpu=GpuOptions(search=settings.faiss_gpu_search, shard=settings.faiss_gpu_shard),
        shard_threads=settings.shard_search_threads,
    )


def open_version(
    settings: Settings, path: Path, encoder: Encoder, reuse: VersionRetriever | None = None
) -> VersionRetriever:
    """One index version (the shards `serve_shards` names of a sharded one), searched the way the
    settings say; the shards it shares with `reuse` (the version serving now) are not read again."""
    return VersionRetriever(path, encoder, search_config(settings), settings.serve_shards, reuse)


def build_config(settings: Settings, **overrides: Any) -> BuildConfig:
    config = BuildConfig(
        chunking=ChunkingConfig(settings.chunk_tokens, settings.overlap_tokens),
        index_factory=settings.index_factory,
        exact_below=settings.exact_search_below,
        keep_vectors=settings.index_keep_vectors,
        shards=settings.index_shards,
        gpu=build_gpu(settings),
    )
    return replace(config, **overrides)


def build_gpu(settings: Settings) -> GpuOptions:
    """Where FAISS trains and fills indexes (builds, compactions, reshards): the GPUs if asked and any."""
    return GpuOptions(build=settings.faiss_gpu_build, shard=settings.faiss_gpu_shard)


def cached_index_path(settings: Settings, name: str, source: Path) -> Path:
    """Where the index of a corpus file lives in the cache: keyed on the file's content, the
    retriever weights and every setting that shapes the index, so a change of any of them
    builds a new artifact instead of serving a stale one."""
    key = json.dumps(
        [
            sha256_file(source),
            weights_sha256(resolve_retriever(settings.retriever_model)),
            settings.chunk_tokens,
            settings.overlap_tokens,
            CHUNKER_VERSION,
            settings.index_factory,
            settings.exact_search_below,
            settings.index_shards,
            settings.index_keep_vectors,
        ]
    )
    return settings.cache_dir / "indexes" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def ensure_index(
    settings: Settings,
    path: Path,
    documents: Callable[[], Iterable[Document]],
    encoder: Callable[[], Encoder],
    progress: bool = True,
) -> Path:
    """Build the artifact at `path` unless it exists already."""
    if not path.exists():
        log.info("building index %s", path)
        configure_threads(settings)
        build_artifact(documents(), path, encoder(), build_config(settings), progress)
    return path


def demo_index(settings: Settings, encoder: Callable[[], Encoder]) -> Path:
    path = cached_index_path(settings, "demo", DEMO_CORPUS)
    return ensure_index(settings, path, lambda: read_corpus([DEMO_CORPUS]), encoder)


def reader_config(settings: Settings, **overrides: Any) -> ReaderConfig:
    config = ReaderConfig(
        max_new_tokens=settings.max_new_tokens,
        max_passage_tokens=settings.max_passage_tokens,
        temperature=settings.rag_temperature,
        num_beams=settings.num_beams,
        fid_model=settings.fid_model,
        retro_weights=settings.retro_weights,
        cache_dir=settings.cache_dir,
        batch_max=settings.ask_batch_max,
        batch_wait_ms=settings.ask_batch_wait_ms,
    )
    return replace(config, **overrides)


def make_readers(
    settings: Settings, generator: Generator, retriever: Retriever
) -> tuple[dict[str, Reader], dict[str, str]]:
    """Every registered reader this configuration can run, and why the others cannot."""

    context = ReaderContext(generator, reader_config(settings), retriever.passages)
    readers: dict[str, Reader] = {}
    unavailable: dict[str, str] = {}
    for name in reader_names():
        try:
            readers[name] = create_reader(name, context)
        except ReaderUnavailableError as exc:
            log.info("reader %s is unavailable: %s", name, exc)
            unavailable[name] = str(exc)
    return readers, unavailable


def make_adapters(settings: Settings, generator: Generator) -> AdapterManager:
    """Every adapter that fits the generator, loaded; the default as the settings say."""
    return AdapterManager(settings.adapters_root, generator.load_adapter, settings.adapter)


def make_engine(
    settings: Settings,
    retriever: Retriever,
    generator: Generator,
    adapters: AdapterManager | None = None,
    edits: EditMemory | None = None,
) -> QAEngine:
    readers, unavailable = make_readers(settings, generator, retriever)
    adapters = adapters or make_adapters(settings, generator)
    return QAEngine(
        retriever,
        readers,
        settings.default_reader,
        unavailable,
        settings.extractive,
        adapters,
        count_tokens=lambda text: len(generator.text.encode(text)),
        edits=edits,
        abstention=make_abstention(settings),
        edit_answers=settings.edit_answers,
    )


def make_edits(settings: Settings, store: Store, encoder: Encoder) -> EditMemory:
    """The edit memory of the index, caught up with its table (every live edit embedded now)."""
    from retriever.scope import ScopeClassifier

    policy = EditPolicy(settings.edit_scope_threshold, settings.edit_candidates, settings.max_edits)
    classifier = ScopeClassifier.load(words=encoder.encode_words)
    return EditMemory(store.edits, encoder.encode_queries, encoder.dimension, policy, classifier, encoder_key(encoder))


def encoder_key(encoder: Encoder) -> str:
    """What identifies the vectors an encoder makes (its weights and number format), as the edit
    table records it beside each stored question vector."""
    return f"{encoder.name}@{encoder.weights_sha256[:16]}/{encoder.precision}"


def make_abstention(settings: Settings) -> Abstention:
    """The support model and its thresholds: the setting's, else the one fitted for each mode."""
    from retriever.support import SupportModel

    model = SupportModel.load()
    fixed = settings.abstain_threshold
    thresholds = {mode: model.threshold(mode) if fixed is None else fixed for mode in RetrievalMode}
    return Abstention(model, thresholds, settings.retrieval, settings.refusal_text, settings.abstain)


def load_engine(settings: Settings, retriever: Retriever, generator: Generator | None = None) -> QAEngine:
    """An engine over a fixed retriever (evaluation): its caller asks one question at a time, on
    its own thread. So `stuff` decodes right there, not through the continuous decoder: without a
    compute thread (command-line runs) that decoder's worker would run the generator on a thread
    of its own next to the caller's retriever, two OpenMP teams (ragserve/compute.py), and every
    answer would take ~1.7× as long (measured: 300 held-out questions, LoRA adapter, p50 570 ms
    against 320 ms)."""
    configure_threads(settings)
    generator = generator or make_generator(settings)
    return make_engine(settings.model_copy(update={"ask_batch_max": 1}), retriever, generator)


def open_registry(settings: Settings) -> IndexRegistry:
    return IndexRegistry(settings.registry_root, settings.index_name)


def serving_version(settings: Settings, registry: IndexRegistry) -> str | None:
    """The version the store's pointer names for `registry`'s index (serving.json, or PostgreSQL)."""
    store = open_store(settings, registry, f"cli-{new_replica_id()}")
    try:
        return store.pointer.get()
    finally:
        store.close()


def load_indexes(settings: Settings, encoder: Encoder) -> Serving:
    """The serving version (as the store's pointer names it) and its delta behind a hot-swap
    retriever, the job workers (which take over jobs whose worker died), and this process as a
    replica that follows the pointer and the change log.

    `index_path` (``serve --index``) is imported into the registry and served when the registry
    does not have it yet, so a restart does not undo a refresh or a rollback; an index with no
    serving version starts with the demo index, and `demo` (``serve --demo``) serves that again.
    Replicas that start at once agree on one."""
    registry = open_registry(settings)
    replica_id = new_replica_id()
    store = open_store(settings, registry, replica_id)
    try:
        if settings.demo:
            store.pointer.set(registry.import_artifact(demo_index(settings, lambda: encoder)))
        elif settings.index_path is not None:
            known = set(registry.version_ids())
            version = registry.import_artifact(settings.index_path)
            if version not in known or store.pointer.get() is None:
                store.pointer.set(version)
        elif store.pointer.get() is None:
            store.pointer.replace(None, registry.import_artifact(demo_index(settings, lambda: encoder)))
        serving = _serve(settings, encoder, registry, store, replica_id)
    except BaseException:
        store.close()
        raise
    log.info("%s", serving_summary(settings, serving))
    return serving


def serving_summary(settings: Settings, serving: Serving) -> str:
    """What serves, from where, and how to serve the demo again: the registry is state, so a plain
    `serve` serves what served last (after one `serve --index DIR`, DIR), not the demo."""
    indexes = serving.indexes
    version = indexes.serving_version
    documents = read_manifest(indexes.registry.path_of(version)).counts.get("documents", 0)
    store = "" if serving.store.kind == "sqlite" else f", serving pointer in {serving.store.kind}"
    demo = cached_index_path(settings, "demo", DEMO_CORPUS)
    is_demo = demo.exists() and read_manifest(demo).version == version
    hint = "the bundled demo" if is_demo else "to serve the bundled demo again: ragserve serve --demo"
    return (
        f"serving index {indexes.registry.name!r} version {version} ({documents} documents) "
        f"from registry {indexes.registry.home}{store}; {hint}"
    )


def _serve(settings: Settings, encoder: Encoder, registry: IndexRegistry, store: Store, replica_id: str) -> Serving:
    def served_elsewhere() -> set[str]:
        return {r.version for r in store.replicas.live(settings.replica_timeout_s)}

    def opener(path: Path, reuse: VersionRetriever | None) -> VersionRetriever:
        return open_version(settings, path, encoder, reuse)

    indexes = IndexManager(
        registry,
        store.pointer,
        opener,
        store.documents,
        build_config(settings),
        settings.keep_versions,
        served_elsewhere,
    )
    following = Following(settings.follow_poll_s, settings.heartbeat_s, settings.replica_timeout_s)
    edits = make_edits(settings, store, encoder)
    replica = Replica(replica_id, indexes, store.jobs, store.replicas, store.signals, following, (edits.catch_up,))
    jobs = Jobs(store.jobs, store.documents, indexes, settings.compact_after_chunks, job_policy(settings))
    return Serving(indexes, jobs, replica, store, edits)


def job_policy(settings: Settings) -> JobPolicy:
    return JobPolicy(settings.job_max_attempts, settings.worker_backoff_max_s, settings.job_retention_s)


def load_services(settings: Settings, encoder: Encoder | None = None, generator: Generator | None = None) -> Services:
    """What the server runs on: indexes and jobs (see `load_indexes`), models and readers. From
    here on one thread runs every model, built there too (ragserve/compute.py)."""
    compute = use_compute_thread()
    compute.run(lambda: configure_threads(settings))  # thread counts are per thread in OpenMP
    encoder = encoder or compute.run(lambda: make_encoder(settings))
    serving = load_indexes(settings, encoder)
    indexes = serving.indexes
    generator = generator or compute.run(lambda: make_generator(settings))
    retriever: Retriever = indexes.retriever
    if settings.query_batch_max > 1:  # concurrent requests' searches share embedding passes
        # Batches are tasks on the compute thread, between decoding steps.
        retriever = BatchedRetriever(retriever, settings.query_batch_max, settings.query_batch_wait_ms, on=compute)
    engine = make_engine(settings, retriever, generator, edits=serving.edits)
    return Services(engine=engine, serving=serving)


def prepare(settings: Settings) -> None:
    """Do the slow one-time work before serving: convert the generator, build the demo index.
    Cheap when both exist already (a second start takes seconds)."""
    if settings.index_path is not None:
        read_manifest(settings.index_path)  # fail now, with a clear message, if it is no artifact
    resolve_generator(settings.generator_model, settings.cache_dir)
    first = settings.database_url is None and open_registry(settings).serving() is None  # else load_indexes sees
    if settings.index_path is None and (first or settings.demo):
        demo_index(settings, lambda: on_compute(lambda: make_encoder(settings)))
