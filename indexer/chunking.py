"""Token-window chunking with overlap, measured in the retriever's own tokens.

A window is cut early at a sentence end when one falls in its last 40%, so chunks rarely stop
mid-sentence; the next window starts `overlap` tokens before the cut. Windows never start or end
inside a word (between two word pieces), so a chunk's text tokenizes back to exactly its tokens
and its embedding equals that of the text.

Paged documents (metadata `page_count`: a PDF read by indexer/formats.py) separate their pages by
PAGE_BREAK in the text; each of their chunks gets `page` (its first page, 1-based) and `pages`
([first, last]) in its metadata, beside the document's, so a citation can name its pages.
"""

import bisect
from dataclasses import dataclass
from typing import Any

from ragserve.errors import InvalidInputError
from ragserve.types import Document, TokenizedText

CHUNKER_VERSION = 2  # bump when the cutting rules change: artifacts record it, caches key on it
SENTENCE_END = ".?!\n"
MIN_FILL = 0.6  # a sentence cut may shorten a window to 60% of its size, no more
PAGE_BREAK = "\f"  # between two pages of a paged document's text (a form feed, as pdftotext writes)


@dataclass(frozen=True, slots=True)
class ChunkingConfig:
    """Window and overlap in retriever tokens (settings `chunk_tokens`, `overlap_tokens`)."""

    chunk_tokens: int
    overlap_tokens: int

    @classmethod
    def of(cls, manifest_chunking: dict[str, int]) -> "ChunkingConfig":
        """The chunking an artifact's manifest records (so its delta and compactions cut alike)."""
        return cls(manifest_chunking["chunk_tokens"], manifest_chunking["overlap_tokens"])

    def manifest(self) -> dict[str, int]:
        """What an artifact's manifest records of this chunking."""
        return {"chunk_tokens": self.chunk_tokens, "overlap_tokens": self.overlap_tokens, "version": CHUNKER_VERSION}

    def validate(self, model_max_tokens: int) -> None:
        if not 1 <= self.chunk_tokens <= model_max_tokens:
            raise InvalidInputError(f"chunk_tokens must be in 1..{model_max_tokens} (the retriever's window)")
        if not 0 <= self.overlap_tokens < self.chunk_tokens:
            raise InvalidInputError("overlap_tokens must be >= 0 and smaller than chunk_tokens")


@dataclass(frozen=True, slots=True)
class Chunk:
    doc_id: str
    ordinal: int
    title: str
    text: str
    start_char: int
    end_char: int
    token_ids: list[int]
    metadata: dict[str, Any]

    @property
    def chunk_id(self) -> str:
        return f"{self.doc_id}#{self.ordinal}"


def chunk_document(doc: Document, tokens: TokenizedText, config: ChunkingConfig) -> list[Chunk]:
    """Cut one tokenized document into overlapping windows; an empty document gives no chunks."""
    n = len(tokens.ids)
    chunks: list[Chunk] = []
    breaks = _page_breaks(doc)
    start = 0
    while start < n:
        end = min(start + config.chunk_tokens, n)
        if end < n:
            end = _sentence_cut(doc.text, tokens.offsets, start, end, config.chunk_tokens)
            end = _word_start(tokens.word_ids, end, floor=start + 1)
        begin_char, end_char = tokens.offsets[start][0], tokens.offsets[end - 1][1]
        chunks.append(
            Chunk(
                doc_id=doc.id,
                ordinal=len(chunks),
                title=doc.title,
                text=doc.text[begin_char:end_char],
                start_char=begin_char,
                end_char=end_char,
                token_ids=tokens.ids[start:end],
                metadata=doc.metadata if breaks is None else _paged(doc.metadata, breaks, begin_char, end_char),
            )
        )
        if end == n:
            break
        start = _word_start(tokens.word_ids, max(end - config.overlap_tokens, start + 1), floor=start + 1)
    return chunks


def _page_breaks(doc: Document) -> list[int] | None:
    """Where a paged document's pages end (offsets of PAGE_BREAK), or None for another document."""
    if not isinstance(doc.metadata.get("page_count"), int):
        return None
    breaks: list[int] = []
    at = doc.text.find(PAGE_BREAK)
    while at >= 0:
        breaks.append(at)
        at = doc.text.find(PAGE_BREAK, at + 1)
    return breaks


def _paged(metadata: dict[str, Any], breaks: list[int], begin_char: int, end_char: int) -> dict[str, Any]:
    """The document's metadata and the pages the chunk [begin_char, end_char) lies on."""
    first = bisect.bisect_left(breaks, begin_char) + 1
    last = bisect.bisect_left(breaks, end_char) + 1
    return {**metadata, "page": first, "pages": [first, last]}


def _word_start(word_ids: list[int | None], i: int, floor: int) -> int:
    """Token index `i` moved back to the first piece of its word; unchanged when that would go
    below `floor` (a single "word" longer than the window has to be cut somewhere)."""
    j = i
    while j > floor and word_ids[j] is not None and word_ids[j] == word_ids[j - 1]:
        j -= 1
    return j if word_ids[j] is None or j == 0 or word_ids[j] != word_ids[j - 1] else i


def _sentence_cut(text: str, offsets: list[tuple[int, int]], start: int, end: int, size: int) -> int:
    """The largest cut in (start + 60% of size, end] that follows a sentence end, else `end`."""
    floor = start + int(size * MIN_FILL)
    for cut in range(end, floor, -1):
        last_char = offsets[cut - 1][1] - 1
        if last_char >= 0 and text[last_char] in SENTENCE_END:
            return cut
    return end
