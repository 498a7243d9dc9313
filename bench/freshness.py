"""Freshness: time from an ingestion request's 202 to the document coming back from /v1/retrieve,
on a real server on loopback (the demo index plus the delta).

    python -m bench.freshness [--documents 20]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import header, percentile
from bench.hotswap import make_versions, start_server
from bench.latency import free_port, post

DEADLINE_S = 10.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--documents", type=int, default=20)
    args = ap.parse_args()
    header("ingest acknowledgement -> searchable")
    with tempfile.TemporaryDirectory() as tmp:
        index, _ = make_versions(Path(tmp))
        port = free_port()
        server = start_server(index, Path(tmp), port)
        base = f"http://127.0.0.1:{port}"
        seconds = []
        try:
            for i in range(args.documents):
                # the query is the document's own text: it is the top hit once it is searchable
                doc = {"id": f"fresh-{i}", "text": f"Sensor {i} on platform Kestrel-{i} reported a reading of {i * 7}."}
                post(base + "/v1/documents", {"upsert": [doc]})
                acknowledged = time.perf_counter()
                while time.perf_counter() - acknowledged < DEADLINE_S:
                    found = post(base + "/v1/retrieve", {"query": doc["text"], "top_k": 3})[1]
                    passages = found["passages"]
                    assert isinstance(passages, list)
                    if doc["id"] in {p["doc_id"] for p in passages}:
                        seconds.append(time.perf_counter() - acknowledged)
                        break
                    time.sleep(0.005)
        finally:
            server.terminate()
            server.wait(timeout=30)
    ms = [s * 1000 for s in seconds]
    print(f"not found within {DEADLINE_S} s: {args.documents - len(ms)}")
    print(
        f"{len(ms)} documents, one per request: p50 {percentile(ms, 50):.0f} ms, "
        f"p99 {percentile(ms, 99):.0f} ms, mean {statistics.fmean(ms):.0f} ms from 202 to first retrieval"
    )


if __name__ == "__main__":
    main()
