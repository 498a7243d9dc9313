"""CSV (and TSV) corpora: a row per document, with a column mapping.

Which column is the id, the title and the text is given (`CsvColumns`: `--csv-id-column`,
`--csv-title-column`, `--csv-text-column`, or the upload's form fields), else the columns named
`id`, `title` and `text` (any case) are. Every other column goes into the row's metadata, with
`source` (the file's name) and `row` (the row's number: 1 is the first row after the header, blank
lines not counted) unless a column has that name. Without an id column a row's id is
`<file name>#<row>`. A row without text, or with an empty id, is skipped and reported; the file
streams, a row at a time.
"""

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass

from indexer.formats import Skipped, SourceFile, Unreadable
from ragserve.types import Document


@dataclass(frozen=True, slots=True)
class CsvColumns:
    """The columns of a CSV corpus that are the id, the title and the text (None: the column
    named `id`, `title`, `text`, in any case; an id or title column may be absent, the text not)."""

    id: str | None = None
    title: str | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class _Mapping:
    id: int | None
    title: int | None
    text: int
    names: list[str]  # every column's name (a blank one: `column N`)


def _find(header: list[str], given: str | None, default: str, required: bool, option: str) -> int | None:
    """The index of the column named `given` (exactly), or else of the one named like `default`."""
    if given is not None:
        if given not in header:
            raise Unreadable(f"no column {given!r} (its columns: {', '.join(header)})")
        return header.index(given)
    folded = [name.strip().casefold() for name in header]
    if default in folded:
        return folded.index(default)
    if required:
        names = ", ".join(header)
        raise Unreadable(f"no {default!r} column: name the text column with {option} (its columns: {names})")
    return None


def _mapping(header: list[str], columns: CsvColumns) -> _Mapping:
    text = _find(header, columns.text, "text", True, "--csv-text-column (form field csv_text_column)")
    assert text is not None
    return _Mapping(
        id=_find(header, columns.id, "id", False, ""),
        title=_find(header, columns.title, "title", False, ""),
        text=text,
        names=[name.strip() or f"column {i + 1}" for i, name in enumerate(header)],
    )


def read_csv(source: SourceFile, columns: CsvColumns) -> Iterator[Document | Skipped]:
    """The rows of a CSV (`.tsv`: tab-separated) file as documents, and the rows skipped."""
    dialect = "excel-tab" if source.suffix == ".tsv" else "excel"
    row = 0
    with source.open() as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        try:
            rows = csv.reader(text, dialect)
            header = next(rows, None)
            if header is None:
                raise Unreadable("no header row")
            mapping = _mapping(header, columns)
            for values in rows:
                if not any(v.strip() for v in values):
                    continue  # a blank line is no row
                row += 1
                yield _row_document(source, mapping, values, row)
        except UnicodeDecodeError:
            raise Unreadable(f"not UTF-8 text (at row {row + 1}; the rows before it were read)") from None
        except csv.Error as exc:
            raise Unreadable(f"row {row + 1}: {exc} (the rows before it were read)") from None
        finally:
            text.detach()  # the stream is its owner's to close


def _row_document(source: SourceFile, mapping: _Mapping, values: list[str], row: int) -> Document | Skipped:
    if len(values) > len(mapping.names):
        return Skipped(source.where, f"row {row}: {len(values)} fields, the header has {len(mapping.names)}")
    values = values + [""] * (len(mapping.names) - len(values))
    text = values[mapping.text]
    if not text.strip():
        return Skipped(source.where, f"row {row}: no text in column {mapping.names[mapping.text]!r}")
    doc_id = f"{source.name}#{row}" if mapping.id is None else values[mapping.id].strip()
    if not doc_id:
        return Skipped(source.where, f"row {row}: no id in column {mapping.names[mapping.id or 0]!r}")
    mapped = {mapping.id, mapping.title, mapping.text}
    rest = {name: value for i, (name, value) in enumerate(zip(mapping.names, values, strict=True)) if i not in mapped}
    title = "" if mapping.title is None else " ".join(values[mapping.title].split())
    return Document(id=doc_id, title=title, text=text, metadata={"source": source.name, "row": row, **rest})
