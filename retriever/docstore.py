"""SQLite docstore of chunks; the row id of a chunk is its id in the FAISS index."""

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragserve.types import ChunkRecord

SCHEMA = """
CREATE TABLE chunks (
    row INTEGER PRIMARY KEY,
    chunk_id TEXT NOT NULL UNIQUE,
    doc_id TEXT NOT NULL,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    start_char INTEGER NOT NULL,
    end_char INTEGER NOT NULL,
    metadata TEXT NOT NULL
);
CREATE INDEX chunks_doc ON chunks(doc_id);
"""


@dataclass(frozen=True, slots=True)
class StoredChunk:
    row: int
    chunk_id: str
    doc_id: str
    title: str
    text: str
    start_char: int
    end_char: int
    metadata: dict[str, Any]


class DocstoreWriter:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path)
        self._db.executescript(SCHEMA)
        self.rows = 0

    def add(self, chunks: Sequence[ChunkRecord]) -> None:
        records = [
            (self.rows + i, c.chunk_id, c.doc_id, c.title, c.text, c.start_char, c.end_char, json.dumps(c.metadata))
            for i, c in enumerate(chunks)
        ]
        with self._db:
            self._db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?)", records)
        self.rows += len(records)

    def close(self) -> None:
        self._db.close()


class Docstore:
    """Read-only and safe to share between threads (one connection per thread)."""

    def __init__(self, path: Path) -> None:
        self._uri = f"file:{path}?mode=ro&immutable=1"
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._uri, uri=True, check_same_thread=False)
            self._local.conn = conn
        return conn

    def scan(self, batch: int = 4_096) -> Iterator[list[StoredChunk]]:
        """Every chunk in row order (= FAISS id order), in batches."""
        last = -1
        while True:
            cursor = self._conn().execute(f"{SELECT} WHERE row > ? ORDER BY row LIMIT ?", (last, batch))
            found = [_stored(*record) for record in cursor]
            if not found:
                return
            last = found[-1].row
            yield found

    def get(self, rows: Sequence[int]) -> dict[int, StoredChunk]:
        if not rows:
            return {}
        marks = ",".join("?" * len(rows))
        cursor = self._conn().execute(f"{SELECT} WHERE row IN ({marks})", [int(r) for r in rows])
        return {record[0]: _stored(*record) for record in cursor}


SELECT = "SELECT row, chunk_id, doc_id, title, text, start_char, end_char, metadata FROM chunks"


def _stored(
    row: int, chunk_id: str, doc_id: str, title: str, text: str, start: int, end: int, meta: str
) -> StoredChunk:
    # Most chunks carry no metadata; skipping the parser for them is a fifth of a hybrid search's
    # docstore time (it reads ~80 candidates per query).
    return StoredChunk(row, chunk_id, doc_id, title, text, start, end, json.loads(meta) if meta != "{}" else {})
