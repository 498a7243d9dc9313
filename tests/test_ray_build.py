"""The distributed build (issue 18, indexer/ray_build.py) on a real local Ray with 2 CPUs: the
artifact it writes equals the local build's (counts, chunks row for row, vectors, BM25 files,
search results), unsharded and in 3 shards over a shared IVF quantizer; bad input is refused with
the local build's messages; `ragserve index build --engine ray` runs end to end."""

from __future__ import annotations

import importlib.util
import json
import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from indexer.build import BuildConfig, build_artifact
from indexer.sources import read_corpus
from ragserve.errors import InvalidInputError
from ragserve.types import RetrievalMode
from retriever import faiss_index
from retriever.artifact import read_manifest, shard_folders, verify_artifact
from retriever.docstore import Docstore
from retriever.encoder import Encoder
from retriever.version import VersionRetriever
from service.cli import main
from tests.defaults import SEARCH, SETTINGS, build

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None or importlib.util.find_spec("pandas") is None,
    reason="the Ray build needs Ray Data: pip install 'ray[data]'",
)

PLACES = ["harbour", "glacier", "orchard", "railway", "lantern", "quarry", "mill", "abbey"]
NAMES = ["Ada", "Bo", "Cy"]
QUERIES = [f"when was the {p} rebuilt" for p in PLACES] + ["copper roof of the mill", "who painted the abbey"]


def story(rng: random.Random, place: str, sentences: int) -> str:
    """A text of `sentences` sentences (about 14 tokens each): long ones are cut into several chunks."""
    return " ".join(
        f"The {place} of {rng.choice(PLACES)} was rebuilt in {1700 + rng.randrange(300)} by {rng.choice(NAMES)}."
        for _ in range(sentences)
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of every kind of corpus file: JSONL (with an empty document and metadata),
    Markdown (its title from the heading) and Parquet (metadata as JSON text)."""
    rng = random.Random(18)
    root = tmp_path_factory.mktemp("corpus")
    lines = [
        {
            "id": f"j{i}",
            "title": f"Story {i}",
            "text": story(rng, PLACES[i % 8], rng.choice([2, 5, 30])),
            "metadata": {"n": i},
        }
        for i in range(24)
    ]
    lines.insert(5, {"id": "blank", "text": "   "})
    (root / "a.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n", "utf-8")
    (root / "b.md").write_text("# Abbey works\n\n" + story(rng, "abbey", 40), "utf-8")
    rows = [(f"p{i}", f"Parquet {i}", story(rng, PLACES[i % 8], 1 + i), json.dumps({"row": i})) for i in range(12)]
    table = pa.table({k: [r[j] for r in rows] for j, k in enumerate(["id", "title", "text", "metadata"])})
    pq.write_table(table, root / "c.parquet")
    return root


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """A local Ray with 2 CPUs for the module (one already running is used as it is)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    yield
    if started:
        ray.shutdown()


def ray_config(config: BuildConfig) -> object:
    from indexer.ray_build import RayBuildConfig

    return RayBuildConfig.of(config, SETTINGS.model_copy(update={"ray_writer_in_flight": 1, "ray_block_mib": 1}))


def build_both(corpus: Path, root: Path, encoder: Encoder, config: BuildConfig) -> tuple[Path, Path]:
    from indexer.ray_build import build_artifact_ray

    local, distributed = root / "local", root / "ray"
    build_artifact(read_corpus([corpus]), local, encoder, config, progress=False)
    build_artifact_ray([corpus], distributed, encoder, ray_config(config), progress=False)  # type: ignore[arg-type]
    return local, distributed


def assert_same_artifact(local: Path, distributed: Path, encoder: Encoder, nprobe: int) -> None:
    want, got = read_manifest(local), read_manifest(distributed)
    drop = {"build_ms"}
    assert {k: v for k, v in got.counts.items() if k not in drop} == {
        k: v for k, v in want.counts.items() if k not in drop
    }
    assert (got.index_factory, got.chunking, got.shards) == (want.index_factory, want.chunking, want.shards)
    assert sorted(got.files) == sorted(want.files)
    for name, info in want.files.items():  # docstore, BM25 files: byte for byte; FAISS: float noise
        if not name.endswith((".faiss", ".sqlite")):
            assert got.files[name]["sha256"] == info["sha256"], name
    for folder in shard_folders(want):
        rows_want = [c for batch in Docstore(local / folder / "docstore.sqlite").scan() for c in batch]
        rows_got = [c for batch in Docstore(distributed / folder / "docstore.sqlite").scan() for c in batch]
        assert rows_got == rows_want
        if want.index_factory == "Flat":
            vectors = [faiss_index.read_cpu(p / folder / "index.faiss") for p in (local, distributed)]
            a, b = (v.reconstruct_n(0, v.ntotal) for v in vectors)
            np.testing.assert_allclose(b, a, atol=2e-5)
    search = replace(SEARCH, nprobe=nprobe)
    whole, ray_built = VersionRetriever(local, encoder, search), VersionRetriever(distributed, encoder, search)
    for mode in RetrievalMode:
        pairs = zip(ray_built.search_batch(QUERIES, 5, mode), whole.search_batch(QUERIES, 5, mode), strict=True)
        for g, w in pairs:
            assert [p.chunk_id for p in g.passages] == [p.chunk_id for p in w.passages]
            np.testing.assert_allclose([p.score for p in g.passages], [p.score for p in w.passages], atol=1e-4)


@pytest.mark.parametrize(("shards", "factory", "nprobe"), [(1, None, 1), (3, "IVF4,Flat", 4)])
def test_a_ray_build_equals_the_local_build(
    ray_cluster: None, corpus: Path, encoder: Encoder, tmp_path: Path, shards: int, factory: str | None, nprobe: int
) -> None:
    local, distributed = build_both(corpus, tmp_path, encoder, build(shards=shards, index_factory=factory))
    manifest = verify_artifact(distributed)
    assert manifest.counts["documents"] == 38 and manifest.counts["empty_documents"] == 1
    assert manifest.counts["chunks"] > manifest.counts["documents"]  # long documents made several chunks
    assert ("quantizer.faiss" in manifest.files) == (shards > 1)
    assert not list(tmp_path.glob(".staging-*")) and not [p for p in distributed.rglob(".ids-*")]
    assert_same_artifact(local, distributed, encoder, nprobe)


def bad_corpus(root: Path, lines: list[str]) -> Path:
    root.mkdir()
    (root / "a.jsonl").write_text('{"id": "x", "text": "A first document."}\n', "utf-8")
    (root / "b.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
    return root


@pytest.mark.parametrize(
    ("lines", "shards"),
    [
        (['{"id": "y", "text": "Fine."}', '{"id": "x", "text": "The same id again."}'], 3),
        (['{"id": "y", "text": "Fine."}', "{oops"], 1),
    ],
    ids=["duplicate-id", "malformed-line"],
)
def test_bad_input_is_refused_as_the_local_build_refuses_it(
    ray_cluster: None, encoder: Encoder, tmp_path: Path, lines: list[str], shards: int
) -> None:
    from indexer.ray_build import build_artifact_ray

    corpus = bad_corpus(tmp_path / "corpus", lines)
    config = build(shards=shards)
    with pytest.raises(InvalidInputError) as local:
        build_artifact(read_corpus([corpus]), tmp_path / "local", encoder, config, progress=False)
    with pytest.raises(InvalidInputError) as distributed:
        build_artifact_ray([corpus], tmp_path / "ray", encoder, ray_config(config), progress=False)  # type: ignore[arg-type]
    assert str(distributed.value) == str(local.value)
    assert type(distributed.value) is type(local.value)
    assert not (tmp_path / "ray").exists() and not list(tmp_path.glob(".staging-ray-*"))


def test_the_cli_builds_on_ray(
    ray_cluster: None, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "idx"
    args = ["index", "build", "--engine", "ray", "--input", str(corpus), "--out", str(out), "--no-progress"]
    assert main([*args, "--shards", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["engine"] == "ray" and report["counts"]["documents"] == 38
    assert report["chunks_per_second"] > 0 and len(read_manifest(out).shards) == 2
    assert main(["index", "verify", str(out)]) == 0
    assert main(["index", "build", "--address", "auto", "--input", str(corpus), "--out", str(tmp_path / "x")]) == 2
    assert "--address needs --engine ray" in capsys.readouterr().err


def test_pdf_html_docx_and_csv_build_on_ray_as_locally(ray_cluster: None, encoder: Encoder, tmp_path: Path) -> None:
    """The read tasks use the local readers: pages, titles, CSV column mappings and skipped files
    come out the same, and the artifacts are equal."""
    from indexer.ray_build import build_artifact_ray
    from indexer.sources import CsvColumns, ReadOptions, Skipped
    from tests.test_formats import ARTICLE, make_docx, make_html, make_pdf

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "report.pdf").write_bytes(make_pdf(["Page one of the dam report. " * 8, "", ARTICLE[1]], "Dam report"))
    (corpus / "locked.pdf").write_bytes(make_pdf(["A secret page."], user_password="pw"))
    (corpus / "news.html").write_text(make_html(ARTICLE), "utf-8")
    make_docx(corpus / "cellar.docx", core_title="Cellar")
    (corpus / "faq.csv").write_text("Q,A,Ref\nWhere are the keys?,In the blue box.,k1\nWho?,,k2\n", "utf-8")
    options = ReadOptions(CsvColumns(id="Ref", title="Q", text="A"))
    local_skips: list[Skipped] = []
    ray_skips: list[Skipped] = []
    config = build()
    build_artifact(read_corpus([corpus], options, local_skips.append), tmp_path / "local", encoder, config, False)
    build_artifact_ray([corpus], tmp_path / "ray", encoder, ray_config(config), False, options, ray_skips.append)  # type: ignore[arg-type]
    assert sorted(map(str, ray_skips)) == sorted(map(str, local_skips)) and len(local_skips) == 2  # locked; row 3
    assert read_manifest(tmp_path / "ray").counts["documents"] == 4
    assert_same_artifact(tmp_path / "local", tmp_path / "ray", encoder, 1)


def test_the_cli_builds_on_ray_into_a_registry(
    ray_cluster: None, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from retriever.registry import IndexRegistry

    monkeypatch.setenv("RAGSERVE_REGISTRY_DIR", str(tmp_path / "registry"))
    args = ["index", "build", "--engine", "ray", "--input", str(corpus), "--registry", "notes", "--no-progress"]
    versions = []
    for _ in range(2):
        assert main(args) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["engine"] == "ray" and verify_artifact(Path(report["artifact"]))
        versions.append(report["version"])
    registry = IndexRegistry(tmp_path / "registry", "notes")
    assert registry.version_ids() == versions and len(set(versions)) == 2
    assert registry.serving() is None  # adding a version does not switch to it


@pytest.mark.parametrize(
    ("requested", "threads", "resources", "pool"),
    [
        (0, 2, {"CPU": 2.0}, (1, 1.0, 0.0)),  # this machine: one actor, one CPU left to the chunk tasks
        (0, 2, {"CPU": 16.0}, (5, 2.0, 0.0)),  # 16 // 3 actors of 2 threads
        (0, 2, {"CPU": 16.0, "GPU": 4.0}, (4, 2.0, 1.0)),  # one actor per GPU, a GPU each
        (2, 4, {"CPU": 8.0, "GPU": 4.0}, (2, 3.5, 1.0)),  # asked for 2: their CPUs share what is left
        (3, 1, {"CPU": 1.0}, (3, 1 / 3, 0.0)),  # one CPU: the actors share it, the chunk tasks too
    ],
)
def test_the_embedding_pool_takes_a_gpu_per_actor_where_there_are_gpus(
    requested: int, threads: int, resources: dict[str, float], pool: tuple[int, float, float]
) -> None:
    from indexer.ray_build import embed_pool

    assert embed_pool(requested, threads, resources) == pytest.approx(pool)
