"""The two stores keep the same promises (service/application/store.py): each test runs on SQLite
and on a real PostgreSQL server, with two store objects standing for two replicas."""

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ragserve.errors import TooManyJobsError
from ragserve.types import Document
from retriever.registry import IndexRegistry
from service.application.jobqueue import DOCUMENTS_JOB, REFRESH_JOB, documents_payload
from service.application.replicas import ReplicaState
from service.application.store import Store, open_store
from service.settings import Settings

DOCS = [Document("a", "A", "alpha", {"k": 1}), Document("b", "B", "beta")]
Open = Callable[..., Store]


@pytest.fixture()
def open_replica(tmp_path: Path, store_url: str | None) -> Iterator[Open]:
    """open_replica(owner) -> a store as replica `owner` sees it; all on one registry and database."""
    opened: list[Store] = []

    def make(owner: str, **settings: object) -> Store:
        config = Settings(registry_dir=tmp_path / "registry", database_url=store_url, **settings)  # type: ignore[arg-type]
        opened.append(open_store(config, IndexRegistry(config.registry_root, "default"), owner))
        return opened[-1]

    yield make
    for store in opened:
        store.close()


def test_documents_are_upserted_by_content_and_deleted_by_tombstone(open_replica: Open) -> None:
    one, two = open_replica("one").documents, open_replica("two").documents
    applied = one.apply(DOCS, ["never-seen"])
    assert applied.changed == ["a", "b"] and applied.counts["deleted"] == 1  # a tombstone hides old versions' ids
    again = two.apply([DOCS[0]], ["never-seen"])
    assert again.counts == {"upserted": 0, "unchanged": 1, "deleted": 0, "not_found": 1}
    two.apply([Document("a", "A", "alpha, changed")], ["b"])
    changes = one.changes_since(0)  # one sees what two wrote: the change log is shared
    assert [d.text for d in changes.live] == ["alpha, changed"] and changes.deleted == ["never-seen", "b"]
    assert changes.seq == one.head() == two.head() == 5
    assert one.changes_since(5).seq == 5 and not one.changes_since(5).live
    assert changes.live[0].metadata == {}


def test_concurrent_batches_of_two_replicas_commit_in_counter_order(open_replica: Open) -> None:
    """A follower that reads 'after the last counter it saw' must never skip a batch."""
    stores = [open_replica("one").documents, open_replica("two").documents]
    seen: list[int] = []

    def write(store_index: int) -> None:
        for i in range(25):
            stores[store_index].apply([Document(f"d{store_index}-{i}", "", f"text {i}")], [])

    def follow(stop: threading.Event) -> None:
        last = 0
        while not stop.is_set() or last < 50:
            changes = stores[0].changes_since(last)
            seen.extend(range(last + 1, changes.seq + 1))
            last = changes.seq

    stop = threading.Event()
    follower = threading.Thread(target=follow, args=(stop,))
    follower.start()
    writers = [threading.Thread(target=write, args=(i,)) for i in (0, 1)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    follower.join(timeout=30)
    assert seen == list(range(1, 51))
    assert len(stores[0].changes_since(0).live) == 50


def test_one_job_of_a_kind_runs_at_a_time_across_replicas_in_order(open_replica: Open) -> None:
    one, two = open_replica("one").jobs, open_replica("two").jobs
    first = one.enqueue(DOCUMENTS_JOB, documents_payload(DOCS, []))
    second = two.enqueue(DOCUMENTS_JOB, documents_payload([], ["a"]))
    refresh = two.enqueue(REFRESH_JOB, {"index": "default", "version": None})
    taken = two.next_queued(DOCUMENTS_JOB)
    assert taken is not None and taken.id == first and [d.id for d in taken.upsert] == ["a", "b"]
    assert one.next_queued(DOCUMENTS_JOB) is None  # the other batch waits: batches apply in order
    other_kind = one.next_queued(REFRESH_JOB)
    assert other_kind is not None and other_kind.id == refresh  # a refresh is not held up by ingestion
    assert not one.finish(first, "done", {})  # only the owner records the end
    assert two.finish(first, "done", {"counts": {"upserted": 2}})
    job = one.job(first)
    assert job is not None and job.state == "done" and job.result == {"counts": {"upserted": 2}}
    following = one.next_queued(DOCUMENTS_JOB)
    assert following is not None and following.id == second and following.delete == ["a"]


def test_a_job_whose_owner_died_is_taken_over_after_its_lease(open_replica: Open) -> None:
    dead = open_replica("dead", heartbeat_s=0.1, replica_timeout_s=0.5).jobs
    alive = open_replica("alive", heartbeat_s=0.1, replica_timeout_s=0.5).jobs
    job_id = dead.enqueue(REFRESH_JOB, {"index": "default", "version": None})
    assert dead.next_queued(REFRESH_JOB) is not None
    assert alive.next_queued(REFRESH_JOB) is None  # held
    time.sleep(0.3)
    assert dead.renew() == 1  # a live owner keeps its job
    time.sleep(0.3)
    assert alive.next_queued(REFRESH_JOB) is None
    time.sleep(0.6)  # the owner stopped renewing: it died
    taken = alive.next_queued(REFRESH_JOB)
    assert taken is not None and taken.id == job_id and taken.interrupted and taken.attempts == 1
    assert not dead.finish(job_id, "done", {})  # too late: the run that took over counts
    assert alive.finish(job_id, "done", {})


def test_a_replica_that_stops_hands_its_jobs_back(open_replica: Open) -> None:
    leaving, staying = open_replica("leaving").jobs, open_replica("staying").jobs
    job_id = leaving.enqueue(DOCUMENTS_JOB, documents_payload(DOCS, []))
    assert leaving.next_queued(DOCUMENTS_JOB) is not None
    assert leaving.release() == 1
    taken = staying.next_queued(DOCUMENTS_JOB)
    assert taken is not None and taken.id == job_id and not taken.interrupted and taken.attempts == 0


def test_the_pending_limit_holds_across_replicas(open_replica: Open) -> None:
    one, two = open_replica("one", max_pending_jobs=2).jobs, open_replica("two", max_pending_jobs=2).jobs
    one.enqueue(DOCUMENTS_JOB, documents_payload(DOCS, []))
    two.enqueue(REFRESH_JOB, {"index": "default", "version": None})
    with pytest.raises(TooManyJobsError, match="max_pending_jobs"):
        one.enqueue(DOCUMENTS_JOB, documents_payload(DOCS, []))


def test_finished_jobs_are_pruned_per_kind(open_replica: Open) -> None:
    jobs = open_replica("one").jobs
    job_id = jobs.enqueue(DOCUMENTS_JOB, documents_payload(DOCS, []))
    assert jobs.next_queued(DOCUMENTS_JOB) is not None and jobs.finish(job_id, "done", {})
    assert jobs.prune(REFRESH_JOB, time.time() + 60) == 0
    assert jobs.prune(DOCUMENTS_JOB, time.time() - 60) == 0  # within its retention
    assert jobs.prune(DOCUMENTS_JOB, time.time() + 60) == 1 and jobs.job(job_id) is None


def test_the_pointer_is_shared_and_a_refresh_cannot_undo_a_rollback(open_replica: Open, tmp_path: Path) -> None:
    v0, v1, v2, v3 = (f"2026120{i}T000000Z-0000000{i}" for i in range(4))
    for version in (v0, v1, v2, v3):  # what the file pointer checks exists
        (tmp_path / "registry" / "default" / "versions" / version).mkdir(parents=True)
        (tmp_path / "registry" / "default" / "versions" / version / "manifest.json").write_text("{}")
    one, two = open_replica("one").pointer, open_replica("two").pointer
    assert one.get() is None
    assert one.replace(None, v1) and not two.replace(None, v2)  # replicas starting at once agree
    assert two.get() == v1
    two.set(v0)  # a rollback on two, while one was building from v1
    assert not one.replace(v1, v3) and one.get() == v0
    assert one.replace(v0, v3) and two.get() == v3


def test_the_replica_list_shows_live_replicas_only(open_replica: Open) -> None:
    board = open_replica("one").replicas
    now = time.time()
    for name, version in [("r1", "v1"), ("r2", "v2")]:
        board.beat(ReplicaState(name, "host", 1, version, 7, "serving", now))
    listed = open_replica("two").replicas.live(5.0)
    assert [(r.id, r.version, r.seq) for r in listed] == [("r1", "v1", 7), ("r2", "v2", 7)]
    assert all(abs(r.heartbeat_at - now) < 5 for r in listed)
    board.leave("r1")
    assert [r.id for r in board.live(5.0)] == ["r2"]
    time.sleep(0.3)
    assert board.live(0.1) == []  # silent too long: not listed


def test_notifications_wake_followers_of_the_index(open_replica: Open, store_url: str | None) -> None:
    if store_url is None:
        pytest.skip("SQLite has no notifications: its followers poll")
    listener, writer = open_replica("listener"), open_replica("writer")
    assert listener.signals is not None
    listener.signals.wait(0.1)  # connects (and reports "look now")
    started = time.monotonic()
    threading.Timer(0.2, lambda: writer.documents.apply(DOCS, [])).start()
    assert listener.signals.wait(5.0)
    assert 0.15 < time.monotonic() - started < 2.0
