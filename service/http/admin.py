"""Admin routes: list index versions, refresh (a background job), roll back; list, load, replace
and unload reader adapters, and choose the default one.

Who may call them is decided before they run (service/http/auth.py): an admin token, or with no
token configured at all, a loopback client naming a loopback host.
"""

import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, Field, StringConstraints

from retriever.registry import VersionInfo
from service.application.adapters import NO_ADAPTER, AdapterInfo
from service.application.results import SwitchResult
from service.http.documents import JobCreated
from service.http.schemas import AdapterName, StrictModel
from service.http.state import AdaptersDep, IndexesDep, JobsDep, ServicesDep

IndexName = Annotated[str, StringConstraints(max_length=64)]


class VersionRequest(StrictModel):
    version: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        description="An existing version id, as listed by GET /admin/indexes."
    )


class RefreshRequest(StrictModel):
    version: Annotated[str | None, StringConstraints(min_length=1, max_length=64)] = Field(
        None, description="Switch to this existing version instead of building a new one."
    )


class ReplicaOut(BaseModel):
    id: str = Field(description="host-pid-random: unique per process start.")
    host: str
    pid: int
    version: str = Field(description="The index version this replica serves.")
    state: str = Field(description="serving | draining")
    delta_seq: int = Field(description="The document change counter its delta index includes.")
    lag_changes: int = Field(description="Document changes acknowledged that it has not applied yet.")
    heartbeat_age_s: float = Field(description="Seconds since it last reported (by the store's clock).")
    this: bool = Field(description="Whether it is the replica that answered this request.")


class IndexOut(BaseModel):
    name: str
    serving: str | None = Field(description="The version the serving pointer names: what every replica follows.")
    store: str = Field(description="sqlite | postgresql: where documents, jobs, pointer and replicas live.")
    head_seq: int = Field(description="The document change counter of the latest acknowledged change.")
    replicas: list[ReplicaOut]
    served_shards: list[int] = Field(
        description="The shards of the serving version this replica serves ([0]: unsharded)."
    )
    delta_chunks: int = Field(
        description="Chunks in this replica's delta: changes since the serving version, searched beside it until a "
        "refresh compacts them (compact_after_chunks)."
    )
    versions: list[VersionInfo]


class IndexList(BaseModel):
    indexes: list[IndexOut]


class AdapterList(BaseModel):
    default: str | None = Field(description="The adapter of requests that name none; null: the base model.")
    adapters: list[AdapterInfo]
    skipped: dict[str, str] = Field(description="Adapter folders found at start that did not load, and why.")


class LoadAdapterRequest(StrictModel):
    path: Annotated[str | None, StringConstraints(min_length=1, max_length=4096)] = Field(
        None,
        description="A folder on the server to copy into the adapter directory under this name (replacing "
        "what is there) and load; without it the adapter is (re)loaded from the directory or the bundled ones.",
    )


class AdapterLoaded(BaseModel):
    adapter: AdapterInfo
    replaced: bool = Field(description="Whether a loaded adapter of this name was replaced.")


class DefaultAdapterRequest(StrictModel):
    name: AdapterName = Field(description=f"A loaded adapter, or {NO_ADAPTER!r} for the base model.")


class DefaultAdapterChanged(BaseModel):
    default: str | None
    previous: str | None


def build_admin_router() -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"])

    @router.get("/indexes", response_model=IndexList)
    def list_indexes(services: ServicesDep) -> IndexList:
        """The index, its versions, and every live replica with the version it serves and how
        far its delta lags behind the change log."""
        indexes, replica = services.indexes, services.replica
        name = indexes.registry.name
        head, live, now = indexes.store.head(), replica.live(), time.time()
        replicas = [
            ReplicaOut(
                id=r.id,
                host=r.host,
                pid=r.pid,
                version=r.version,
                state=r.state,
                delta_seq=r.seq,
                lag_changes=max(0, head - r.seq),
                heartbeat_age_s=round(max(0.0, now - r.heartbeat_at), 3),
                this=r.id == replica.id,
            )
            for r in live
        ]
        out = IndexOut(
            name=name,
            serving=indexes.pointer.get(),
            store=services.serving.store.kind,
            head_seq=head,
            replicas=replicas,
            served_shards=indexes.served_shards,
            delta_chunks=indexes.delta_chunks,
            versions=indexes.versions(name),
        )
        return IndexList(indexes=[out])

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

    @router.get("/adapters", response_model=AdapterList)
    def list_adapters(adapters: AdaptersDep) -> AdapterList:
        return AdapterList(default=adapters.default, adapters=adapters.describe(), skipped=dict(adapters.skipped))

    @router.post("/adapters/{name}", response_model=AdapterLoaded)
    def load_adapter(name: AdapterName, adapters: AdaptersDep, body: LoadAdapterRequest | None = None) -> AdapterLoaded:
        """Load an adapter, or replace a loaded one atomically: requests already answering with the
        old one finish with it, the next ones get the new one."""
        source = Path(body.path) if body and body.path else None
        info, replaced = adapters.load(name, source)
        return AdapterLoaded(adapter=info, replaced=replaced)

    @router.delete("/adapters/{name}", response_model=AdapterInfo)
    def unload_adapter(name: AdapterName, adapters: AdaptersDep) -> AdapterInfo:
        """Stop serving an adapter and delete its folder from the adapter directory."""
        return adapters.unload(name)

    @router.put("/default-adapter", response_model=DefaultAdapterChanged)
    def set_default_adapter(body: DefaultAdapterRequest, adapters: AdaptersDep) -> DefaultAdapterChanged:
        """The adapter of requests that name none, until the next start (setting `adapter` then)."""
        previous = adapters.set_default(body.name)
        return DefaultAdapterChanged(default=adapters.default, previous=previous)

    return router
