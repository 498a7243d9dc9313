"""Real models, loaded once per test session; a tiny corpus and its index built once."""

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from fastapi import FastAPI
from fastapi.testclient import TestClient

from indexer.build import build_artifact
from ragserve.types import Document, Precision
from reader.generator import Generator
from retriever.encoder import Encoder
from service.application.loading import load_services
from service.http.app import create_app
from service.settings import Settings
from tests.defaults import BUILD, SETTINGS
from tests.dockerhelp import engine, image, standins  # noqa: F401  (session fixtures of the container tests)
from tests.live import live_server  # noqa: F401  (one real server process, for the real clients' tests)

# Facts that exist nowhere but here, so a right answer proves the answer came from retrieval.
TINY_CORPUS = [
    Document(
        "festival",
        "Zorblat festival",
        "The Zorblat festival is held every spring in the town of Quenmoor. "
        "Visitors eat roasted chestnuts and watch the lantern parade.",
    ),
    Document(
        "quenmoor",
        "Quenmoor",
        "Quenmoor is a small river town with 4,200 inhabitants. The mayor of Quenmoor is Ilse Varga, elected in 2019.",
    ),
    Document(
        "bridge",
        "Harrow bridge",
        "The Harrow bridge over the river Tessel was built from grey granite in 1871 by the engineer Tomas Brell.",
    ),
    Document(
        "ferment",
        "Velt cheese",
        "Velt cheese is ripened for nine months in limestone caves near the village of Oskar Hollow.",
    ),
    Document("empty", "Nothing", "   "),
]


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("RAGSERVE_TORCH_THREADS", "2")))


@pytest.fixture(scope="session")
def cache_home() -> Path:
    """Converted models are cached per machine (as in production), not per test run."""
    return Path(os.environ.get("RAGSERVE_HOME", "~/.cache/ragserve")).expanduser()


@pytest.fixture(scope="session")
def encoder() -> Encoder:
    return Encoder(SETTINGS.retriever_model, precision=Precision.FP32)


@pytest.fixture(scope="session")
def generator(cache_home: Path) -> Generator:
    return Generator(SETTINGS.generator_model, cache_home, Precision.FP32)


@pytest.fixture(scope="session")
def bf16_generator(cache_home: Path) -> Generator:
    """The same generator in bf16: what `generator_precision` auto serves on a CPU that multiplies
    bf16 natively (ragserve/precision.py)."""
    return Generator(SETTINGS.generator_model, cache_home, Precision.BF16)


@pytest.fixture(scope="session")
def tiny_index(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> Path:
    out = tmp_path_factory.mktemp("indexes") / "tiny"
    build_artifact(TINY_CORPUS, out, encoder, BUILD, progress=False)
    return out


@pytest.fixture(scope="session")
def settings(tiny_index: Path, cache_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # models are cached per machine; index versions and adapters go to folders of this test session's
    # own; no default adapter, so answers are the base model's (tests/test_adapters.py covers them)
    return Settings(
        home=cache_home,
        index_path=tiny_index,
        registry_dir=tmp_path_factory.mktemp("registry"),
        adapters_dir=tmp_path_factory.mktemp("adapters"),
        adapter="none",
    )


def local_client(app: FastAPI, **kwargs: Any) -> TestClient:
    """A test client that is what a local operator is: a loopback address naming `localhost`
    (token-less admin routes answer nobody else, service/http/auth.py)."""
    return TestClient(app, base_url="http://localhost", client=("127.0.0.1", 50000), **kwargs)


def wait_job(client: TestClient, job_id: str, seconds: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} not finished")


def wait_ready(client: TestClient, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"not ready after {seconds}s: {client.get('/readyz').json()}")


@pytest.fixture(scope="session")
def app(settings: Settings, encoder: Encoder, generator: Generator) -> FastAPI:
    return create_app(settings, loader=lambda s: load_services(s, encoder=encoder, generator=generator))


@pytest.fixture(scope="session")
def client(app: FastAPI) -> Iterator[TestClient]:
    with local_client(app) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A real PostgreSQL server for the session (bench/pgserver.py). Where its binaries are missing
    the tests that need it are skipped, unless RAGSERVE_REQUIRE_POSTGRES=1 (as .ci/run sets)."""
    from bench import pgserver

    if not pgserver.available():
        if os.environ.get("RAGSERVE_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL binaries (initdb, pg_ctl) not found, and RAGSERVE_REQUIRE_POSTGRES=1")
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found")
    with pgserver.postgres_server() as server:
        yield server


@pytest.fixture()
def database_url(postgres: Any) -> str:
    """A new, empty database on the session's server: one per test."""
    url: str = postgres.new_database()
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """Each test that takes it runs on both stores: None (SQLite in the registry) or a PostgreSQL URL."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("database_url")
    return url


@pytest.fixture
def one_faiss_thread() -> Iterator[None]:
    """FAISS on one thread for the test: k-means on tiny data is dominated by OpenMP hand-offs on a
    shared machine, so one thread is faster (and cannot stall on busy cores)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)
