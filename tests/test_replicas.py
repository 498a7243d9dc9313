"""Replicas that agree, as real processes on loopback ports sharing one store (bench/cluster.py):
documents acknowledged on one are found on the others, a switch anywhere is followed everywhere,
and the replica holding a refresh's build lease can die mid-build without losing anything."""

import threading
from collections import Counter
from pathlib import Path

import psycopg

from bench.cluster import FAST_FAILOVER, Node, replicas, serving_versions, wait_until

FRESH_S = 5.0  # generous for a loaded 2-core machine; bench/replicas.py measures the real figure


def doc(i: int) -> dict[str, str]:
    return {
        "id": f"note-{i}",
        "title": f"Locker {i}",
        "text": f"Locker {i} of the Quarry depot holds {i * 7} spanners.",
    }


def top(node: Node, query: str, k: int = 3) -> list[str]:
    status, body = node.post("/v1/retrieve", {"query": query, "top_k": k})
    assert status == 200, body
    return [p["doc_id"] for p in body["passages"]]


def ingest(node: Node, upsert: list[dict[str, str]], delete: list[str] | None = None) -> str:
    status, body = node.post("/v1/documents", {"upsert": upsert, "delete": delete or []})
    assert status == 202, body
    job_id: str = body["job_id"]
    return job_id


def wait_job(node: Node, job_id: str, seconds: float = 120) -> dict[str, object]:
    found: dict[str, object] = {}

    def finished() -> bool:
        found.update(node.get(f"/v1/jobs/{job_id}")[1])
        return found["state"] in ("done", "failed")

    wait_until(finished, seconds)
    return found


def index_listing(node: Node) -> dict[str, object]:
    status, body = node.get("/admin/indexes")
    assert status == 200, body
    listing: dict[str, object] = body["indexes"][0]
    return listing


def test_a_document_acknowledged_on_one_replica_is_found_on_the_other(
    tmp_path: Path, tiny_index: Path, database_url: str
) -> None:
    with replicas(2, tiny_index, tmp_path / "registry", database_url) as (a, b):
        job = wait_job(b, ingest(a, [doc(1)]))  # the job queue is shared: b reports a's job
        assert job["state"] == "done", job
        took = wait_until(lambda: top(b, "Locker 1 Quarry depot spanners")[0] == "note-1", FRESH_S)
        print(f"found on the other replica after {took * 1000:.0f} ms")
        wait_job(a, ingest(b, [], ["note-1"]))
        wait_until(lambda: "note-1" not in top(a, "Locker 1 Quarry depot spanners"), FRESH_S)

        listing = index_listing(a)
        assert listing["store"] == "postgresql"
        replicas_listed = listing["replicas"]
        assert isinstance(replicas_listed, list) and len(replicas_listed) == 2
        assert [r["this"] for r in replicas_listed].count(True) == 1
        assert {r["version"] for r in replicas_listed} == {listing["serving"]}
        wait_until(lambda: all(r["lag_changes"] == 0 for r in index_listing(b)["replicas"]), FRESH_S)  # type: ignore[attr-defined]


def test_two_processes_on_one_sqlite_registry_follow_one_pointer(tmp_path: Path, tiny_index: Path) -> None:
    """The report that opened issue 17: two servers on one registry must not disagree."""
    with replicas(2, tiny_index, tmp_path / "registry", None) as (a, b):
        first = serving_versions([a, b])[0]
        wait_job(a, ingest(a, [doc(2)]))
        wait_until(lambda: top(b, "Locker 2 Quarry depot spanners")[0] == "note-2", FRESH_S)
        status, body = a.post("/admin/indexes/default/refresh")
        job = wait_job(a, body["job_id"])
        new = job["index"]["serving"]  # type: ignore[index]
        assert new != first
        wait_until(lambda: serving_versions([a, b]) == [new, new], FRESH_S)
        assert index_listing(b)["serving"] == new
        wait_until(lambda: {r["version"] for r in index_listing(b)["replicas"]} == {new}, 3)  # type: ignore[attr-defined]
        assert b.post("/v1/retrieve", {"query": "Locker 2", "top_k": 1})[1]["index_version"] == new
        status, body = b.post("/admin/indexes/default/rollback", {"version": first})
        assert status == 200, body
        wait_until(lambda: serving_versions([a, b]) == [first, first], FRESH_S)
        assert top(a, "Locker 2 Quarry depot spanners")[0] == "note-2"  # the rollback keeps the document


def test_refresh_and_rollback_roll_to_three_replicas_under_concurrent_queries(
    tmp_path: Path, tiny_index: Path, database_url: str
) -> None:
    with replicas(3, tiny_index, tmp_path / "registry", database_url) as nodes:
        first = serving_versions(nodes)[0]
        stop = threading.Event()
        answers: list[tuple[int, str]] = []  # (status, index_version)

        def client(offset: int) -> None:
            i = offset
            while not stop.is_set():
                status, body = nodes[i % 3].post("/v1/retrieve", {"query": "Who built the Harrow bridge?", "top_k": 2})
                answers.append((status, body.get("index_version", "") if isinstance(body, dict) else ""))
                i += 1

        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        try:
            wait_job(nodes[0], ingest(nodes[0], [doc(i) for i in range(3, 8)]))
            before_swaps = len(answers)
            status, body = nodes[1].post("/admin/indexes/default/refresh")
            new = wait_job(nodes[2], body["job_id"])["index"]["serving"]  # type: ignore[index]
            took = wait_until(lambda: serving_versions(nodes) == [new] * 3, FRESH_S)
            print(f"all three replicas served {new} {took * 1000:.0f} ms after the refresh job was done")
            status, body = nodes[2].post("/admin/indexes/default/rollback", {"version": first})
            assert status == 200, body
            wait_until(lambda: serving_versions(nodes) == [first] * 3, FRESH_S)
            during_swaps = len(answers) - before_swaps
            wait_until(lambda: len(answers) > 50, FRESH_S)  # a steady load, however quick the swaps were
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        statuses = Counter(status for status, _ in answers)
        assert set(statuses) == {200}, statuses
        assert {version for _, version in answers} <= {first, new}  # no version nobody served
        assert during_swaps > 0, "no query ran while the versions rolled"
        assert len(answers) > 50
        assert top(nodes[1], doc(5)["text"])[0] == "note-5"  # the rollback keeps the documents


def owner_of(database_url: str, job_id: str) -> tuple[str | None, str]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT owner, state FROM ragserve_jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return row[0], row[1]


def test_sigkill_of_the_replica_holding_the_build_lease_mid_refresh(
    tmp_path: Path, tiny_index: Path, database_url: str
) -> None:
    with replicas(3, tiny_index, tmp_path / "registry", database_url, FAST_FAILOVER) as nodes:
        first = serving_versions(nodes)[0]
        acknowledged: list[int] = []
        killed: Node | None = None
        for attempt in range(4):  # the build must still be running when the kill lands
            batch = list(range(100 + attempt * 300, 100 + (attempt + 1) * 300))
            for start in range(0, len(batch), 100):
                node = nodes[(start // 100) % 3]
                assert wait_job(node, ingest(node, [doc(i) for i in batch[start : start + 100]]))["state"] == "done"
            acknowledged += batch
            status, body = nodes[0].post("/admin/indexes/default/refresh")
            assert status == 202, body
            job_id = body["job_id"]
            owner, state = owner_of(database_url, job_id)
            while state == "queued" or (state == "running" and owner is None):
                owner, state = owner_of(database_url, job_id)
            if state != "running":
                continue  # built before the kill could land: try again with a bigger delta
            assert owner is not None
            killed = next(n for n in nodes if f"-{n.process.pid}-" in owner)
            killed.kill()
            break
        assert killed is not None, "every refresh finished before its builder could be killed"
        survivors = [n for n in nodes if n is not killed]
        job = wait_job(survivors[0], job_id, seconds=120)  # taken over once the lease runs out
        assert job["state"] == "done", job
        new = job["index"]["serving"]  # type: ignore[index]
        assert new != first
        assert owner_of(database_url, job_id) == (None, "done")
        wait_until(lambda: serving_versions(survivors) == [new, new], FRESH_S)
        listed = index_listing(survivors[1])["replicas"]
        wait_until(lambda: len(index_listing(survivors[1])["replicas"]) == 2, 10)  # type: ignore[arg-type]
        assert isinstance(listed, list)
        for i in acknowledged[:: max(1, len(acknowledged) // 40)] + acknowledged[-3:]:  # nothing acknowledged lost
            for node in survivors:
                assert top(node, doc(i)["text"])[0] == f"note-{i}"
        after = wait_job(survivors[1], ingest(survivors[1], [doc(99_999)]))
        assert after["state"] == "done"


def test_a_replica_that_stops_leaves_the_list_and_the_other_goes_on(
    tmp_path: Path, tiny_index: Path, database_url: str
) -> None:
    with replicas(2, tiny_index, tmp_path / "registry", database_url) as (a, b):
        assert len(index_listing(a)["replicas"]) == 2  # type: ignore[arg-type]
        b.stop()  # SIGTERM: drained, hands its jobs back, leaves the list at once
        wait_until(lambda: len(index_listing(a)["replicas"]) == 1, 5)  # type: ignore[arg-type]
        assert wait_job(a, ingest(a, [doc(5)]), seconds=5)["state"] == "done"
