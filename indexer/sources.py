"""Corpus readers: JSONL, plain text / Markdown files and folders, Parquet -> `Document`s.

Every reader streams: a corpus is never held in memory whole.
"""

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ragserve.errors import InvalidInputError
from ragserve.types import Document

TEXT_SUFFIXES = {".txt", ".md", ".markdown"}
SUFFIXES = TEXT_SUFFIXES | {".jsonl", ".parquet"}


T = TypeVar("T")


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of `size` items (the last one shorter), without reading ahead further."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def read_corpus(paths: Iterable[Path]) -> Iterator[Document]:
    """Documents from files and folders (recursively, in sorted order); ids must be unique."""
    seen: set[str] = set()
    for path in paths:
        for file in _files(Path(path)):
            for doc in _read_file(file):
                if doc.id in seen:
                    raise InvalidInputError(f"{file}: duplicate document id {doc.id!r}")
                seen.add(doc.id)
                yield doc


def _files(path: Path) -> Iterator[Path]:
    if path.is_dir():
        yield from sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    elif path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise InvalidInputError(f"{path}: unsupported file type (expected one of {sorted(SUFFIXES)})")
        yield path
    else:
        raise InvalidInputError(f"{path}: no such file or folder")


def _read_file(path: Path) -> Iterator[Document]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from read_jsonl(path)
    elif suffix == ".parquet":
        yield from read_parquet(path)
    else:
        yield read_text(path)


def read_text(path: Path) -> Document:
    text = path.read_text(encoding="utf-8", errors="replace")
    title = path.stem
    if path.suffix.lower() in {".md", ".markdown"}:
        heading = next((ln for ln in text.splitlines() if ln.startswith("# ")), None)
        title = heading[2:].strip() if heading else title
    return Document(id=path.as_posix(), title=title, text=text, metadata={"source": path.name})


def document_from_record(record: Any, where: str) -> Document:
    """Validate one {id, title?, text, metadata?} record."""
    if not isinstance(record, dict):
        raise InvalidInputError(f"{where}: expected a JSON object")
    doc_id, text = record.get("id"), record.get("text")
    if not isinstance(doc_id, str | int) or str(doc_id) == "":
        raise InvalidInputError(f"{where}: 'id' must be a non-empty string")
    if not isinstance(text, str):
        raise InvalidInputError(f"{where}: 'text' must be a string")
    title = record.get("title")
    title = "" if title is None else title
    metadata = record.get("metadata")
    metadata = {} if metadata is None else metadata
    if not isinstance(title, str) or not isinstance(metadata, dict):
        raise InvalidInputError(f"{where}: 'title' must be a string and 'metadata' an object")
    return Document(id=str(doc_id), title=title, text=text, metadata=metadata)


def read_jsonl(path: Path) -> Iterator[Document]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
            yield document_from_record(record, f"{path}:{lineno}")


def read_parquet(path: Path, batch_rows: int = 1024) -> Iterator[Document]:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path)
    columns = [c for c in ("id", "title", "text", "metadata") if c in table.schema_arrow.names]
    if "id" not in columns or "text" not in columns:
        raise InvalidInputError(f"{path}: Parquet corpus needs 'id' and 'text' columns")
    row = 0
    for batch in table.iter_batches(batch_size=batch_rows, columns=columns):
        for record in batch.to_pylist():
            row += 1
            if isinstance(record.get("metadata"), str):
                record["metadata"] = json.loads(record["metadata"])
            yield document_from_record(record, f"{path}: row {row}")
