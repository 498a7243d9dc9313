"""The serving pointer: which version of an index serves, the one truth every replica follows
(service/application/replicas.py). With SQLite it is the registry's serving.json (`FilePointer`),
with PostgreSQL a row changed in a transaction (service/application/pg_replicas.py).

`replace` is a compare-and-set: a refresh switches only if the version it was built from still
serves, so a rollback made meanwhile on another replica is not undone.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
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

    def _locked(self) -> _FileLock:
        return _FileLock(self._lock)


class _FileLock:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        self._fh = self.path.open("a")
        fcntl.flock(self._fh, fcntl.LOCK_EX)

    def __exit__(self, *_: object) -> None:
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()
