"""The GPU paths (retriever/gpu.py, the encoder's and the generator's device and precision): guards
that are no-ops on a CPU-only machine, run everywhere; agreement of GPU builds, searches, encoders
and readers with the CPU, run where faiss or torch sees a GPU and skipped elsewhere
(bench/gpu_check.py is the SQuAD-scale check of the same)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from ragserve.errors import InvalidInputError
from ragserve.precision import resolve_device, resolve_precision
from ragserve.types import Precision
from reader.generator import Generator
from retriever import faiss_index, gpu
from retriever.encoder import Encoder
from retriever.gpu import CPU_ONLY, GpuOptions
from service.application.loading import make_encoder, make_generator
from service.settings import Settings
from tests.defaults import SETTINGS
from tests.test_readers import PASSAGES, QUESTION, reader

DIM = 384
FAISS_GPUS = gpu.gpu_count()
CUDA = torch.cuda.is_available()
needs_faiss_gpu = pytest.mark.skipif(FAISS_GPUS == 0, reason="faiss sees no GPU (faiss-cpu, or no device)")
cpu_only_faiss = pytest.mark.skipif(FAISS_GPUS > 0, reason="a GPU is present: the guards do work here")
needs_cuda = pytest.mark.skipif(not CUDA, reason="torch sees no CUDA GPU")
EVERYTHING = GpuOptions(build=True, search=True, shard=True)
TEXTS = [
    "Super Bowl 50 was an American football game to determine the champion of the NFL.",
    "The Normans gave their name to Normandy, a region in France.",
    "Which NFL team represented the AFC at Super Bowl 50?",
]


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread() -> Iterator[None]:
    """k-means on a few thousand points is fastest on one thread (and cannot stall on busy cores)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def corpus() -> tuple[np.ndarray, np.ndarray]:
    """4,000 clustered unit vectors and 50 queries near some of them."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, DIM)).astype(np.float32)
    vectors = centres[rng.integers(0, 40, 4_000)] + 0.6 * rng.standard_normal((4_000, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:50] + 0.2 * rng.standard_normal((50, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return vectors, queries


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of each query's ids in `a` also in `b` (both (Q, k))."""
    return float(np.mean([len(set(x.tolist()) & set(y.tolist())) / len(x) for x, y in zip(a, b, strict=True)]))


# --- everywhere -----------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF16,Flat", "IVF16,PQ48"])
def test_cpu_only_options_leave_every_index_where_it_is(factory: str) -> None:
    index = faiss_index.new_index(factory, DIM)
    for move in (gpu.for_build, gpu.for_training, gpu.for_search):
        assert move(index, CPU_ONLY) is index
    assert not gpu.on_gpu(index)
    assert gpu.to_cpu(index) is index


@cpu_only_faiss
@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "IVF16,PQ48", "OPQ48,IVF16,PQ48"])
def test_gpu_options_are_no_ops_without_gpus(factory: str) -> None:
    index = faiss_index.new_index(factory, DIM)
    for move in (gpu.for_build, gpu.for_training, gpu.for_search):
        assert move(index, EVERYTHING) is index


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        ("Flat", True),
        ("IVF16,Flat", True),
        ("IVF16,SQ8", True),
        ("IVF16,PQ48", True),
        ("OPQ48,IVF16,PQ48", True),
        ("HNSW32", False),
        ("IVF16,PQ48x4fs", False),
    ],
)
def test_which_index_types_have_a_gpu_implementation(factory: str, expected: bool) -> None:
    assert gpu.has_gpu_implementation(faiss_index.new_index(factory, DIM)) is expected


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "IVF16,PQ48"])
def test_a_build_asked_for_the_gpus_gives_a_cpu_index_that_agrees(
    factory: str, corpus: tuple[np.ndarray, np.ndarray]
) -> None:
    """On a CPU-only machine the GPU options change nothing; on a GPU one the build runs there and
    still comes back as a CPU index (artifacts open anywhere) that finds what the CPU's does."""
    vectors, queries = corpus
    cpu_rows = faiss_index.build(vectors, factory).search(queries, 10)[1]
    built = faiss_index.build(vectors, factory, options=EVERYTHING)
    assert not gpu.on_gpu(built)
    assert built.ntotal == vectors.shape[0]
    rows = built.search(queries, 10)[1]
    assert overlap(rows, cpu_rows) >= (1.0 if FAISS_GPUS == 0 or factory == "Flat" else 0.9)


def test_fp16_is_refused_off_cuda() -> None:
    with pytest.raises(InvalidInputError, match="fp16 runs only on a CUDA device"):
        resolve_precision("fp16", "cpu")
    assert resolve_precision("fp16", "cuda") is Precision.FP16
    assert resolve_precision("bf16", "cpu") is Precision.BF16


@pytest.mark.skipif(CUDA, reason="torch sees a CUDA GPU")
def test_cuda_is_refused_where_torch_sees_none() -> None:
    assert resolve_device("auto", "retriever") == "cpu"
    assert resolve_device(None, "retriever") == "cpu"
    with pytest.raises(InvalidInputError, match="retriever device 'cuda': torch sees no CUDA GPU"):
        resolve_device("cuda", "retriever")
    with pytest.raises(InvalidInputError, match="torch sees no CUDA GPU"):
        Encoder("all-MiniLM-L6-v2", "fp32", "cuda")


@pytest.mark.skipif(CUDA, reason="torch sees a CUDA GPU")
def test_the_retriever_device_setting_reaches_the_encoder(tmp_path: Path) -> None:
    """RAGSERVE_RETRIEVER_DEVICE is what the service's encoder is built with, not a dead setting."""
    settings = Settings(home=tmp_path)
    assert make_encoder(settings.model_copy(update={"retriever_device": "cpu"})).device == "cpu"
    with pytest.raises(InvalidInputError, match="torch sees no CUDA GPU"):
        make_encoder(settings.model_copy(update={"retriever_device": "cuda"}))


# --- where a GPU is present -----------------------------------------------------------------------


@needs_faiss_gpu
@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "IVF16,PQ48"])
@pytest.mark.parametrize("shard", [False, True])
def test_search_on_the_gpus_agrees_with_the_cpu(
    factory: str, shard: bool, corpus: tuple[np.ndarray, np.ndarray]
) -> None:
    vectors, queries = corpus
    index = faiss_index.build(vectors, factory)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = 16
    cpu_scores, cpu_rows = index.search(queries, 10)
    on_gpus = gpu.for_search(index, GpuOptions(search=True, shard=shard))
    assert gpu.on_gpu(on_gpus)
    scores, rows = on_gpus.search(queries, 10)
    assert overlap(rows, cpu_rows) >= (0.99 if factory != "IVF16,PQ48" else 0.9)
    if factory == "Flat":
        np.testing.assert_allclose(scores, cpu_scores, atol=1e-4)
    back = gpu.to_cpu(on_gpus)
    assert not gpu.on_gpu(back) and back.ntotal == index.ntotal


@needs_faiss_gpu
def test_hnsw_stays_on_the_cpu_with_gpus_present(corpus: tuple[np.ndarray, np.ndarray]) -> None:
    index = faiss_index.build(corpus[0][:500], "HNSW32")
    assert gpu.for_search(index, GpuOptions(search=True)) is index


@needs_faiss_gpu
def test_training_on_a_gpu_gives_a_cpu_index_fit_to_fill(corpus: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, queries = corpus
    trained = faiss_index.train(vectors, "IVF16,Flat", GpuOptions(build=True))
    assert trained is not None and trained.is_trained and not gpu.on_gpu(trained)
    filled = faiss_index.build(vectors, "IVF16,Flat", trained=trained)
    reference = faiss_index.build(vectors, "Flat").search(queries, 10)[1]
    faiss.extract_index_ivf(filled).nprobe = 16
    assert overlap(filled.search(queries, 10)[1], reference) >= 0.9


@needs_cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_on_cuda_points_where_fp32_on_the_cpu_does(precision: str, encoder: Encoder) -> None:
    on_cuda = Encoder("all-MiniLM-L6-v2", precision, "cuda")
    assert on_cuda.device == "cuda" and on_cuda.precision is Precision(precision)
    reference = encoder.encode_queries(TEXTS)  # the session's CPU fp32 encoder
    vectors = on_cuda.encode_queries(TEXTS)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    assert float(np.min(np.sum(vectors * reference, axis=1))) > 0.99


# --- the generator's device -----------------------------------------------------------------------


@pytest.mark.skipif(CUDA, reason="torch sees a CUDA GPU")
def test_the_generator_device_setting_reaches_the_generator(tmp_path: Path, generator: Generator) -> None:
    """RAGSERVE_GENERATOR_DEVICE is what the service's generator is built with (refused before any
    weights are read); `auto` is the CPU here."""
    assert generator.device == "cpu" and Settings(home=tmp_path).generator_device == "auto"
    with pytest.raises(InvalidInputError, match="generator device 'cuda': torch sees no CUDA GPU"):
        make_generator(Settings(home=tmp_path).model_copy(update={"generator_device": "cuda"}))
    with pytest.raises(InvalidInputError, match="fp16 runs only on a CUDA device"):
        make_generator(Settings(home=tmp_path).model_copy(update={"generator_precision": "fp16"}))


@pytest.fixture(scope="module")
def cuda_generators(cache_home: Path) -> dict[str, Generator]:
    return {p: Generator(SETTINGS.generator_model, cache_home, p, "cuda") for p in ("fp32", "bf16", "fp16")}


@needs_cuda
@pytest.mark.parametrize("name", ["stuff", "rag-token", "rag-sequence", "fusion", "retro"])
def test_every_reader_on_a_cuda_generator_answers_as_on_the_cpu(
    generator: Generator, cuda_generators: dict[str, Generator], name: str
) -> None:
    """fp32 on the GPU answers what fp32 on the CPU does; bf16 and fp16 the same short answer."""
    expected = reader(generator, name).answer(QUESTION, PASSAGES).text
    for precision, on_cuda in cuda_generators.items():
        assert on_cuda.device == "cuda" and next(on_cuda.model.parameters()).is_cuda
        assert reader(on_cuda, name).answer(QUESTION, PASSAGES).text == expected, precision


@needs_cuda
def test_concurrent_answers_on_a_cuda_generator_batch_like_lone_ones(cuda_generators: dict[str, Generator]) -> None:
    """The continuous batcher (prefill, merge, steps) keeps every tensor on the GPU."""
    stuff = reader(cuda_generators["fp32"], "stuff")
    alone = [stuff.answer(QUESTION, [p]).text for p in PASSAGES]
    with ThreadPoolExecutor(len(PASSAGES)) as pool:
        together = list(pool.map(lambda p: stuff.answer(QUESTION, [p]).text, PASSAGES))
    assert together == alone
