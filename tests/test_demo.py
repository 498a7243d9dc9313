"""The bundled default: demo corpus -> demo index (built once, keyed on what shapes it) -> answers."""

import json
from pathlib import Path

import pytest

from reader.generator import Generator
from retriever.encoder import Encoder
from service.application.loading import DEMO_CORPUS, cached_index_path, load_services
from service.cli import main
from service.settings import Settings


def test_demo_corpus_is_valid_and_sized() -> None:
    docs = [json.loads(line) for line in DEMO_CORPUS.read_text("utf-8").splitlines()]
    assert 250 <= len(docs) <= 400
    assert len({d["id"] for d in docs}) == len(docs)
    assert all(d["text"].strip() and d["title"] for d in docs)


def test_index_key_follows_what_shapes_the_index(tmp_path: Path) -> None:
    base = Settings(home=tmp_path)
    same = cached_index_path(Settings(home=tmp_path), "demo", DEMO_CORPUS)
    assert cached_index_path(base, "demo", DEMO_CORPUS) == same
    assert cached_index_path(Settings(home=tmp_path, chunk_tokens=128), "demo", DEMO_CORPUS) != same
    assert cached_index_path(Settings(home=tmp_path, index_factory="HNSW32"), "demo", DEMO_CORPUS) != same
    assert same.parent == tmp_path / "indexes" and same.name.startswith("demo-")


def test_models_prepare_builds_the_demo_index_and_the_default_answers(
    tmp_path: Path, generator: Generator, encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAGSERVE_HOME", str(tmp_path))
    monkeypatch.setenv("RAGSERVE_GENERATOR_MODEL", str(generator.path))  # already converted
    assert main(["models", "prepare"]) == 0
    (index,) = (tmp_path / "indexes").iterdir()
    built = index.stat().st_mtime
    assert main(["models", "prepare"]) == 0  # second run: nothing rebuilt
    assert index.stat().st_mtime == built

    engine = load_services(Settings(), encoder=encoder, generator=generator).engine
    result = engine.ask("What is the default port of Prometheus?", 1)
    assert result.passages[0].doc_id == "prometheus"
    assert "9090" in result.answer
