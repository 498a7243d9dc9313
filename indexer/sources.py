"""Corpus readers: files and folders -> `Document`s, and the files skipped on the way.

Formats: JSONL and Parquet (records {id, title?, text, metadata?}), CSV/TSV (a row per document,
indexer/formats_csv.py), plain text and Markdown, PDF, HTML and DOCX (indexer/formats.py).

Ids: a file found in a folder argument has the id of its path relative to that folder (posix), so
`mydocs`, `/abs/mydocs` and `.` (inside it) give the same ids; a file argument has its own name.
Records in JSONL, Parquet and CSV files keep their ids (CSV without an id column: `<name>#<row>`).

Skips: a folder's files of other types, hidden files and folders, empty files, and files that
cannot be read (encrypted or corrupt PDFs, undecodable text, no text found) are skipped, each with
its reason (`Skipped`): `read_corpus` gives them beside the documents (`Corpus.skipped`, and
`on_skip` as they happen). A malformed record of a JSONL or Parquet corpus, a duplicate id, a
missing path or a file argument of an unsupported type still stop the reading (InvalidInputError).

Every reader streams: a corpus is never held in memory whole.
"""

import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from indexer.formats import READERS as DOCUMENT_READERS
from indexer.formats import Skipped, SourceFile, Unreadable, parsing, title_of
from indexer.formats_csv import CsvColumns, read_csv
from ragserve.errors import InvalidInputError
from ragserve.types import Document

__all__ = ["CsvColumns", "Skipped", "SourceFile", "Unreadable"]

TEXT_SUFFIXES = frozenset({".txt", ".md", ".markdown"})
RECORD_SUFFIXES = frozenset({".jsonl", ".parquet", ".csv", ".tsv"})  # many documents a file
SUFFIXES = TEXT_SUFFIXES | RECORD_SUFFIXES | frozenset(DOCUMENT_READERS)

T = TypeVar("T")
SkipHandler = Callable[[Skipped], None]


@dataclass(frozen=True, slots=True)
class ReadOptions:
    """How files are read: the column mapping of CSV files."""

    csv: CsvColumns = field(default_factory=CsvColumns)


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


class Corpus:
    """The documents of some files (streamed, once, in order; ids must be unique), and the files
    and rows skipped, filled in as the reading reaches them."""

    def __init__(
        self, sources: Iterable[SourceFile | Skipped], options: ReadOptions, on_skip: SkipHandler | None = None
    ) -> None:
        self._sources = sources
        self.options = options
        self.on_skip = on_skip
        self.skipped: list[Skipped] = []
        self.files = 0  # files read (some of their rows may be skipped)
        self.documents = 0

    def __iter__(self) -> Iterator[Document]:
        seen: set[str] = set()
        for source in self._sources:
            if isinstance(source, Skipped):
                self._skip(source)
                continue
            self.files += 1
            for item in read_file(source, self.options):
                if isinstance(item, Skipped):
                    self._skip(item)
                    continue
                if item.id in seen:
                    raise InvalidInputError(f"{source.where}: duplicate document id {item.id!r}")
                seen.add(item.id)
                self.documents += 1
                yield item

    def _skip(self, skipped: Skipped) -> None:
        self.skipped.append(skipped)
        if self.on_skip is not None:
            self.on_skip(skipped)

    def totals(self) -> dict[str, int]:
        return {"files": self.files, "documents": self.documents, "skipped": len(self.skipped)}


def read_corpus(
    paths: Iterable[Path], options: ReadOptions | None = None, on_skip: SkipHandler | None = None
) -> Corpus:
    """The documents of files and folders (recursively, in sorted order). The paths are checked
    now: a missing one, or a file argument of an unsupported type, is refused before any reading."""
    paths = [Path(p) for p in paths]
    for path in paths:
        check_path(path)
    return Corpus((found for path in paths for found in corpus_files(path)), options or ReadOptions(), on_skip)


def check_path(path: Path) -> None:
    if path.is_dir():
        return
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file or folder")
    if path.suffix.lower() not in SUFFIXES:
        raise InvalidInputError(f"{path}: unsupported file type (expected one of {sorted(SUFFIXES)})")


def corpus_files(path: Path) -> Iterator[SourceFile | Skipped]:
    """The files of one path argument in reading order, named by the id rule; a folder's files
    of other types, and its hidden entries (not entered), as skips."""
    check_path(path)
    if path.is_file():
        yield SourceFile(path.name, path=path)
    else:
        yield from _walk(path, path)


def _walk(folder: Path, root: Path) -> Iterator[SourceFile | Skipped]:
    """Sorted by name at every level, which is the order of the sorted paths."""
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            kind = "folder" if entry.is_dir() else "file"
            yield Skipped(str(entry), f"a hidden {kind} (not read)")
        elif entry.is_dir():
            yield from _walk(entry, root)
        elif not entry.is_file():
            yield Skipped(str(entry), "not a regular file")
        elif entry.suffix.lower() not in SUFFIXES:
            yield Skipped(str(entry), f"unsupported file type {entry.suffix.lower() or '(no suffix)'}")
        else:
            yield SourceFile(entry.relative_to(root).as_posix(), path=entry)


def read_sources(
    sources: Iterable[SourceFile], options: ReadOptions | None = None, on_skip: SkipHandler | None = None
) -> Corpus:
    """The documents of files that are not paths of this machine (uploads), by the same readers."""
    return Corpus(sources, options or ReadOptions(), on_skip)


def read_file(source: SourceFile, options: ReadOptions) -> Iterator[Document | Skipped]:
    """The documents of one file; a file that cannot be read, whole or from some row on, ends
    with a skip that says why (what it gave before that stands)."""
    suffix = source.suffix
    if suffix not in SUFFIXES:
        yield Skipped(source.where, f"unsupported file type {suffix or '(no suffix)'}")
        return
    try:
        if source.size() == 0:
            yield Skipped(source.where, "an empty file")
            return
        if suffix == ".jsonl":
            yield from read_jsonl(source)
        elif suffix == ".parquet":
            yield from read_parquet(source)
        elif suffix in (".csv", ".tsv"):
            yield from read_csv(source, options.csv)
        elif suffix in TEXT_SUFFIXES:
            yield read_text(source)
        else:
            yield DOCUMENT_READERS[suffix](source)
    except Unreadable as exc:
        yield Skipped(source.where, str(exc))
    except OSError as exc:  # vanished or unreadable since it was listed
        yield Skipped(source.where, f"cannot be read ({exc.strerror or exc})")


def read_text(source: SourceFile) -> Document:
    """A text or Markdown file (UTF-8) as one document; a Markdown title from its first heading."""
    raw = source.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Unreadable(f"not UTF-8 text (byte {exc.start} is not)") from None
    if "\x00" in text:
        raise Unreadable("binary data, not text")
    if not text.strip():
        raise Unreadable("no text in it")
    heading = None
    if source.suffix in (".md", ".markdown"):
        heading = next((ln[2:] for ln in text.splitlines() if ln.startswith("# ")), None)
    return Document(id=source.name, title=title_of(heading, source.stem), text=text, metadata={"source": source.name})


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


def read_jsonl(source: SourceFile) -> Iterator[Document]:
    lineno = 0
    with source.open() as raw:
        lines = io.TextIOWrapper(raw, encoding="utf-8")
        try:
            for lineno, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InvalidInputError(f"{source.where}:{lineno}: invalid JSON ({exc.msg})") from exc
                yield document_from_record(record, f"{source.where}:{lineno}")
        except UnicodeDecodeError:
            raise Unreadable(f"not UTF-8 text after line {lineno} (the lines before it were read)") from None
        finally:
            lines.detach()  # the stream is its owner's to close (an upload's)


def read_parquet(source: SourceFile, batch_rows: int = 1024) -> Iterator[Document]:
    import pyarrow.parquet as pq

    with source.open() as raw, parsing("Parquet file"):  # a corrupt file raises pyarrow's errors
        table = pq.ParquetFile(raw)
        columns = [c for c in ("id", "title", "text", "metadata") if c in table.schema_arrow.names]
        if "id" not in columns or "text" not in columns:
            raise InvalidInputError(f"{source.where}: Parquet corpus needs 'id' and 'text' columns")
        row = 0
        for batch in table.iter_batches(batch_size=batch_rows, columns=columns):
            for record in batch.to_pylist():
                row += 1
                if isinstance(record.get("metadata"), str):
                    record["metadata"] = json.loads(record["metadata"])
                yield document_from_record(record, f"{source.where}: row {row}")
