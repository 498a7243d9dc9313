"""The live delta's apply path: changed documents are chunked and embedded exactly as a build
would (indexer/build.py), then handed to the serving version's delta index (retriever/delta.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from indexer.chunking import ChunkingConfig, chunk_document
from ragserve.types import Document
from retriever.delta import DeltaIndex, Embedded

if TYPE_CHECKING:
    from retriever.encoder import Encoder

NO_TEXT = "no text to index: the document is stored but cannot be retrieved"


def _every(doc_id: str) -> bool:
    return True


class DeltaFeed:
    """Feeds one delta index, with the encoder and the chunking of the version it belongs to.
    `owns` says which documents it holds: all, or those of the shards a replica serves."""

    def __init__(
        self, delta: DeltaIndex, encoder: Encoder, chunking: ChunkingConfig, owns: Callable[[str], bool] = _every
    ) -> None:
        self.delta = delta
        self.encoder = encoder
        self.chunking = chunking
        self.owns = owns

    def apply(self, changed: Sequence[Document], removed: Sequence[str], seq: int) -> dict[str, str]:
        """Index `changed`, drop `removed`, note that changes up to `seq` are in; returns
        {doc id: problem} for documents with no text (of those it holds)."""
        changed = [d for d in changed if self.owns(d.id)]
        removed = [doc_id for doc_id in removed if self.owns(doc_id)]
        problems: dict[str, str] = {}
        embedded: dict[str, Embedded] = {}
        tokenized = self.encoder.tokenize([d.text for d in changed]) if changed else []
        for doc, tokens in zip(changed, tokenized, strict=True):
            chunks = chunk_document(doc, tokens, self.chunking)
            if not chunks:
                problems[doc.id] = NO_TEXT
            embedded[doc.id] = (chunks, self.encoder.encode_ids([c.token_ids for c in chunks]))
        self.delta.put(embedded, removed, seq)
        return problems
