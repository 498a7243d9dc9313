"""Admin routes: list index versions, refresh (a background job), roll back.

They need an admin token (`Authorization: Bearer …`). Only when no admin token digest is
configured are they open, and the settings allow that on a loopback address only.
"""

from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, Field, StringConstraints

from retriever.registry import VersionInfo
from service.auth import Scope, require
from service.documents import JobCreated
from service.indexes import SwitchResult
from service.schemas import StrictModel
from service.state import IndexesDep, JobsDep

AdminAuth = require(Scope.ADMIN, only_if=lambda state: bool(state.settings.admin_token_sha256))

IndexName = Annotated[str, StringConstraints(max_length=64)]


class VersionRequest(StrictModel):
    version: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        description="An existing version id, as listed by GET /admin/indexes."
    )


class RefreshRequest(StrictModel):
    version: Annotated[str | None, StringConstraints(min_length=1, max_length=64)] = Field(
        None, description="Switch to this existing version instead of building a new one."
    )


class IndexOut(BaseModel):
    name: str
    serving: str | None
    versions: list[VersionInfo]


class IndexList(BaseModel):
    indexes: list[IndexOut]


def build_admin_router() -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminAuth])

    @router.get("/indexes", response_model=IndexList)
    def list_indexes(indexes: IndexesDep) -> IndexList:
        name = indexes.registry.name
        versions = indexes.versions(name)
        return IndexList(indexes=[IndexOut(name=name, serving=indexes.registry.serving(), versions=versions)])

    @router.post("/indexes/{name}/refresh", status_code=202, response_model=JobCreated)
    def refresh(name: IndexName, jobs: JobsDep, body: RefreshRequest | None = None) -> JobCreated:
        """Start a background job that compacts the serving version and every document change
        since it into a new version and serves it — or, given `version`, serves that existing
        version. Follow it with GET /v1/jobs/{job_id}."""
        return JobCreated(job_id=jobs.submit_refresh(name, body.version if body else None))

    @router.post("/indexes/{name}/rollback", response_model=SwitchResult)
    def rollback(name: IndexName, body: VersionRequest, indexes: IndexesDep) -> SwitchResult:
        """Go back to an earlier version."""
        return indexes.switch(name, body.version)

    return router
