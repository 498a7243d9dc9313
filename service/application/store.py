"""Where the state of an index lives besides its artifacts: the document table (the change log),
the edit table, the serving pointer and the replica list, on one of two stores.

- SQLite (the default, nothing to run): one database file in the registry's directory of the index,
  and the pointer in its serving.json. Processes on one machine can share it.
- PostgreSQL (`database_url`): tables shared by replicas on any number of machines, schema created
  and migrated on start (ragserve/postgres.py), changes announced with NOTIFY.

Artifacts are immutable version directories under `registry_dir` in both cases: replicas on
several machines mount the same volume there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from indexer.documents import DocumentStore, SqliteDocumentStore
from indexer.edits import EditStore, SqliteEditStore
from retriever.registry import IndexRegistry
from service.application.jobqueue import JobQueue, SqliteJobQueue
from service.application.pointer import FilePointer, ServingPointer
from service.application.replicas import ReplicaBoard, Signals, SqliteReplicaBoard

if TYPE_CHECKING:
    from ragserve.postgres import Database
    from service.settings import Settings

DOCUMENTS_FILE = "documents.sqlite"


@dataclass(frozen=True, slots=True)
class Store:
    kind: str  # sqlite | postgresql
    documents: DocumentStore
    edits: EditStore
    jobs: JobQueue
    pointer: ServingPointer
    replicas: ReplicaBoard
    signals: Signals | None  # notifications of changes; None: followers poll
    database: Database | None = None

    def close(self) -> None:
        if self.signals is not None:
            self.signals.close()
        if self.database is not None:
            self.database.close()


def open_store(settings: Settings, registry: IndexRegistry, owner: str) -> Store:
    """The store the settings name, for index `registry.name`; `owner` takes its jobs' leases."""
    if settings.database_url is None:
        return sqlite_store(settings, registry, owner)
    return postgres_store(settings, registry.name, owner)


def sqlite_store(settings: Settings, registry: IndexRegistry, owner: str) -> Store:
    path = registry.home / DOCUMENTS_FILE
    return Store(
        "sqlite",
        SqliteDocumentStore(path),
        SqliteEditStore(path),
        SqliteJobQueue(path, settings.max_pending_jobs, owner, settings.replica_timeout_s),
        FilePointer(registry),
        SqliteReplicaBoard(path),
        None,
    )


def postgres_store(settings: Settings, index_name: str, owner: str) -> Store:
    from indexer.pg_documents import PostgresDocumentStore
    from indexer.pg_edits import PostgresEditStore
    from ragserve.postgres import Database
    from service.application.pg_jobqueue import PostgresJobQueue
    from service.application.pg_replicas import PostgresPointer, PostgresReplicaBoard, PostgresSignals

    assert settings.database_url is not None
    db = Database(settings.database_url, settings.database_pool_max)
    try:
        return Store(
            "postgresql",
            PostgresDocumentStore(db, index_name),
            PostgresEditStore(db, index_name),
            PostgresJobQueue(db, index_name, settings.max_pending_jobs, owner, settings.replica_timeout_s),
            PostgresPointer(db, index_name),
            PostgresReplicaBoard(db, index_name),
            PostgresSignals(db, index_name),
            db,
        )
    except BaseException:
        db.close()
        raise
