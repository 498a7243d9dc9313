"""The serving pointer: which version of an index serves, the one truth every replica follows
(service/application/replicas.py). With SQLite it is the registry's serving.json (`FilePointer`),
with PostgreSQL a row changed in a transaction (service/application/pg_replicas.py).

`replace` is a compare-and-set: a refresh switches only if the version it was built from still
serves, so a rollback made meanwhile on another replica is not undone.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from retriever.registry import IndexRegistry

POINTER_LOCK = ".pointer.lock"  # beside serving.json: orders the pointer's compare-and-set writers


class ServingPointer(Protocol):
    def get(self) -> str | None:
        """The version that serves; None before the first one."""

    def set(self, version: str) -> None:
        """Serve `version` from now on (a switch, a rollback)."""

    def replace(self, expected: str | None, version: str) -> bool:
        """Serve `version` if `expected` still serves (a refresh built from it); whether it did."""


class FilePointer:
    """The registry's serving.json; a lock file orders compare-and-set writers of all processes."""

    def __init__(self, registry: IndexRegistry) -> None:
        self.registry = registry
        self._lock = registry.home / POINTER_LOCK

    def get(self) -> str | None:
        return self.registry.serving()

    def set(self, version: str) -> None:
        with self._locked():
            self.registry.set_serving(version)

    def replace(self, expected: str | None, version: str) -> bool:
        with self._locked():
            if self.registry.serving() != expected:
                return False
            self.registry.set_serving(version)
            return True

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes (or the process dies)
            yield
