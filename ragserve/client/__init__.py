"""The Python client of a ragserve server (httpx): `Client` and `AsyncClient` with the same
operations, typed results (frozen dataclasses), and errors raised as the domain exceptions the
server raised (ragserve/errors.py).

    from ragserve import Client

    with Client("http://127.0.0.1:8000", token="rgs_...") as rag:
        answer = rag.ask("Who built the Harrow bridge?")
        print(answer.answer, [c.doc_id for c in answer.citations])
"""

from ragserve.client._async import AsyncClient
from ragserve.client._core import DEFAULT_BATCH_SIZE, DEFAULT_TIMEOUT
from ragserve.client._errors import (
    APIError,
    ErrorResponse,
    JobTimeoutError,
    NetworkError,
    RequestTimeoutError,
    error_response,
)
from ragserve.client._sync import Client
from ragserve.client._types import (
    Adapter,
    AdapterLoaded,
    Adapters,
    Answer,
    Citation,
    CitationsEvent,
    DefaultAdapter,
    DoneEvent,
    Edit,
    Evidence,
    Index,
    IndexVersion,
    IngestProgress,
    IngestResult,
    Job,
    Passage,
    Readiness,
    Replica,
    Retrieval,
    StreamEvent,
    Switch,
    TokenEvent,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_TIMEOUT",
    "APIError",
    "Adapter",
    "AdapterLoaded",
    "Adapters",
    "Answer",
    "AsyncClient",
    "Citation",
    "CitationsEvent",
    "Client",
    "DefaultAdapter",
    "DoneEvent",
    "Edit",
    "ErrorResponse",
    "Evidence",
    "Index",
    "IndexVersion",
    "IngestProgress",
    "IngestResult",
    "Job",
    "JobTimeoutError",
    "NetworkError",
    "Passage",
    "Readiness",
    "Replica",
    "RequestTimeoutError",
    "Retrieval",
    "StreamEvent",
    "Switch",
    "TokenEvent",
    "error_response",
]
