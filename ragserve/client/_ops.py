"""Every operation of the API as an `Op`: its request (service/http/routes.py, documents.py,
admin.py) and how its answer is read; both clients run these."""

from typing import Any

import httpx

from ragserve.client._core import Call, Op, ask_body, segment
from ragserve.client._types import (
    Adapter,
    AdapterLoaded,
    Adapters,
    Answer,
    DefaultAdapter,
    Edit,
    Index,
    Job,
    Readiness,
    Retrieval,
    Switch,
    _known,
)


def ask(question: str, **options: Any) -> Op[Answer]:
    return Op(Call("POST", "/v1/ask", ask_body(question, stream=False, **options)), lambda r: Answer.of(r.json()))


def ask_stream(question: str, **options: Any) -> Call:
    """The streamed ask: its events are read by the client (ragserve/client/_sse.py)."""
    return Call("POST", "/v1/ask", ask_body(question, stream=True, **options))


def retrieve(query: str, **options: Any) -> Op[Retrieval]:
    body = ask_body(query, stream=False, **options)
    body["query"] = body.pop("question")
    return Op(Call("POST", "/v1/retrieve", body), lambda r: Retrieval.of(r.json()))


def submit(body: dict[str, Any]) -> Op[str]:
    """One batch of upserts and deletes → a job id. Sent twice it would be two jobs: not retried
    after a failure that may have reached the server."""
    return Op(Call("POST", "/v1/documents", body, idempotent=False), lambda r: str(r.json()["job_id"]))


def job(job_id: str) -> Op[Job]:
    return Op(Call("GET", f"/v1/jobs/{segment(job_id)}"), lambda r: Job.of(r.json()))


def indexes() -> Op[tuple[Index, ...]]:
    return Op(Call("GET", "/admin/indexes"), lambda r: tuple(Index.of(i) for i in r.json()["indexes"]))


def refresh(name: str, version: str | None) -> Op[str]:
    body = {"version": version} if version else None
    call = Call("POST", f"/admin/indexes/{segment(name)}/refresh", body, idempotent=False)
    return Op(call, lambda r: str(r.json()["job_id"]))


def rollback(name: str, version: str) -> Op[Switch]:
    call = Call("POST", f"/admin/indexes/{segment(name)}/rollback", {"version": version})
    return Op(call, lambda r: Switch.of(r.json()))


def create_edit(question: str, answer: str, statement: str | None, note: str | None) -> Op[Edit]:
    body = {"question": question, "answer": answer, "statement": statement, "note": note}
    call = Call("POST", "/v1/edits", {k: v for k, v in body.items() if v is not None}, idempotent=False)
    return Op(call, lambda r: _known(Edit, r.json()))


def edits_page(include_deleted: bool, after: str | None) -> Op[tuple[tuple[Edit, ...], str | None]]:
    """One page of GET /v1/edits: its edits and the `after` of the next (None: the last)."""
    params = f"?include_deleted={str(include_deleted).lower()}" + (f"&after={segment(after)}" if after else "")
    return Op(Call("GET", "/v1/edits" + params), _page)


def _page(response: httpx.Response) -> tuple[tuple[Edit, ...], str | None]:
    body = response.json()
    return tuple(_known(Edit, e) for e in body["edits"]), body["next"]


def get_edit(edit_id: str) -> Op[Edit]:
    return Op(Call("GET", f"/v1/edits/{segment(edit_id)}"), lambda r: _known(Edit, r.json()))


def delete_edit(edit_id: str) -> Op[Edit]:
    call = Call("DELETE", f"/v1/edits/{segment(edit_id)}", idempotent=False)  # twice: unknown the 2nd time
    return Op(call, lambda r: _known(Edit, r.json()))


def adapters() -> Op[Adapters]:
    return Op(Call("GET", "/admin/adapters"), lambda r: Adapters.of(r.json()))


def load_adapter(name: str, path: str | None) -> Op[AdapterLoaded]:
    """Loading twice replaces the adapter with itself: safe to retry."""
    body = {"path": path} if path else None
    return Op(Call("POST", f"/admin/adapters/{segment(name)}", body), lambda r: AdapterLoaded.of(r.json()))


def unload_adapter(name: str) -> Op[Adapter]:
    call = Call("DELETE", f"/admin/adapters/{segment(name)}", idempotent=False)  # twice: unknown the 2nd time
    return Op(call, lambda r: _known(Adapter, r.json()))


def set_default_adapter(name: str) -> Op[DefaultAdapter]:
    return Op(Call("PUT", "/admin/default-adapter", {"name": name}), lambda r: _known(DefaultAdapter, r.json()))


def ready() -> Op[Readiness]:
    """GET /readyz: its 503 (loading, draining, failed) is an answer, not an error to retry."""
    return Op(Call("GET", "/readyz", accept=frozenset({503})), _readiness)


def _readiness(response: httpx.Response) -> Readiness:
    return Readiness.of(response.json(), ready=response.status_code == 200)
