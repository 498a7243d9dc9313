"""The follower of a replica (service/application/replicas.py) without processes: a version that
will not load is retried with waits that double, not every poll, and the error shows."""

import time
from typing import Any

from ragserve.errors import ArtifactError
from service.application.replicas import Following, Replica, ReplicaState


class FailingIndexes:
    """An IndexManager whose pointer names a version that fails verification."""

    serving_version, delta_seq = "20260101T000000Z-00000000", 0

    def __init__(self) -> None:
        self.follows = 0

    def follow(self) -> None:
        self.follows += 1
        raise ArtifactError("version 20260102T000000Z-00000000: checksum mismatch in index.faiss")

    def catch_up(self) -> dict[str, str]:
        return {}


class Board:
    def __init__(self) -> None:
        self.beats: list[ReplicaState] = []

    def beat(self, replica: ReplicaState) -> None:
        self.beats.append(replica)

    def live(self, within_s: float) -> list[ReplicaState]:
        return self.beats[-1:]

    def leave(self, replica_id: str) -> None:
        pass


class Queue:
    def renew(self) -> int:
        return 0

    def release(self) -> int:
        return 0


def test_a_version_that_fails_to_load_is_retried_with_a_backoff() -> None:
    indexes, board = FailingIndexes(), Board()
    replica = Replica("r1", indexes, Queue(), board, None, Following(0.02, 0.1, 0.5))  # type: ignore[arg-type]
    time.sleep(1.3)
    replica.stop()
    # at a fixed 20 ms poll that would be ~65 loads of the version; doubling waits: 0.02, 0.04, 0.08, ...
    assert 3 <= indexes.follows <= 8, indexes.follows
    assert replica.last_error is not None and "checksum mismatch" in replica.last_error
    assert board.beats and all(b.version == indexes.serving_version for b in board.beats)  # it still serves


def test_the_replica_reports_draining_at_once() -> None:
    indexes: Any = FailingIndexes()
    board = Board()
    replica = Replica("r1", indexes, Queue(), board, None, Following(5.0, 5.0, 15.0))  # type: ignore[arg-type]
    try:
        replica.drain()
        deadline = time.monotonic() + 2
        while board.beats[-1].state != "draining":
            assert time.monotonic() < deadline, "no heartbeat after the drain began"
            time.sleep(0.01)
    finally:
        replica.stop()
