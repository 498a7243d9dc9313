"""The edit memory's search structure: the questions of the live edits, embedded by the retriever's
encoder, in a small exact FAISS index (inner product of unit vectors = cosine). A query's nearest
edits are the candidates that the scope classifier (retriever/scope.py) then judges.

Snapshots are immutable: a change builds a new one, which replaces the old by one reference
assignment, so searches never wait on a writer and never see half a change. Building copies the
vectors (10,000 edits: 15 MB, a few milliseconds), which is cheap next to embedding the edits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np


@dataclass(frozen=True, slots=True)
class Candidate:
    edit_id: str
    question: str
    cosine: float
    row: int  # in the snapshot's arrays


@dataclass(frozen=True)
class EditSnapshot:
    ids: tuple[str, ...]
    questions: tuple[str, ...]
    vectors: np.ndarray  # (n, dim) float32, unit rows, aligned with ids
    index: faiss.IndexFlatIP | None  # None when there are no edits

    @classmethod
    def empty(cls, dim: int) -> EditSnapshot:
        return cls((), (), np.zeros((0, dim), np.float32), None)

    @classmethod
    def of(cls, ids: Sequence[str], questions: Sequence[str], vectors: np.ndarray) -> EditSnapshot:
        assert vectors.ndim == 2 and len(ids) == len(questions) == vectors.shape[0], "one vector per edit"
        vectors = np.ascontiguousarray(vectors, np.float32)  # (n, dim)
        index = None
        if len(ids):
            index = faiss.IndexFlatIP(vectors.shape[1])
            index.add(vectors)
        return cls(tuple(ids), tuple(questions), vectors, index)

    def __len__(self) -> int:
        return len(self.ids)

    def changed(self, added: dict[str, tuple[str, np.ndarray]], removed: set[str]) -> EditSnapshot:
        """A new snapshot without the `removed` ids and with `added` (id -> (question, (dim,) vector))."""
        keep = [i for i, edit_id in enumerate(self.ids) if edit_id not in removed and edit_id not in added]
        ids = [self.ids[i] for i in keep] + list(added)
        questions = [self.questions[i] for i in keep] + [q for q, _ in added.values()]
        fresh = [v for _, v in added.values()]
        vectors = np.vstack([self.vectors[keep], *fresh]) if fresh else self.vectors[keep]  # (n', dim)
        return EditSnapshot.of(ids, questions, vectors)

    def nearest(self, query_vector: np.ndarray, k: int) -> list[Candidate]:
        """The k edits whose questions are nearest the query, nearest first."""
        if self.index is None:
            return []
        assert query_vector.shape == (self.vectors.shape[1],), "one query vector of the encoder's dimension"
        scores, rows = self.index.search(query_vector[None, :].astype(np.float32), min(k, len(self)))  # (1, k)
        return [
            Candidate(self.ids[r], self.questions[r], float(s), int(r))
            for s, r in zip(scores[0], rows[0], strict=True)
            if r >= 0
        ]
