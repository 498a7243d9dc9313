"""Model and index preparation for the service and the CLI (this is where torch gets imported)."""

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from importlib.resources import files
from pathlib import Path

import torch

from indexer.artifact import read_manifest, sha256_file
from indexer.build import BuildConfig, build_artifact
from indexer.chunking import CHUNKER_VERSION, ChunkingConfig
from indexer.sources import Document, read_corpus
from reader import builtin  # noqa: F401  (registers the built-in readers)
from reader.base import ReaderConfig, create_reader, reader_names
from reader.generator import Generator, resolve_generator
from retriever.dense import DenseRetriever
from retriever.encoder import Encoder, resolve_retriever, weights_sha256
from service.engine import QAEngine
from service.settings import Settings

log = logging.getLogger(__name__)

DEMO_CORPUS = Path(str(files("indexer").joinpath("data", "demo_corpus.jsonl")))


def configure_threads(settings: Settings) -> None:
    torch.set_num_threads(settings.torch_threads)


def build_config(settings: Settings) -> BuildConfig:
    return BuildConfig(
        chunking=ChunkingConfig(settings.chunk_tokens, settings.overlap_tokens),
        index_factory=settings.index_factory,
        exact_below=settings.exact_search_below,
    )


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


def load_engine(settings: Settings, encoder: Encoder | None = None, generator: Generator | None = None) -> QAEngine:
    configure_threads(settings)
    enc = encoder or Encoder(settings.retriever_model)
    index_path = settings.index_path or demo_index(settings, lambda: enc)
    retriever = DenseRetriever(index_path, enc, ef_search=settings.hnsw_ef_search, nprobe=settings.ivf_nprobe)
    generator = generator or Generator(settings.generator_model, settings.cache_dir)
    config = ReaderConfig(max_new_tokens=settings.max_new_tokens, max_passage_tokens=settings.max_passage_tokens)
    readers = {name: create_reader(name, generator, config) for name in reader_names()}
    return QAEngine(retriever, readers, settings.default_reader)


def prepare(settings: Settings) -> None:
    """Do the slow one-time work before serving: convert the generator, build the demo index.
    Cheap when both exist already (a second start takes seconds)."""
    if settings.index_path is not None:
        read_manifest(settings.index_path)  # fail now, with a clear message, if it is no artifact
    resolve_generator(settings.generator_model, settings.cache_dir)
    if settings.index_path is None:
        demo_index(settings, lambda: Encoder(settings.retriever_model))
