"""The client side of `ragserve ingest`: files → batches → jobs on a running server (stdlib HTTP)."""

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tqdm import tqdm

from indexer.sources import batched, read_corpus
from ragserve.errors import RagserveError


def _call(url: str, token: str | None, body: dict[str, Any] | None = None) -> dict[str, Any]:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, headers, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        raise RagserveError(f"{url}: HTTP {exc.code}: {detail}") from exc
    except urllib.error.URLError as exc:
        raise RagserveError(f"{url}: {exc.reason}") from exc


def ingest_files(paths: list[Path], url: str, token: str | None, batch: int, wait: bool, progress: bool) -> int:
    """Send every document as upserts; with `wait`, follow the jobs to the end. Returns the number of
    documents that failed (errors are printed)."""
    base = url.rstrip("/")
    jobs: list[tuple[str, int]] = []
    bar = tqdm(desc="sending", unit=" docs", disable=not progress)
    for docs in batched(read_corpus(paths), batch):
        upsert = [{"id": d.id, "title": d.title, "text": d.text, "metadata": d.metadata} for d in docs]
        jobs.append((_call(f"{base}/v1/documents", token, {"upsert": upsert})["job_id"], len(docs)))
        bar.update(len(docs))
    bar.close()
    if not wait:
        print(json.dumps({"jobs": [job for job, _ in jobs]}))
        return 0
    failed = 0
    totals: dict[str, int] = {}
    bar = tqdm(total=sum(n for _, n in jobs), desc="indexing", unit=" docs", disable=not progress)
    for job_id, n in jobs:
        while (job := _call(f"{base}/v1/jobs/{job_id}", token))["state"] not in ("done", "failed"):
            time.sleep(0.2)
        for key, value in job["counts"].items():
            totals[key] = totals.get(key, 0) + value
        for doc_id, error in job["errors"].items():
            print(f"{doc_id}: {error}")
        failed += n if job["state"] == "failed" else 0
        bar.update(n)
    bar.close()
    print(json.dumps({"jobs": len(jobs), "counts": totals, "failed_documents": failed}))
    return failed
