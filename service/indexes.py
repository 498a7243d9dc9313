"""Index administration: list versions, switch the serving one, roll back — while serving.

A switch loads and warms the new version while the old one keeps answering, swaps the reference,
persists the pointer, and prunes old versions that no request holds any more. Switches are
serialized by their own lock; queries never take it.
"""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from retriever.base import Retriever
from retriever.errors import UnknownIndexError
from retriever.hotswap import HotSwapRetriever
from retriever.registry import IndexRegistry, VersionInfo

WARM_UP_QUERY = "warm-up"


@dataclass(frozen=True, slots=True)
class SwitchResult:
    index: str
    serving: str
    previous: str
    seconds: float
    pruned: list[str]


class IndexManager:
    def __init__(
        self,
        registry: IndexRegistry,
        open_version: Callable[[Path], Retriever],
        keep_versions: int,
    ) -> None:
        serving = registry.serving()
        assert serving is not None, "the registry must have a serving version before it is managed"
        self.registry = registry
        self._open = open_version
        self.keep_versions = keep_versions
        self.retriever = HotSwapRetriever(open_version(registry.path_of(serving)))
        self._switch_lock = threading.Lock()

    def _check(self, name: str) -> None:
        if name != self.registry.name:
            raise UnknownIndexError(f"no index named {name!r}; this server serves {self.registry.name!r}")

    def versions(self, name: str) -> list[VersionInfo]:
        self._check(name)
        return self.registry.describe()

    def switch(self, name: str, version: str) -> SwitchResult:
        """Serve `version` (an existing one) from now on; used by refresh and by rollback."""
        self._check(name)
        path = self.registry.path_of(version)  # validates the id before any file is touched
        started = time.perf_counter()
        with self._switch_lock:
            new = self._open(path)  # verifies checksums and the retriever model
            new.search(WARM_UP_QUERY, 1)
            old = self.retriever.swap(new)
            self.registry.set_serving(version)
            pruned = self.registry.prune(self.keep_versions, self.retriever.in_use())
        return SwitchResult(name, version, old.index_version, time.perf_counter() - started, pruned)
