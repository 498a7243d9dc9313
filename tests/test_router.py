"""The shard router (retriever/router.py) over in-process shard groups: VersionRetrievers over
disjoint shard subsets of one sharded artifact merge to the all-shard search (dense, BM25), hybrid
returns exact fused scores; failures, timeouts and version disagreement fail clearly."""

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from indexer.build import build_artifact
from ragserve.errors import OverloadedError, ShardsDisagreeError, ShardUnavailableError
from ragserve.types import Passage, RetrievalMode, SearchResult
from retriever.encoder import Encoder
from retriever.router import RoutedResult, RouterConfig, ShardRouter, result_from_wire, result_to_wire
from retriever.shards import shard_of
from retriever.version import VersionRetriever
from tests.defaults import SEARCH, build
from tests.test_shards import QUERIES, assert_same, corpus

SPLITS = {"shards 0,2": [0, 2], "shards 1,3": [1, 3]}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> Path:
    path = tmp_path_factory.mktemp("router") / "s4"
    build_artifact(corpus(60), path, encoder, build(index_factory="Flat", shards=4), progress=False)
    return path


@pytest.fixture(scope="module")
def everything(sharded: Path, encoder: Encoder) -> VersionRetriever:
    return VersionRetriever(sharded, encoder, SEARCH)


@pytest.fixture(scope="module")
def router(sharded: Path, encoder: Encoder) -> ShardRouter:
    groups = {name: VersionRetriever(sharded, encoder, SEARCH, shards=s) for name, s in SPLITS.items()}
    return ShardRouter(groups)


@pytest.mark.parametrize("mode", [RetrievalMode.DENSE, RetrievalMode.SPARSE])
@pytest.mark.parametrize("top_k", [1, 5, 12])
def test_merged_groups_search_like_all_shards(
    router: ShardRouter, everything: VersionRetriever, mode: RetrievalMode, top_k: int
) -> None:
    got = router.search_batch(QUERIES, top_k, mode)
    want = everything.search_batch(QUERIES, top_k, mode)
    for g, w in zip(got, want, strict=True):
        assert len(g.passages) == len(w.passages)
        assert_same(g.passages, w.passages)
        assert g.index_version == w.index_version == router.index_version
    shards_seen = {shard_of(p.doc_id, 4) for r in got for p in r.passages}
    assert shards_seen == {0, 1, 2, 3}  # both groups contributed


def test_hybrid_scores_are_the_exact_fused_scores(router: ShardRouter, everything: VersionRetriever) -> None:
    """Each group fuses over its own shards' candidates (a superset of the all-shard candidates in
    them), so the router may find chunks the all-shard search does not; every score is still the
    chunk's exact fused score, and the router's results are never worse."""
    k = 6
    exact = everything.search_batch(QUERIES, everything.size, RetrievalMode.HYBRID)  # every chunk a candidate
    want = everything.search_batch(QUERIES, k, RetrievalMode.HYBRID)
    got = router.search_batch(QUERIES, k, RetrievalMode.HYBRID)
    for g, w, e in zip(got, want, exact, strict=True):
        fused = {p.chunk_id: p.score for p in e.passages}
        top = {p.chunk_id: p.score for p in w.passages}
        scores = [p.score for p in g.passages]
        assert scores == sorted(scores, reverse=True) and len(scores) == len(w.passages)
        for p in g.passages:
            assert p.score == pytest.approx(fused[p.chunk_id], abs=1e-5)
            if p.chunk_id in top:
                assert p.score == pytest.approx(top[p.chunk_id], abs=1e-5)
        for mine, theirs in zip(scores, [p.score for p in w.passages], strict=True):
            assert mine >= theirs - 1e-5  # rank by rank, at least as good


def test_the_event_loop_path_merges_the_same(router: ShardRouter, everything: VersionRetriever) -> None:
    got = asyncio.run(router.search_batch_async(QUERIES[:4], 5, RetrievalMode.DENSE))
    for g, w in zip(got, everything.search_batch(QUERIES[:4], 5, RetrievalMode.DENSE), strict=True):
        assert_same(g.passages, w.passages)
        assert g.missing == ()
    assert set(got[0].timings_ms) >= {"embed", "search", "fanout"}


def test_the_wire_format_round_trips(everything: VersionRetriever) -> None:
    result = everything.search("copper lantern", 3)
    assert result_from_wire(result_to_wire(result)) == result


# --- failures, with fake groups ---------------------------------------------------------------


def passage(chunk: str, score: float) -> Passage:
    return Passage(chunk, chunk.split(":")[0], "t", "text", score)


class Fake:
    """A group answering fixed passages from `versions` (one per call, the last repeated)."""

    def __init__(self, passages: list[Passage], versions: Sequence[str] = ("v1",), delay_s: float = 0.0) -> None:
        self.passages, self.versions, self.delay_s, self.calls = passages, list(versions), delay_s, 0

    def search_batch(self, queries: Sequence[str], top_k: int, mode: RetrievalMode | None = None) -> list[SearchResult]:
        version = self.versions[min(self.calls, len(self.versions) - 1)]
        self.calls += 1
        time.sleep(self.delay_s)
        return [SearchResult(self.passages[:top_k], version, {"search": 1.0 + self.delay_s}) for _ in queries]


class Broken:
    def search_batch(self, queries: Sequence[str], top_k: int, mode: RetrievalMode | None = None) -> list[SearchResult]:
        raise ConnectionError("replica gone")


A = [passage("a:0", 0.9), passage("a:1", 0.5)]
B = [passage("b:0", 0.7), passage("b:1", 0.5)]


def test_ties_go_by_chunk_id_and_timings_take_the_slowest() -> None:
    router = ShardRouter({"b": Fake(B, delay_s=0.01), "a": Fake(A)})
    (result,) = router.search_batch(["q"], 3)
    assert [p.chunk_id for p in result.passages] == ["a:0", "b:0", "a:1"]
    assert result.timings_ms["search"] == pytest.approx(1.01) and result.timings_ms["fanout"] > 0


def test_a_failing_group_fails_the_search_unless_partial_answers_are_allowed() -> None:
    with pytest.raises(ShardUnavailableError, match=r"'b' failed.*ConnectionError: replica gone"):
        ShardRouter({"a": Fake(A), "b": Broken()}).search_batch(["q"], 2)
    partial = ShardRouter({"a": Fake(A), "b": Broken()}, RouterConfig(allow_partial=True))
    (result,) = partial.search_batch(["q"], 2)
    assert isinstance(result, RoutedResult) and result.missing == ("b",)
    assert [p.chunk_id for p in result.passages] == ["a:0", "a:1"]
    with pytest.raises(ShardUnavailableError):  # nobody answered: no answer
        ShardRouter({"b": Broken()}, RouterConfig(allow_partial=True)).search_batch(["q"], 2)


def test_a_slow_group_times_out() -> None:
    router = ShardRouter({"a": Fake(A), "slow": Fake(B, delay_s=1.0)}, RouterConfig(timeout_s=0.1))
    started = time.monotonic()
    with pytest.raises(ShardUnavailableError, match=r"'slow'.*within 0\.1 s"):
        router.search_batch(["q"], 2)
    assert time.monotonic() - started < 0.8
    with pytest.raises(ShardUnavailableError, match=r"'slow'.*within 0\.1 s"):
        asyncio.run(router.search_batch_async(["q"], 2))


def test_groups_on_different_versions_are_asked_again_then_refused() -> None:
    rolling = Fake(B, versions=["v1", "v2"])  # caught mid-roll: on v2 from its second answer
    router = ShardRouter({"a": Fake(A, versions=["v2"]), "b": rolling}, RouterConfig(version_wait_s=0.01))
    (result,) = router.search_batch(["q"], 2)
    assert result.index_version == "v2" == router.index_version and rolling.calls == 2
    stuck = ShardRouter({"a": Fake(A, versions=["v2"]), "b": Fake(B)}, RouterConfig(version_wait_s=0.01))
    with pytest.raises(ShardsDisagreeError, match=r"\['v1', 'v2'\]"):
        stuck.search_batch(["q"], 2)
    with pytest.raises(ShardsDisagreeError):
        asyncio.run(stuck.search_batch_async(["q"], 2))


def test_searches_beyond_the_in_flight_bound_are_refused() -> None:
    router = ShardRouter({"slow": Fake(A, delay_s=0.3)}, RouterConfig(max_in_flight=1, timeout_s=0.05))

    async def two() -> list[object]:
        return [
            *await asyncio.gather(
                router.search_batch_async(["q"], 1), router.search_batch_async(["q"], 1), return_exceptions=True
            )
        ]

    outcomes = asyncio.run(two())
    assert any(isinstance(o, OverloadedError) for o in outcomes)
