"""The edit table of a named index: corrections of single facts (a question and its new answer),
kept beside the document table in the same store (SQLite here, PostgreSQL in
indexer/pg_edits.py) and followed by every replica the way the documents are.

An edit is never changed in place: it is created, and it may be deleted (a tombstone that keeps
who deleted it and when, so the table is also the audit trail). Each creation and deletion takes
the next value of the table's change counter (`seq`); a replica that has applied the changes up
to n reads what comes after n (`changes_since`), in commit order (one writer at a time).

Each row may keep the vector its question was embedded to by the replica that took it
(`EditVector`: float32 bytes and the key of the encoder that made them), so a replica that starts,
or follows a change, embeds only the questions whose vector another encoder made.
"""

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ragserve.errors import TooManyEditsError
from ragserve.sqlite import create, session

SCHEMA = """
CREATE TABLE IF NOT EXISTS edits (
    id TEXT PRIMARY KEY,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    statement TEXT,
    note TEXT,
    created_by TEXT NOT NULL,
    created_at REAL NOT NULL,
    deleted_by TEXT,
    deleted_at REAL,
    seq INTEGER NOT NULL,
    vector_model TEXT,
    vector BLOB
);
"""
MIGRATIONS = {"vector_model": "TEXT", "vector": "BLOB"}  # columns a table made before them lacks
INDEXES = "CREATE INDEX IF NOT EXISTS edits_seq ON edits(seq);"
COLUMNS = (
    "id, question, answer, statement, note, created_by, created_at, deleted_by, deleted_at, seq, vector_model, vector"
)


@dataclass(frozen=True, slots=True)
class NewEdit:
    """What a user asks for: `question` is answered `answer` from now on."""

    question: str
    answer: str
    statement: str | None = None  # the corrected fact as a sentence (cited); default: built from both
    note: str | None = None  # why (a ticket, a source): shown in listings only


@dataclass(frozen=True, slots=True)
class EditVector:
    """An edit question's embedding as stored: little-endian float32 bytes, and the key of the
    encoder that made it (a replica with another encoder embeds the question again)."""

    model: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Edit:
    id: str
    question: str
    answer: str
    statement: str | None
    note: str | None
    created_by: str
    created_at: float  # Unix time
    deleted_by: str | None
    deleted_at: float | None
    seq: int  # the change counter of its latest change (creation, or deletion)
    vector: EditVector | None = None  # None: made before vectors were kept, or without one

    @property
    def live(self) -> bool:
        return self.deleted_at is None

    @property
    def fact(self) -> str:
        """The sentence an answer under this edit cites."""
        return self.statement or f"{self.question.strip()} {self.answer.strip()}"


@dataclass(frozen=True, slots=True)
class EditChanges:
    """The edits created or deleted after some counter value, in counter order."""

    edits: list[Edit]
    seq: int  # the highest counter value included


def new_edit_id() -> str:
    return "edit-" + uuid.uuid4().hex[:16]


def edits_of(rows: Iterable[Sequence[Any]]) -> list[Edit]:
    """Edits from rows of COLUMNS (both stores)."""
    return [_edit(row) for row in rows]


def _edit(row: Sequence[Any]) -> Edit:
    (edit_id, question, answer, statement, note, created_by, created_at, deleted_by, deleted_at, seq, model, data) = row
    vector = None if model is None or data is None else EditVector(model, bytes(data))
    return Edit(edit_id, question, answer, statement, note, created_by, created_at, deleted_by, deleted_at, seq, vector)


def too_many(limit: int) -> TooManyEditsError:
    return TooManyEditsError(f"the edit memory holds {limit} live edits, its maximum (setting max_edits)")


def changes_of(edits: list[Edit], seq: int) -> EditChanges:
    return EditChanges(edits, edits[-1].seq if edits else seq)


class EditStore(Protocol):
    def create(self, edit: NewEdit, actor: str, limit: int, vector: EditVector | None = None) -> Edit:
        """Store a new edit (with its question's vector); raises TooManyEditsError when `limit`
        edits are live already."""

    def delete(self, edit_id: str, actor: str) -> Edit | None:
        """Tombstone a live edit; None when there is no live edit of that id."""

    def get(self, edit_id: str) -> Edit | None:
        """The edit of that id, deleted or not."""

    def list(self, include_deleted: bool, after: str | None, limit: int) -> list[Edit]:
        """Edits by id order, from the first id after `after`, at most `limit`."""

    def changes_since(self, seq: int) -> EditChanges: ...

    def head(self) -> int:
        """The counter value of the latest change (0: none yet)."""


class SqliteEditStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        create(path, SCHEMA, "edits", MIGRATIONS, INDEXES)

    def create(self, edit: NewEdit, actor: str, limit: int, vector: EditVector | None = None) -> Edit:
        with session(self.path, write=True) as db:
            live = db.execute("SELECT COUNT(*) FROM edits WHERE deleted_at IS NULL").fetchone()[0]
            if live >= limit:
                raise too_many(limit)
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM edits").fetchone()[0] + 1
            row = (new_edit_id(), edit.question, edit.answer, edit.statement, edit.note, actor, time.time())
            stored = (vector.model, vector.data) if vector else (None, None)
            db.execute(
                f"INSERT INTO edits ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, ?, ?)", (*row, seq, *stored)
            )
        return Edit(*row, None, None, seq, vector)

    def delete(self, edit_id: str, actor: str) -> Edit | None:
        with session(self.path, write=True) as db:
            found = db.execute(f"SELECT {COLUMNS} FROM edits WHERE id = ? AND deleted_at IS NULL", (edit_id,))
            if found.fetchone() is None:
                return None
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM edits").fetchone()[0] + 1
            db.execute(
                "UPDATE edits SET deleted_by = ?, deleted_at = ?, seq = ? WHERE id = ?",
                (actor, time.time(), seq, edit_id),
            )
            return edits_of(db.execute(f"SELECT {COLUMNS} FROM edits WHERE id = ?", (edit_id,)))[0]

    def get(self, edit_id: str) -> Edit | None:
        with session(self.path) as db:
            found = edits_of(db.execute(f"SELECT {COLUMNS} FROM edits WHERE id = ?", (edit_id,)))
        return found[0] if found else None

    def list(self, include_deleted: bool, after: str | None, limit: int) -> list[Edit]:
        live = "" if include_deleted else "AND deleted_at IS NULL"
        with session(self.path) as db:
            rows = db.execute(
                f"SELECT {COLUMNS} FROM edits WHERE id > ? {live} ORDER BY id LIMIT ?", (after or "", limit)
            )
            return edits_of(rows)

    def changes_since(self, seq: int) -> EditChanges:
        with session(self.path) as db:
            rows = db.execute(f"SELECT {COLUMNS} FROM edits WHERE seq > ? ORDER BY seq", (seq,))
            return changes_of(edits_of(rows), seq)

    def head(self) -> int:
        with session(self.path) as db:
            seq: int = db.execute("SELECT COALESCE(MAX(seq), 0) FROM edits").fetchone()[0]
        return seq
