"""Replicas that agree: every process serving an index follows one serving pointer and one change
log, and says what it serves.

- The **serving pointer** (service/application/pointer.py: index -> version) is the one truth of
  what serves: a switch, refresh or rollback on any replica changes it, and every replica follows it.
- The **change log** is the document table (indexer/documents.py): a replica's delta index
  follows it, so a document acknowledged on any replica is searchable on every replica.
- The **replica list** (`ReplicaBoard`): each replica writes a heartbeat with the version it
  serves and the change counter its delta includes; `/admin/indexes` lists the live ones.

`Replica` runs this for one process: a follower thread wakes on a notification (PostgreSQL's
LISTEN) or every `follow_poll_s` (the fallback, and SQLite's only way), switches to the pointer's
version when it changed and applies the changes the delta lacks; a heartbeat thread writes the
replica's state every `heartbeat_s` and renews the leases of the jobs it runs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ragserve.sqlite import create, session

if TYPE_CHECKING:
    from service.application.indexes import IndexManager
    from service.application.jobqueue import JobQueue

log = logging.getLogger(__name__)

SERVING, DRAINING = "serving", "draining"
FORGET_AFTER_S = 3_600.0  # rows of replicas silent this long are deleted
FOLLOW_BACKOFF_MAX_S = 30.0  # after failed follows the waits double from the poll interval up to this


def new_replica_id() -> str:
    """Unique per process start: host, pid and a random part (a pid is reused after a restart)."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """What one replica reports of itself."""

    id: str
    host: str
    pid: int
    version: str  # the index version it serves
    seq: int  # the document change counter its delta includes
    state: str  # serving | draining
    started_at: float  # Unix time
    heartbeat_at: float = 0.0  # Unix time, by the store's clock; set by the board


class ReplicaBoard(Protocol):
    def beat(self, replica: ReplicaState) -> None:
        """Record the replica's state now."""

    def live(self, within_s: float) -> list[ReplicaState]:
        """The replicas heard from in the last `within_s` seconds, oldest first."""

    def leave(self, replica_id: str) -> None:
        """Remove a replica that stops."""


class Signals(Protocol):
    def wait(self, timeout_s: float) -> bool:
        """Block until the pointer or the change log may have changed, or `timeout_s`; whether
        a notification came."""

    def close(self) -> None: ...


REPLICAS_SCHEMA = """
CREATE TABLE IF NOT EXISTS replicas (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    version TEXT NOT NULL,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL
);
"""


class SqliteReplicaBoard:
    """The replica list in the registry's database file (processes on one machine)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        create(path, REPLICAS_SCHEMA, "replicas", {}, "")

    def beat(self, replica: ReplicaState) -> None:
        now = time.time()
        with session(self.path, write=True) as db:
            db.execute(
                "INSERT OR REPLACE INTO replicas VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*_fields(replica), now),
            )
            db.execute("DELETE FROM replicas WHERE heartbeat_at < ?", (now - FORGET_AFTER_S,))

    def live(self, within_s: float) -> list[ReplicaState]:
        with session(self.path) as db:
            rows = db.execute(
                "SELECT * FROM replicas WHERE heartbeat_at >= ? ORDER BY started_at", (time.time() - within_s,)
            ).fetchall()
        return [ReplicaState(*row) for row in rows]

    def leave(self, replica_id: str) -> None:
        with session(self.path) as db:
            db.execute("DELETE FROM replicas WHERE id = ?", (replica_id,))


def _fields(r: ReplicaState) -> tuple[str, str, int, str, int, str, float]:
    return r.id, r.host, r.pid, r.version, r.seq, r.state, r.started_at


@dataclass(frozen=True, slots=True)
class Following:
    """How a replica follows the others (from the settings)."""

    poll_s: float  # the fallback: look at the pointer and the change log at least this often
    heartbeat_s: float  # write the replica's state and renew its job leases this often
    timeout_s: float  # a replica silent this long is not listed (and its job leases run out)


class Replica:
    """This process as a replica of its index: follows, heartbeats, renews its job leases."""

    def __init__(
        self,
        replica_id: str,
        indexes: IndexManager,
        queue: JobQueue,
        board: ReplicaBoard,
        signals: Signals | None,
        following: Following,
        followers: tuple[Callable[[], object], ...] = (),
    ) -> None:
        self.id = replica_id
        self.followers = followers  # more tables to follow each round (the edit memory's catch_up)
        self.indexes = indexes
        self.queue = queue
        self.board = board
        self.signals = signals
        self.following = following
        self.state = SERVING
        self.started_at = time.time()
        self._errors: dict[str, str] = {}  # what failed last, per activity (following, heartbeat, ...)
        self._stop = threading.Event()
        self._beat_now = threading.Event()
        self._try("heartbeat", self._beat)  # listed before it serves a request
        self._threads = [
            threading.Thread(target=self._follow_loop, name="ragserve-follow", daemon=True),
            threading.Thread(target=self._heartbeat_loop, name="ragserve-heartbeat", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def describe(self) -> ReplicaState:
        return ReplicaState(
            self.id,
            socket.gethostname(),
            os.getpid(),
            self.indexes.serving_version,
            self.indexes.delta_seq,
            self.state,
            self.started_at,
        )

    def live(self) -> list[ReplicaState]:
        """Every live replica of the index, this one included even when its last beat failed."""
        others = [r for r in self.board.live(self.following.timeout_s) if r.id != self.id]
        return sorted([*others, replace(self.describe(), heartbeat_at=time.time())], key=lambda r: r.started_at)

    def follow_once(self) -> None:
        """Serve the pointer's version if it changed (and say so at once); apply the changes the
        delta lacks, and those of the other tables it follows (edits)."""
        switched = self.indexes.follow()
        self.indexes.catch_up()
        for follow in self.followers:
            follow()
        if switched is not None:
            self._beat()

    def drain(self) -> None:
        """Listed as draining from the next heartbeat on, which comes at once (without waiting for
        the store here: this runs in the signal handler)."""
        self.state = DRAINING
        self._beat_now.set()

    def stop(self) -> None:
        """Stop following and heartbeating, hand back the jobs it held, leave the list."""
        self._stop.set()
        self._beat_now.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._try("handing jobs back", self.queue.release)
        self._try("leaving the list", lambda: self.board.leave(self.id))  # the store closes the signals

    def _follow_loop(self) -> None:
        failures = 0  # in a row: a version that does not load (or a store that is down) is not retried at once
        while not self._stop.is_set():
            if failures:
                self._stop.wait(min(FOLLOW_BACKOFF_MAX_S, self.following.poll_s * 2 ** min(failures, 20)))
            elif self.signals is not None:
                self.signals.wait(self.following.poll_s)
            else:
                self._stop.wait(self.following.poll_s)
            if not self._stop.is_set():
                failures = 0 if self._try("following", self.follow_once) else failures + 1

    def _heartbeat_loop(self) -> None:
        while not self._stop.is_set():
            self._beat_now.wait(self.following.heartbeat_s)
            self._beat_now.clear()
            if not self._stop.is_set():
                self._try("heartbeat", self._beat)

    def _beat(self) -> None:
        self.board.beat(self.describe())
        self.queue.renew()

    @property
    def last_error(self) -> str | None:
        """What is failing now (following the pointer, the heartbeat), for /readyz; None: nothing."""
        return "; ".join(f"{what}: {error}" for what, error in self._errors.items()) or None

    def _try(self, what: str, work: Callable[[], object]) -> bool:
        """Run `work`; whether it succeeded. A failure (the store is down, a version that fails
        verification) is logged once and kept for /readyz until `what` succeeds again; a later
        round retries."""
        try:
            work()
            self._errors.pop(what, None)
            return True
        except Exception as exc:
            if what not in self._errors:
                log.warning("replica %s: %s failed: %s", self.id, what, exc)
            self._errors[what] = f"{type(exc).__name__}: {exc}"
            return False
