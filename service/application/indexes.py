"""Index administration while serving: switch the serving version, roll back, and refresh
(compact the serving version and its delta into a new version).

What serves is a *generation*: one index version plus the delta index of the document changes
after it. A switch or a refresh loads, verifies and warms the new generation while the old one
keeps answering, brings its delta up to date, and swaps it in with one reference assignment;
the pointer is persisted and old versions that no request holds any more are pruned.

Two locks, neither taken by queries: `_switch_lock` serializes switches and refreshes;
`_apply_lock` orders delta updates (after each ingested batch) against the swap, so no
acknowledged change is missing from the generation that serves next.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.chunking import ChunkingConfig
from ragserve.errors import UnknownIndexError
from retriever.hotswap import HotSwapRetriever
from retriever.registry import IndexRegistry, VersionInfo
from service.application.results import SwitchResult

if TYPE_CHECKING:  # imported where used: the HTTP layer imports this module, and must not load faiss or scipy
    from indexer.build import BuildConfig
    from indexer.delta import DeltaFeed
    from indexer.documents import DocumentStore
    from retriever.delta import FreshRetriever
    from retriever.version import VersionRetriever

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
        open_version: Callable[[Path], VersionRetriever],
        store: DocumentStore,
        build_config: BuildConfig,
        keep_versions: int,
    ) -> None:
        serving = registry.serving()
        assert serving is not None, "the registry must have a serving version before it is managed"
        self.registry = registry
        self.store = store
        self.keep_versions = keep_versions
        self._open = open_version
        self._build_config = build_config
        self._switch_lock = threading.Lock()
        self._apply_lock = threading.Lock()
        self._serving = self._generation(registry.path_of(serving))
        self.retriever = HotSwapRetriever(self._serving.retriever)

    def check(self, name: str) -> None:
        if name != self.registry.name:
            raise UnknownIndexError(f"no index named {name!r}; this server serves {self.registry.name!r}")

    def versions(self, name: str) -> list[VersionInfo]:
        self.check(name)
        return self.registry.describe()

    @property
    def delta_chunks(self) -> int:
        return self._serving.feed.delta.chunks

    def catch_up(self) -> dict[str, str]:
        """Bring the serving delta up to date with the document table; {doc id: problem}."""
        with self._apply_lock:
            return self._catch_up(self._serving.feed)

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
        built when the delta is empty."""
        self.check(name)
        started = time.perf_counter()
        with self._switch_lock:
            current = self._serving
            contents = current.feed.delta.contents()
            if contents.empty:
                version = current.index_version
                return SwitchResult(name, version, version, time.perf_counter() - started)
            from indexer.compact import compact_artifact

            base, encoder, config = current.retriever.base.path, current.feed.encoder, self._build_config
            version = self.registry.add(lambda out: compact_artifact(base, contents, out, encoder, config))
            previous, pruned = self._install(self._generation(self.registry.path_of(version)))
        return SwitchResult(name, version, previous, time.perf_counter() - started, pruned, built=True)

    def _generation(self, path: Path) -> Generation:
        """Open (and verify) a version and build its delta; the slow part of a switch."""
        from indexer.delta import DeltaFeed
        from retriever.delta import DeltaIndex, FreshRetriever

        base = self._open(path)
        delta = DeltaIndex(base.encoder.dimension, base.sparse, since=base.manifest.documents_seq)
        feed = DeltaFeed(delta, base.encoder, ChunkingConfig.of(base.manifest.chunking))
        self._catch_up(feed)
        base.search(WARM_UP_QUERY, 1)
        return Generation(FreshRetriever(base, delta), feed)

    def _catch_up(self, feed: DeltaFeed) -> dict[str, str]:
        changes = self.store.changes_since(feed.delta.seq)
        if changes.seq == feed.delta.seq:
            return {}
        return feed.apply(changes.live, changes.deleted, changes.seq)

    def _install(self, new: Generation) -> tuple[str, list[str]]:
        """Swap `new` in; returns the version that served before and the versions pruned. The
        pointer is written first: when that fails (a full disk), nothing has changed."""
        with self._apply_lock:
            self._catch_up(new.feed)  # changes acknowledged while it was being prepared
            self.registry.set_serving(new.index_version)
            old = self.retriever.swap(new.retriever)
            self._serving = new
        pruned = self.registry.prune(self.keep_versions, self.retriever.in_use())
        return old.index_version, pruned
