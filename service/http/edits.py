"""Edit routes: POST /v1/edits (a correction: this question is answered this way from now on),
GET /v1/edits (the live edits, or all with the deleted), GET and DELETE /v1/edits/{edit_id}.
Admin only (service/http/auth.py), and who made each change is recorded. The memory itself, and
how a question is matched to an edit: service/application/edits.py."""

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from indexer.edits import Edit, NewEdit
from service.application.edits import EditMemory
from service.http.auth import ACTOR
from service.http.schemas import StrictModel, not_blank
from service.http.state import ServicesDep
from service.settings import Settings

EditId = Annotated[str, Path(pattern=r"^edit-[0-9a-f]{16}$", description="An edit's id, as POST /v1/edits gave it.")]


class EditOut(BaseModel):
    edit_id: str
    question: str
    answer: str
    statement: str | None = Field(description="The corrected fact as a sentence; cited by answers under the edit.")
    note: str | None
    created_by: str = Field(description="Who created it: 'admin:<token digest prefix>', or 'local' without tokens.")
    created_at: float = Field(description="Unix time.")
    deleted_by: str | None
    deleted_at: float | None = Field(description="Unix time; null while the edit is live.")

    @classmethod
    def of(cls, e: Edit) -> "EditOut":
        return cls(
            edit_id=e.id,
            question=e.question,
            answer=e.answer,
            statement=e.statement,
            note=e.note,
            created_by=e.created_by,
            created_at=e.created_at,
            deleted_by=e.deleted_by,
            deleted_at=e.deleted_at,
        )


class EditsPage(BaseModel):
    edits: list[EditOut]
    next: str | None = Field(description="Pass as `after` for the next page; null: this was the last.")


def actor_of(request: Request) -> str:
    actor: str = request.scope.get("state", {}).get(ACTOR, "unknown")
    return actor


def build_edits_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["edits"])

    strip = {"strip_whitespace": True, "min_length": 1}
    Question = Annotated[
        str, StringConstraints(**strip, max_length=settings.max_question_chars), AfterValidator(not_blank)
    ]
    Text = Annotated[str, StringConstraints(**strip, max_length=settings.max_edit_chars), AfterValidator(not_blank)]

    class EditRequest(StrictModel):
        question: Question = Field(description="The question whose answer is corrected.")
        answer: Text = Field(description="Its answer from now on.")
        statement: Text | None = Field(
            None, description="The corrected fact as a sentence, cited; default: the question and the answer."
        )
        note: Text | None = Field(None, description="Why (a ticket, a source); kept with the edit.")

    def memory(services: ServicesDep) -> EditMemory:
        return services.serving.edits

    @router.post("/v1/edits", status_code=201, response_model=EditOut)
    async def create_edit(body: EditRequest, services: ServicesDep, request: Request) -> EditOut:
        """Correct one fact: questions in this edit's scope are answered from it, on every replica
        within a second (this one before it answers); other questions are answered as before."""
        new = NewEdit(body.question, body.answer, body.statement, body.note)
        return EditOut.of(await run_in_threadpool(memory(services).create, new, actor_of(request)))

    @router.get("/v1/edits", response_model=EditsPage)
    async def list_edits(
        services: ServicesDep,
        include_deleted: Annotated[bool, Query(description="List deleted edits too (the audit trail).")] = False,
        after: Annotated[str | None, Query(max_length=64, description="The `next` of the previous page.")] = None,
        limit: Annotated[int, Query(ge=1, le=settings.max_edits_page)] = settings.max_edits_page,
    ) -> EditsPage:
        """Edits in id order, a page at a time."""
        found = await run_in_threadpool(memory(services).list, include_deleted, after, limit + 1)
        more = len(found) > limit
        return EditsPage(edits=[EditOut.of(e) for e in found[:limit]], next=found[limit - 1].id if more else None)

    @router.get("/v1/edits/{edit_id}", response_model=EditOut)
    async def get_edit(edit_id: EditId, services: ServicesDep) -> EditOut:
        return EditOut.of(await run_in_threadpool(memory(services).get, edit_id))

    @router.delete("/v1/edits/{edit_id}", response_model=EditOut)
    async def delete_edit(edit_id: EditId, services: ServicesDep, request: Request) -> EditOut:
        """Undo an edit: from now on its questions are answered from the documents again."""
        return EditOut.of(await run_in_threadpool(memory(services).delete, edit_id, actor_of(request)))

    return router
