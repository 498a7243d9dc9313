"""What the synchronous and the asynchronous client share, written once and free of I/O: the
requests of every operation and how their answers are read (`Op`), when a failed try is tried
again and after how long (`Attempts`), how job waits poll (`Poller`), and the bookkeeping of an
ingestion (`IngestPlan`). The two clients only send, sleep and read, each in its own way."""

import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from ragserve.client._errors import JobTimeoutError, network_error, retry_after
from ragserve.client._types import IngestProgress, IngestResult, Job
from ragserve.types import Document

T = TypeVar("T")

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)  # an answer takes seconds; a server that is up accepts at once
DEFAULT_MAX_RETRIES = 3
BACKOFF_BASE_S = 0.5  # the first wait after a refusal without Retry-After; doubled each try
BACKOFF_MAX_S = 30.0
RETRY_STATUSES = frozenset({429, 503})  # refused before any work: overloaded, draining, loading, store down
DEFAULT_BATCH_SIZE = 64  # documents per ingestion job
DEFAULT_MAX_PENDING_JOBS = 4  # jobs of one ingest queued at the server at once
POLL_FIRST_S, POLL_MAX_S = 0.05, 0.5  # job polls: quick for small jobs, then at most twice a second

# Failures after which the request surely never reached the server: safe to send again, whatever it does.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)
# Failures after which it may have: only requests that change nothing are sent again.
_MAYBE_SENT = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.PoolTimeout)

DocumentLike = Document | Mapping[str, Any]
ProgressFn = Callable[[IngestProgress], None]


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    json: Any = None
    idempotent: bool = True  # reading, or asking: sending it twice changes nothing
    accept: frozenset[int] = frozenset()  # error statuses that are answers here (GET /readyz: 503)


@dataclass(frozen=True)
class Op(Generic[T]):
    """A request and how to read its answer."""

    call: Call
    parse: Callable[[httpx.Response], T]


def is_failure(response: httpx.Response, call: Call) -> bool:
    """Whether the (final) answer to `call` is an error to raise."""
    return response.is_error and response.status_code not in call.accept


def segment(value: str) -> str:
    """A value as one path segment: a job id or a name never reaches another route."""
    return quote(value, safe="")


def client_headers(token: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = {"user-agent": "ragserve-python-client", **(extra or {})}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return headers


def ask_body(question: str, stream: bool, **options: Any) -> dict[str, Any]:
    """The body of POST /v1/ask; options left None keep the server's defaults."""
    body: dict[str, Any] = {"question": question, **{k: v for k, v in options.items() if v is not None}}
    if "retrieval" in body:
        body["retrieval"] = str(body["retrieval"])  # a RetrievalMode or its name
    if stream:
        body["stream"] = True
    return body


def document_json(doc: DocumentLike) -> dict[str, Any]:
    if isinstance(doc, Document):
        return {"id": doc.id, "title": doc.title, "text": doc.text, "metadata": doc.metadata}
    return dict(doc)


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_base_s: float = BACKOFF_BASE_S
    backoff_max_s: float = BACKOFF_MAX_S

    def backoff(self, attempt: int) -> float:
        """Exponential, with jitter so that clients refused together do not come back together."""
        return min(self.backoff_max_s, self.backoff_base_s * 2.0**attempt) * random.uniform(0.5, 1.0)


class Attempts:
    """The tries of one call: whether a failure is tried again, and how long to wait first."""

    def __init__(self, policy: RetryPolicy, call: Call, base_url: str) -> None:
        self.policy = policy
        self.call = call
        self.url = base_url + call.path
        self.attempt = 0

    def after_transport_error(self, exc: httpx.TransportError) -> float:
        """The wait before the next try; raises the NetworkError when there is none."""
        safe = isinstance(exc, _NOT_SENT) or (self.call.idempotent and isinstance(exc, _MAYBE_SENT))
        if not safe or self.attempt >= self.policy.max_retries:
            raise network_error(exc, self.url) from exc
        return self._next(None)

    def after_response(self, response: httpx.Response) -> float | None:
        """The wait before the next try (a 429 or 503 with tries left), else None: the answer stands.
        The wait is at least what Retry-After asks."""
        status = response.status_code
        if status not in RETRY_STATUSES or status in self.call.accept or self.attempt >= self.policy.max_retries:
            return None
        return self._next(retry_after(response.headers))

    def _next(self, asked: float | None) -> float:
        delay = max(asked or 0.0, self.policy.backoff(self.attempt))
        self.attempt += 1
        return delay


class Poller:
    """The waits between polls of a job, and the end of the wait."""

    def __init__(self, job_id: str, timeout: float | None, now: float) -> None:
        self.job_id = job_id
        self.deadline = None if timeout is None else now + timeout
        self.delay = POLL_FIRST_S

    def next_delay(self, job: Job, now: float) -> float:
        if self.deadline is not None and now >= self.deadline:
            raise JobTimeoutError(f"job {self.job_id} is still {job.state} after the wait")
        delay, self.delay = self.delay, min(POLL_MAX_S, self.delay * 1.5)
        return delay if self.deadline is None else max(0.0, min(delay, self.deadline - now))


@dataclass
class IngestPlan:
    """The batches of an ingest, the jobs they became, and how those ended."""

    progress: ProgressFn | None = None
    max_pending: int = DEFAULT_MAX_PENDING_JOBS
    pending: deque[tuple[str, int]] = field(default_factory=deque)  # (job id, documents), oldest first
    job_ids: list[str] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    sent_docs: int = 0
    done_docs: int = 0
    failed_docs: int = 0

    @staticmethod
    def batches(documents: Iterable[DocumentLike], delete: Sequence[str], size: int) -> Iterator[dict[str, Any]]:
        """Bodies of POST /v1/documents: `size` upserts each, then the deletes."""
        if size < 1:
            raise ValueError(f"batch_size must be at least 1, not {size}")
        docs = iter(documents)
        while chunk := list(islice(docs, size)):
            yield {"upsert": [document_json(d) for d in chunk]}
        for start in range(0, len(delete), size):
            yield {"delete": list(delete[start : start + size])}

    @property
    def full(self) -> bool:
        return len(self.pending) >= self.max_pending

    @property
    def oldest(self) -> str:
        return self.pending[0][0]

    def sent(self, job_id: str, body: Mapping[str, Any]) -> None:
        n = len(body.get("upsert", ())) + len(body.get("delete", ()))
        self.pending.append((job_id, n))
        self.job_ids.append(job_id)
        self.sent_docs += n
        self._report()

    def finished(self, job: Job) -> None:
        _, n = self.pending.popleft()
        self.jobs.append(job)
        for key, value in job.counts.items():
            self.counts[key] = self.counts.get(key, 0) + value
        self.errors.update(job.errors)
        self.done_docs += n
        self.failed_docs += n if job.state == "failed" else sum(1 for k in job.errors if k != "*")
        self._report()

    def result(self) -> IngestResult:
        return IngestResult(tuple(self.job_ids), tuple(self.jobs), self.counts, self.errors, self.failed_docs)

    def _report(self) -> None:
        if self.progress is not None:
            done = len(self.jobs)
            args = (self.sent_docs, self.done_docs, self.failed_docs, len(self.job_ids), done, dict(self.counts))
            self.progress(IngestProgress(*args))
