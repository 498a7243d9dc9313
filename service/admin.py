"""Admin routes: list index versions, switch the serving version, roll back.

They need an admin token (`Authorization: Bearer …`). Only when no admin token digest is
configured are they open, and the settings allow that on a loopback address only.
"""

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, Field, StringConstraints

from service.auth import Scope, require
from service.schemas import StrictModel
from service.state import IndexesDep

AdminAuth = require(Scope.ADMIN, only_if=lambda state: bool(state.settings.admin_token_sha256))

IndexName = Annotated[str, StringConstraints(max_length=64)]


class VersionRequest(StrictModel):
    version: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        description="An existing version id, as listed by GET /admin/indexes."
    )


class VersionOut(BaseModel):
    version: str
    created_at: str
    documents: int
    chunks: int
    bytes: int
    serving: bool


class IndexOut(BaseModel):
    name: str
    serving: str | None
    versions: list[VersionOut]


class IndexList(BaseModel):
    indexes: list[IndexOut]


class SwitchOut(BaseModel):
    index: str
    serving: str
    previous: str
    seconds: float
    pruned: list[str]


def build_admin_router() -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminAuth])

    @router.get("/indexes", response_model=IndexList)
    def list_indexes(indexes: IndexesDep) -> IndexList:
        name = indexes.registry.name
        versions = [VersionOut(**asdict(v)) for v in indexes.versions(name)]
        return IndexList(indexes=[IndexOut(name=name, serving=indexes.registry.serving(), versions=versions)])

    def switch(name: str, body: VersionRequest, indexes: IndexesDep) -> SwitchOut:
        return SwitchOut(**asdict(indexes.switch(name, body.version)))

    @router.post("/indexes/{name}/refresh", response_model=SwitchOut)
    def refresh(name: IndexName, body: VersionRequest, indexes: IndexesDep) -> SwitchOut:
        """Serve an existing version (loaded, verified and warmed before the swap)."""
        return switch(name, body, indexes)

    @router.post("/indexes/{name}/rollback", response_model=SwitchOut)
    def rollback(name: IndexName, body: VersionRequest, indexes: IndexesDep) -> SwitchOut:
        """Go back to an earlier version."""
        return switch(name, body, indexes)

    return router
