"""The documents people have: PDF (pypdf), HTML (trafilatura's main text), DOCX (python-docx).

Each reader takes one `SourceFile` (a file on disk, or an upload held by the HTTP layer) and gives
one `Document`, or raises `Unreadable` with the reason, which the corpus reader (indexer/sources.py)
reports as a skipped file: an encrypted or corrupt PDF, an undecodable file or one with no text
ends the reading of that file, never the run. The parsers are imported on first use, so importing
this module costs nothing.

A PDF's pages are kept: its text is the pages' texts joined by PAGE_BREAK (a form feed, as
pdftotext writes them), and its metadata has `page_count`; indexer/chunking.py then gives every
chunk `page` (its first page, 1-based) and `pages` ([first, last]). The marker travels with the
text, so pages survive every path a document takes (JSON batches, the document table, Ray).
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

from indexer.chunking import PAGE_BREAK
from ragserve.errors import InvalidInputError, RagserveError
from ragserve.types import Document

if TYPE_CHECKING:
    from docx.table import Table

TITLE_CHARS = 200  # an extracted title (a PDF's /Title, a page's <title>, a heading) is cut here


class Unreadable(InvalidInputError):
    """This one file cannot be read (the message says why): it is skipped and reported."""


@dataclass(frozen=True, slots=True)
class Skipped:
    """A file (or a CSV row) not read, and why; reported and counted by every caller."""

    file: str  # the file as given (its path, or an upload's name)
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One file of a corpus: where its bytes are, and the name its documents' ids are made of."""

    name: str  # posix path relative to the folder given, or the file's own name (the id rule)
    path: Path | None = None  # on disk ...
    stream: IO[bytes] | None = None  # ... or an upload's spooled file (service/http/documents.py)

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix.lower()

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    @property
    def where(self) -> str:
        """How messages name the file: its path as given, or the upload's name."""
        return str(self.path) if self.path is not None else self.name

    def size(self) -> int:
        if self.path is not None:
            return self.path.stat().st_size
        assert self.stream is not None
        return self.stream.seek(0, io.SEEK_END)

    @contextlib.contextmanager
    def open(self) -> Iterator[IO[bytes]]:
        """The file's bytes from the start (an upload's stream stays open: its owner closes it)."""
        if self.path is not None:
            with self.path.open("rb") as fh:
                yield fh
            return
        assert self.stream is not None
        self.stream.seek(0)
        yield self.stream

    def read_bytes(self) -> bytes:
        with self.open() as fh:
            return fh.read()


@contextlib.contextmanager
def parsing(what: str) -> Iterator[None]:
    """Whatever a third-party parser raises on a malformed file (they raise many kinds: ValueError,
    KeyError, zip and XML errors, ...) becomes `Unreadable`: a file is untrusted input, and one bad
    file must not end a build or answer an upload with a 500."""
    try:
        yield
    except RagserveError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise Unreadable(f"not a readable {what} ({detail})") from None


def title_of(*candidates: str | None) -> str:
    """The first non-blank candidate, on one line, at most TITLE_CHARS characters."""
    for candidate in candidates:
        line = " ".join((candidate or "").split())
        if line:
            return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1] + "…"
    return ""


def clean(text: str) -> str:
    """Extracted text without NULs or page breaks of its own (PAGE_BREAK marks ours only)."""
    return text.replace("\x00", "").replace(PAGE_BREAK, "\n").replace("\r\n", "\n")


def _document(source: SourceFile, title: str, text: str, metadata: dict[str, Any]) -> Document:
    if not text.strip():
        raise Unreadable("no text found in it")
    return Document(id=source.name, title=title, text=text, metadata={"source": source.name, **metadata})


# --- PDF ----------------------------------------------------------------------------------------


def read_pdf(source: SourceFile) -> Document:
    """The text of every page, joined by PAGE_BREAK; an encrypted PDF is opened with the empty
    password (many are encrypted only against editing), else skipped."""
    from pypdf import PdfReader

    with source.open() as fh, parsing("PDF"):
        reader = PdfReader(fh)
        if reader.is_encrypted and not reader.decrypt(""):
            raise Unreadable("an encrypted PDF (it needs a password)")
        pages = [clean(page.extract_text() or "").strip() for page in reader.pages]
        info = reader.metadata
        title = title_of(info.title if info is not None else None, source.stem)
    if not any(pages):
        raise Unreadable("no text found in it (a scanned PDF? there is no OCR)")
    text = ("\n" + PAGE_BREAK).join(pages)
    return _document(source, title, text, {"format": "pdf", "page_count": len(pages)})


# --- HTML ---------------------------------------------------------------------------------------


def read_html(source: SourceFile) -> Document:
    """The page's main text as trafilatura finds it (navigation, footers, comments left out);
    where it finds none (a page of short fragments), every visible text of the page. The title:
    the page's <title>, else the one trafilatura finds (its meta tags, a sole <h1>), else the name."""
    import trafilatura
    from trafilatura.settings import Document as Extracted
    from trafilatura.utils import load_html

    raw = source.read_bytes()
    with parsing("HTML page"):
        tree = load_html(raw)  # trafilatura's charset detection; None: no HTML in it
        if tree is None:
            raise Unreadable("no HTML found in it")
        page_title = tree.findtext(".//title")
        found = trafilatura.bare_extraction(tree, with_metadata=True, include_comments=False, include_tables=True)
        extracted = found if isinstance(found, Extracted) else None
        text = clean(extracted.text or "") if extracted is not None else ""
        method = "main-text"
        if not text.strip():
            text, method = _visible_text(load_html(raw)), "all-text"  # extraction prunes the tree: a new one
    title = title_of(page_title, extracted.title if extracted is not None else None, source.stem)
    metadata: dict[str, Any] = {"format": "html", "extraction": method}
    if extracted is not None:
        found_fields = {"url": extracted.url, "author": extracted.author, "date": extracted.date}
        metadata |= {key: value for key, value in found_fields.items() if isinstance(value, str) and value}
    return _document(source, title, text, metadata)


def _visible_text(tree: Any) -> str:
    """Every text of the page but scripts, styles and comments, one block a line."""
    if tree is None:
        return ""
    from lxml_html_clean import Cleaner

    body = Cleaner(scripts=True, javascript=True, style=True, comments=True, meta=True).clean_html(tree)
    lines = (" ".join(line.split()) for line in clean(body.text_content()).splitlines())
    return "\n".join(line for line in lines if line)


# --- DOCX ---------------------------------------------------------------------------------------


def read_docx(source: SourceFile) -> Document:
    """Paragraphs and table rows (cells joined by ' | '), in document order; the title from the
    core properties, else the first heading, else the file's name."""
    import docx
    from docx.table import Table

    with source.open() as fh, parsing("DOCX document"):
        document = docx.Document(fh)
        blocks: list[str] = []
        heading: str | None = None
        for block in document.iter_inner_content():
            if isinstance(block, Table):
                blocks.extend(_table_rows(block))
                continue
            text = clean(block.text).strip()
            style = (getattr(block.style, "name", None) or "").lower()
            if text and heading is None and style.startswith(("heading", "title")):
                heading = text
            if text:
                blocks.append(text)
        title = title_of(document.core_properties.title, heading, source.stem)
    return _document(source, title, "\n".join(blocks), {"format": "docx"})


def _table_rows(table: Table) -> Iterator[str]:
    for row in table.rows:
        cells: list[str] = []
        last: object = None
        for cell in row.cells:
            if cell._tc is last:  # a merged cell repeats itself across the columns it spans
                continue
            last = cell._tc
            cells.append(" ".join(clean(cell.text).split()))
        if any(cells):
            yield " | ".join(cells)


READERS = {".pdf": read_pdf, ".html": read_html, ".htm": read_html, ".docx": read_docx}
SAFE_NAME = re.compile(r"[\\/]+")


def upload_name(filename: str | None) -> str:
    """An uploaded file's id: its name as the client sent it, as a relative posix path (a folder
    upload may send 'sub/a.pdf'), without empty, '.' or '..' parts."""
    parts = [part for part in SAFE_NAME.split(filename or "") if part not in ("", ".", "..")]
    return "/".join(parts)
