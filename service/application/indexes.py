"""Index administration while serving: switch the serving version, roll back, and refresh
(compact the serving version and its delta into a new version), and follow what other replicas
of the index did.

What serves is a *generation*: one index version plus the delta index of the document changes
after it. A switch or a refresh loads, verifies and warms the new generation while the old one
keeps answering, brings its delta up to date, and swaps it in with one reference assignment;
the serving pointer (service/application/pointer.py) is changed first, and old versions that no
request and no live replica holds any more are pruned.

The pointer is the one truth of what serves. A replica that finds it naming another version
(`follow`) switches to it without writing it; a refresh first follows, builds from what the
pointer names, and switches only if the pointer still names that version when it is done (a
rollback meanwhile wins over a refresh built from what it replaced).

Two locks, neither taken by queries: `_switch_lock` serializes switches, refreshes and follows;
`_apply_lock` orders delta updates (after each ingested batch) against the swap, so no
acknowledged change is missing from the generation that serves next.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.chunking import ChunkingConfig
from ragserve.errors import PartialReplicaError, SupersededError, UnknownIndexError
from retriever.hotswap import HotSwapRetriever
from retriever.registry import IndexRegistry, VersionInfo
from service.application.results import SwitchResult

if TYPE_CHECKING:  # imported where used: the HTTP layer imports this module, and must not load faiss or scipy
    from indexer.build import BuildConfig
    from indexer.delta import DeltaFeed
    from indexer.documents import DocumentStore
    from retriever.delta import FreshRetriever
    from retriever.version import VersionRetriever
    from service.application.pointer import ServingPointer

WARM_UP_QUERY = "warm-up"


@dataclass(frozen=True, slots=True)
class Generation:
    """What serves: a version with its delta (`retriever`), and what feeds that delta."""

    retriever: FreshRetriever
    feed: DeltaFeed

    @property
    def index_version(self) -> str:
        return self.retriever.index_version


class IndexManager:
    def __init__(
        self,
        registry: IndexRegistry,
        pointer: ServingPointer,
        open_version: Callable[[Path, VersionRetriever | None], VersionRetriever],
        store: DocumentStore,
        build_config: BuildConfig,
        keep_versions: int,
        served_elsewhere: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        serving = pointer.get()
        assert serving is not None, "the pointer must name a serving version before the index is managed"
        self.registry = registry
        self.pointer = pointer
        self.store = store
        self.keep_versions = keep_versions
        self._open = open_version
        self._build_config = build_config
        self._served_elsewhere = served_elsewhere  # versions other replicas serve: never pruned
        self._switch_lock = threading.Lock()
        self._apply_lock = threading.Lock()
        self._serving = self._generation(registry.path_of(serving))
        self.retriever = HotSwapRetriever(self._serving.retriever)

    def check(self, name: str) -> None:
        if name != self.registry.name:
            raise UnknownIndexError(f"no index named {name!r}; this server serves {self.registry.name!r}")

    def versions(self, name: str) -> list[VersionInfo]:
        self.check(name)
        return self.registry.describe(self.pointer.get())

    @property
    def serving_version(self) -> str:
        return self._serving.index_version

    @property
    def served_shards(self) -> list[int]:
        return list(self._serving.retriever.base.shard_numbers)

    @property
    def partial(self) -> bool:
        """Whether this replica serves only some shards of a sharded version (no refresh here)."""
        base = self._serving.retriever.base
        return len(base.shard_numbers) < base.manifest.shard_count

    @property
    def delta_chunks(self) -> int:
        return self._serving.feed.delta.chunks

    @property
    def delta_seq(self) -> int:
        """The document change counter the serving generation includes."""
        return self._serving.feed.delta.seq

    def catch_up(self) -> dict[str, str]:
        """Bring the serving delta up to date with the document table; {doc id: problem}."""
        with self._apply_lock:
            return self._catch_up(self._serving.feed)

    def follow(self) -> SwitchResult | None:
        """Serve the version the pointer names, if this replica serves another; None if not."""
        if self.pointer.get() in (None, self.serving_version):
            return None
        started = time.perf_counter()
        with self._switch_lock:
            previous = self.serving_version
            if not self._follow_locked():
                return None
        return SwitchResult(self.registry.name, self.serving_version, previous, time.perf_counter() - started)

    def _follow_locked(self) -> bool:
        version = self.pointer.get()
        if version is None or version == self.serving_version:
            return False
        self._install(self._generation(self.registry.path_of(version)), publish=False)
        return True

    def switch(self, name: str, version: str) -> SwitchResult:
        """Serve `version` (an existing one) from now on; used by refresh and by rollback."""
        self.check(name)
        path = self.registry.path_of(version)  # validates the id before any file is touched
        started = time.perf_counter()
        with self._switch_lock:
            previous, pruned = self._install(self._generation(path))
        return SwitchResult(name, version, previous, time.perf_counter() - started, pruned)

    def refresh(self, name: str) -> SwitchResult:
        """Fold the serving version and its delta into a new version and serve it. Nothing is
        built when the delta is empty. Raises SupersededError when the pointer changed while it
        was built (a rollback on some replica): the new version is kept, but does not serve."""
        self.check(name)
        if self.partial:
            shards = list(self._serving.retriever.base.shard_numbers)
            raise PartialReplicaError(
                f"this replica serves shards {shards} of {self._serving.retriever.base.manifest.shard_count}: "
                "a refresh folds in every shard's changes, so it runs on a replica that serves them all"
            )
        started = time.perf_counter()
        with self._switch_lock:
            self._follow_locked()  # build from what serves everywhere, not from a stale version
            current = self._serving
            contents = current.feed.delta.contents()
            if contents.empty:
                version = current.index_version
                return SwitchResult(name, version, version, time.perf_counter() - started)
            from indexer.compact import compact_artifact

            base, encoder, config = current.retriever.base.path, current.feed.encoder, self._build_config
            version = self.registry.add(lambda out: compact_artifact(base, contents, out, encoder, config))
            new = self._generation(self.registry.path_of(version))
            previous, pruned = self._install(new, expected=current.index_version)
        return SwitchResult(name, version, previous, time.perf_counter() - started, pruned, built=True)

    def _generation(self, path: Path) -> Generation:
        """Open (and verify) a version and build its delta; the slow part of a switch."""
        from indexer.delta import DeltaFeed
        from retriever.delta import DeltaIndex, FreshRetriever

        current = getattr(self, "_serving", None)
        base = self._open(path, current.retriever.base if current else None)  # unchanged shards are reused
        delta = DeltaIndex(base.encoder.dimension, base.sparse, since=base.manifest.documents_seq)
        feed = DeltaFeed(delta, base.encoder, ChunkingConfig.of(base.manifest.chunking), base.owns)
        self._catch_up(feed)
        base.search(WARM_UP_QUERY, 1)
        return Generation(FreshRetriever(base, delta), feed)

    def _catch_up(self, feed: DeltaFeed) -> dict[str, str]:
        changes = self.store.changes_since(feed.delta.seq)
        if changes.seq == feed.delta.seq:
            return {}
        return feed.apply(changes.live, changes.deleted, changes.seq)

    def _install(self, new: Generation, publish: bool = True, expected: str | None = None) -> tuple[str, list[str]]:
        """Swap `new` in; returns the version that served before and the versions pruned.

        `publish`: point the pointer at it first (when that fails, e.g. a full disk, nothing has
        changed); with `expected`, only if the pointer still names that version. A follower
        (`publish` False) swaps to what the pointer already names."""
        with self._apply_lock:
            self._catch_up(new.feed)  # changes acknowledged while it was being prepared
            if publish and expected is None:
                self.pointer.set(new.index_version)
            elif publish and not self.pointer.replace(expected, new.index_version):
                raise SupersededError(
                    f"the serving version changed while version {new.index_version} was built from "
                    f"{expected} (a switch or rollback): {new.index_version} is kept but does not serve"
                )
            old = self.retriever.swap(new.retriever)
            self._serving = new
        if not publish:
            return old.index_version, []
        protected = {*self.retriever.in_use(), *self._served_elsewhere(), self.pointer.get()}
        pruned = self.registry.prune(self.keep_versions, {v for v in protected if v is not None})
        return old.index_version, pruned
