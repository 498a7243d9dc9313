"""Scatter-gather over shard groups: each query goes to one replica of every group, the top-k merge.

A shard group serves a disjoint subset of a sharded version's shards (setting `serve_shards`),
and scores every chunk with the corpus-wide statistics (retriever/version.py), so a chunk's dense,
BM25 and hybrid score are the same whichever group scores it: the groups' results merge by value.

- **Dense and BM25**: a group's top-k holds every chunk of its shards that the all-shard top-k
  holds, so the merged top-k equals the all-shard search (up to the order of chunks that tie,
  which here go by chunk id).
- **Hybrid**: a group fuses its own candidates, the dense and BM25 top-N *of its shards*, a
  superset of the all-shard candidates that fall in them. Every returned score is the exact fused
  score of its chunk (the fusion depends on the query and the chunk alone: retriever/hybrid.py),
  but a chunk outside the all-shard candidates may be found, and rank above ones the all-shard
  search returns: the router's k-th score is never below the all-shard search's.
- **Versions**: every group must answer from the same index version. During a roll they may
  briefly differ; the router then waits `version_wait_s` and asks every group once more, and
  fails with `ShardsDisagreeError` (503, retry) if they still differ. Results of two versions are
  never merged.
- **Failures**: a group that raises or does not answer within `timeout_s` fails the search with
  `ShardUnavailableError` (503), naming it, unless `allow_partial`: then the result comes from the
  groups that answered, and `RoutedResult.missing` names the others (all failing still fails).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from ragserve.errors import OverloadedError, ShardsDisagreeError, ShardUnavailableError
from ragserve.types import Passage, RetrievalMode, SearchResult
from retriever.base import Retriever


class ShardGroup(Protocol):
    """What answers for a group of shards: a VersionRetriever over them, or a handle to replicas."""

    def search_batch(
        self, queries: Sequence[str], top_k: int, mode: RetrievalMode | None = None
    ) -> list[SearchResult]: ...


@runtime_checkable
class AsyncShardGroup(Protocol):
    """A group that can be awaited (a Serve handle): the router's event-loop path needs no thread."""

    async def search_batch_async(
        self, queries: Sequence[str], top_k: int, mode: RetrievalMode | None = None
    ) -> list[SearchResult]: ...


@dataclass(frozen=True, slots=True)
class RoutedResult(SearchResult):
    """A merged result; `missing` names the groups left out of a partial answer (empty: none)."""

    missing: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """The router's limits (settings `router_*`: service/settings.py)."""

    timeout_s: float = 10.0
    threads: int = 16
    max_in_flight: int = 256
    version_wait_s: float = 0.25
    allow_partial: bool = False


Answers = dict[str, list[SearchResult] | BaseException]  # by group name


class ShardRouter(Retriever):
    """The groups by name (the name is what errors and `missing` say, e.g. "shards 0,1")."""

    def __init__(self, groups: Mapping[str, ShardGroup], config: RouterConfig | None = None) -> None:
        if not groups:
            raise ValueError("a shard router needs at least one shard group")
        self.groups = dict(groups)
        self.config = config or RouterConfig()
        self._pool = concurrent.futures.ThreadPoolExecutor(self.config.threads, "shard-router")
        self._slots = threading.BoundedSemaphore(self.config.max_in_flight)
        self._version = ""

    @property
    def index_version(self) -> str:
        """The version the groups last agreed on ("" before the first search)."""
        return self._version

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def search_batch(self, queries: Sequence[str], top_k: int, mode: RetrievalMode | None = None) -> list[SearchResult]:
        """Fan out on threads and wait (for callers off the event loop, and in-process groups)."""
        if not self._slots.acquire(timeout=self.config.timeout_s):
            raise OverloadedError(f"the shard router has {self.config.max_in_flight} searches in flight")
        try:
            started = time.perf_counter()
            answers = self._gather(queries, top_k, mode)
            if _disagree(answers):
                time.sleep(self.config.version_wait_s)
                answers = self._gather(queries, top_k, mode)
            return list(self._merge(answers, queries, top_k, started))
        finally:
            self._slots.release()

    async def search_batch_async(
        self, queries: Sequence[str], top_k: int, mode: RetrievalMode | None = None
    ) -> list[RoutedResult]:
        """Fan out from the event loop: awaitable groups are awaited, the others run on the pool."""
        if not self._slots.acquire(blocking=False):  # never block the loop: refuse at once
            raise OverloadedError(f"the shard router has {self.config.max_in_flight} searches in flight")
        try:
            started = time.perf_counter()
            answers = await self._gather_async(queries, top_k, mode)
            if _disagree(answers):
                await asyncio.sleep(self.config.version_wait_s)
                answers = await self._gather_async(queries, top_k, mode)
            return self._merge(answers, queries, top_k, started)
        finally:
            self._slots.release()

    async def search_async(self, query: str, top_k: int, mode: RetrievalMode | None = None) -> SearchResult:
        return (await self.search_batch_async([query], top_k, mode))[0]

    def _gather(self, queries: Sequence[str], top_k: int, mode: RetrievalMode | None) -> Answers:
        futures = {name: self._pool.submit(g.search_batch, queries, top_k, mode) for name, g in self.groups.items()}
        concurrent.futures.wait(futures.values(), timeout=self.config.timeout_s)
        return {name: _outcome(future, self.config.timeout_s) for name, future in futures.items()}

    async def _gather_async(self, queries: Sequence[str], top_k: int, mode: RetrievalMode | None) -> Answers:
        async def one(group: ShardGroup) -> list[SearchResult]:
            call: Awaitable[list[SearchResult]]
            if isinstance(group, AsyncShardGroup):
                call = group.search_batch_async(queries, top_k, mode)
            else:
                loop = asyncio.get_running_loop()
                call = loop.run_in_executor(self._pool, group.search_batch, queries, top_k, mode)
            return await asyncio.wait_for(call, self.config.timeout_s)

        names = list(self.groups)
        found = await asyncio.gather(*(one(self.groups[n]) for n in names), return_exceptions=True)
        return {name: _timed_out(got, self.config.timeout_s) for name, got in zip(names, found, strict=True)}

    def _merge(self, answers: Answers, queries: Sequence[str], top_k: int, started: float) -> list[RoutedResult]:
        """The answers as one result per query, or the error the failures and versions call for."""
        failed = {name: got for name, got in answers.items() if isinstance(got, BaseException)}
        ok = {name: got for name, got in answers.items() if not isinstance(got, BaseException)}
        if failed and (not self.config.allow_partial or not ok):
            name, exc = next(iter(failed.items()))
            raise ShardUnavailableError(
                f"shard group {name!r} failed ({len(failed)} of {len(answers)} failed): {_reason(exc)}"
            ) from exc
        for name, results in ok.items():
            if len(results) != len(queries):
                raise ShardUnavailableError(f"shard group {name!r} answered {len(results)} of {len(queries)} queries")
        versions = {r.index_version for results in ok.values() for r in results}
        if len(versions) > 1:
            raise ShardsDisagreeError(
                f"shard groups answer from different index versions {sorted(versions)} (a roll in progress?); retry"
            )
        version = versions.pop() if versions else self._version
        self._version = version
        fanout_ms = (time.perf_counter() - started) * 1000 / max(1, len(queries))
        missing = tuple(sorted(failed))
        per_query = zip(*ok.values(), strict=True)
        return [merge_results(parts, top_k, version, fanout_ms, missing) for parts in per_query]


def merge_results(
    parts: Sequence[SearchResult], top_k: int, version: str, fanout_ms: float, missing: tuple[str, ...] = ()
) -> RoutedResult:
    """One query's results from several groups: by score, best first, ties by chunk id (so the
    answer does not depend on which group answered first), a chunk once, top_k kept; each timing
    phase the slowest group's (they ran at once), `fanout` the router's wall time."""
    seen: dict[str, Passage] = {}
    for passage in (p for part in parts for p in part.passages):
        if passage.chunk_id not in seen or seen[passage.chunk_id].score < passage.score:
            seen[passage.chunk_id] = passage
    best = sorted(seen.values(), key=lambda p: (-p.score, p.chunk_id))[:top_k]
    timings: dict[str, float] = {}
    for part in parts:
        for phase, ms in part.timings_ms.items():
            timings[phase] = max(ms, timings.get(phase, 0.0))
    timings["fanout"] = fanout_ms
    return RoutedResult(best, version, timings, missing)


def _outcome(
    future: concurrent.futures.Future[list[SearchResult]], timeout_s: float
) -> list[SearchResult] | BaseException:
    if not future.done():
        future.cancel()  # still queued: never runs; running: its answer is dropped
        return TimeoutError(f"no answer within {timeout_s:g} s (router_timeout_s)")
    exc = future.exception()
    return exc if exc is not None else future.result()


def _timed_out(got: list[SearchResult] | BaseException, timeout_s: float) -> list[SearchResult] | BaseException:
    if isinstance(got, TimeoutError | asyncio.TimeoutError) and not str(got):
        return TimeoutError(f"no answer within {timeout_s:g} s (router_timeout_s)")
    return got


def _disagree(answers: Answers) -> bool:
    versions = {r.index_version for got in answers.values() if not isinstance(got, BaseException) for r in got}
    return len(versions) > 1


def _reason(exc: BaseException) -> str:
    """A failure in one line: its last (a Ray error carries the remote traceback above its message)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}".rstrip(": ")


# --- the wire format between a shard replica and the router: plain data, no pickled objects -------


def result_to_wire(result: SearchResult) -> dict[str, Any]:
    return {
        "passages": [asdict(p) for p in result.passages],
        "index_version": result.index_version,
        "timings_ms": dict(result.timings_ms),
    }


def result_from_wire(data: Mapping[str, Any]) -> SearchResult:
    passages = [Passage(**p) for p in data["passages"]]
    return SearchResult(passages, str(data["index_version"]), {k: float(v) for k, v in data["timings_ms"].items()})
