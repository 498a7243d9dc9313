"""Model and index preparation for the service and the CLI (this is where torch gets imported)."""

import logging
from importlib.resources import files
from pathlib import Path

import torch

from indexer.artifact import read_manifest
from indexer.build import BuildConfig, build_artifact
from indexer.chunking import ChunkingConfig
from indexer.sources import read_corpus
from reader import builtin  # noqa: F401  (registers the built-in readers)
from reader.base import ReaderConfig, create_reader, reader_names
from reader.generator import Generator, resolve_generator
from retriever.dense import DenseRetriever
from retriever.encoder import Encoder
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


def ensure_demo_index(settings: Settings, encoder: Encoder) -> Path:
    """Build the demo index from the bundled corpus unless it exists already."""
    path = settings.demo_index_path
    if not path.exists():
        log.info("building the demo index at %s", path)
        build_artifact(read_corpus([DEMO_CORPUS]), path, encoder, build_config(settings))
    return path


def load_engine(settings: Settings, encoder: Encoder | None = None, generator: Generator | None = None) -> QAEngine:
    configure_threads(settings)
    encoder = encoder or Encoder(settings.retriever_model)
    if settings.index_path is None:
        ensure_demo_index(settings, encoder)
    retriever = DenseRetriever(
        settings.serving_index_path, encoder, ef_search=settings.hnsw_ef_search, nprobe=settings.ivf_nprobe
    )
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
    if settings.index_path is None and not settings.demo_index_path.exists():
        configure_threads(settings)
        ensure_demo_index(settings, Encoder(settings.retriever_model))
