"""Hot swap under load, end to end: a real uvicorn on loopback, 16 concurrent clients for 30 s while
the admin API switches versions 20 times, refreshes and rollbacks: no failed request, no stale read.
On both stores (the pointer in serving.json, and in PostgreSQL)."""

from pathlib import Path

from bench.hotswap import make_versions, run_load, start_server, summarize
from bench.latency import free_port


def test_swaps_under_load_fail_no_request_and_never_serve_a_stale_version(
    tmp_path: Path, store_url: str | None
) -> None:
    index, versions = make_versions(tmp_path)
    port = free_port()
    server = start_server(index, tmp_path, port, {"RAGSERVE_DATABASE_URL": store_url} if store_url else None)
    try:
        report = run_load(port, versions, clients=16, steady=2.0, swapping=30.0, swaps=20)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(summarize(report, 16))
    assert len(report.switches) == 20
    assert {s.version for s in report.switches} == set(versions)  # every version served, back and forth
    assert len(report.swapping) > 100
    assert report.failures() == []
    assert report.stale() == []
    seen = {c.version for c in report.swapping}
    assert seen == set(versions)  # clients really saw the swaps
