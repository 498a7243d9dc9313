"""The edit memory (SERAC, Mitchell et al. 2022): explicit corrections that take precedence over
the documents for the questions they are about, and for no others.

- The **edit table** (indexer/edits.py, in the documents' store) is the truth; every replica
  follows it (`catch_up`, called by the replica's follower: service/application/replicas.py), and
  the replica that takes an edit applies it before it answers 201.
- The **edit index** (retriever/edit_index.py) finds the few edits whose questions are nearest a
  query; the **scope classifier** (retriever/scope.py) gives each a calibrated probability that
  the query asks what the edit answers. The most probable one at or above the threshold (setting
  `edit_scope_threshold`) is the query's edit; below it the query is answered as if no edit existed.

numpy, faiss and the classifier are imported when the memory is built, never by the HTTP layer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from indexer.edits import Edit, EditStore, EditVector, NewEdit
from ragserve.errors import UnknownEditError
from ragserve.types import Passage

if TYPE_CHECKING:
    from retriever.edit_index import EditSnapshot
    from retriever.scope import ScopeClassifier

log = logging.getLogger(__name__)

EDIT_PREFIX = "edit:"  # the doc_id and chunk_id of an edit cited as a passage
VECTOR_DTYPE = "<f4"  # how a question's vector is kept in the edit table: little-endian float32


def stored_vector(encoder_key: str, vector: Any) -> EditVector:
    """A (dim,) question vector as the edit table keeps it, with the key of the encoder that made it."""
    import numpy as np

    return EditVector(encoder_key, np.asarray(vector, VECTOR_DTYPE).tobytes())


@dataclass(frozen=True, slots=True)
class EditPolicy:
    """How edits are matched (from the settings)."""

    threshold: float  # p(in scope) at or above which an edit answers
    candidates: int  # nearest edits judged per query
    limit: int  # live edits at most


@dataclass(frozen=True, slots=True)
class EditMatch:
    edit: Edit
    probability: float  # calibrated p(the query is in the edit's scope)

    def passage(self) -> Passage:
        """The edit as a cited passage (its score: the scope probability)."""
        edit = self.edit
        metadata = {"edit_id": edit.id, "created_by": edit.created_by, "created_at": edit.created_at}
        if edit.note:
            metadata["note"] = edit.note
        text = edit.fact
        return Passage(
            EDIT_PREFIX + edit.id, EDIT_PREFIX + edit.id, "Edit", text, self.probability, 0, len(text), metadata
        )


class EditMemory:
    def __init__(
        self,
        store: EditStore,
        embed: Callable[[list[str]], Any],  # texts -> (n, dim) unit vectors (the retriever's encoder)
        dim: int,
        policy: EditPolicy,
        classifier: ScopeClassifier,
        encoder_key: str,  # what made `embed`'s vectors: stored vectors of another key are made again
    ) -> None:
        from retriever.edit_index import EditSnapshot

        self.store = store
        self.embed = embed
        self.dim = dim
        self.encoder_key = encoder_key
        self.policy = policy
        self.classifier = classifier
        # (the index, the live edits by id): replaced as one, so a search sees one state or the next
        self._state: tuple[EditSnapshot, dict[str, Edit]] = (EditSnapshot.empty(dim), {})
        self.seq = 0  # the edit table's counter value the snapshot includes
        self._apply = threading.Lock()  # one applier at a time (the follower, or a create/delete here)
        self.catch_up()

    def __len__(self) -> int:
        return len(self._state[1])

    def catch_up(self) -> int:
        """Apply the table's changes since the last call; how many there were."""
        with self._apply:
            changes = self.store.changes_since(self.seq)
            if not changes.edits:
                return 0
            added = [e for e in changes.edits if e.live]
            removed = {e.id for e in changes.edits if not e.live}
            fresh = {e.id: (e.question, v) for e, v in zip(added, self._vectors(added), strict=True)}
            snapshot, live = self._state
            live = {k: v for k, v in {**live, **{e.id: e for e in added}}.items() if k not in removed}
            self._state = (snapshot.changed(fresh, removed), live)
            self.seq = changes.seq
            log.info("edit memory: %d live edits (change %d)", len(live), self.seq)
            return len(changes.edits)

    def _vectors(self, edits: list[Edit]) -> list[Any]:
        """(dim,) unit vectors of the edits' questions: the stored ones this encoder made, the
        others embedded now (one batch)."""
        import numpy as np

        vectors: list[Any] = [None] * len(edits)
        for i, e in enumerate(edits):
            if e.vector is not None and e.vector.model == self.encoder_key and len(e.vector.data) == 4 * self.dim:
                vectors[i] = np.frombuffer(e.vector.data, VECTOR_DTYPE)
        missing = [i for i, v in enumerate(vectors) if v is None]
        if missing:
            for i, vector in zip(missing, self.embed([edits[i].question for i in missing]), strict=True):
                vectors[i] = vector
        return vectors

    def create(self, edit: NewEdit, actor: str) -> Edit:
        """Store the edit, with its question's vector, and apply it here before returning (other
        replicas follow the table, and use the vector when their encoder is the same)."""
        vector = stored_vector(self.encoder_key, self.embed([edit.question])[0])
        created = self.store.create(edit, actor, self.policy.limit, vector)
        self.catch_up()
        return created

    def delete(self, edit_id: str, actor: str) -> Edit:
        deleted = self.store.delete(edit_id, actor)
        if deleted is None:
            raise UnknownEditError(f"no live edit {edit_id!r}")
        self.catch_up()
        return deleted

    def get(self, edit_id: str) -> Edit:
        found = self.store.get(edit_id)
        if found is None:
            raise UnknownEditError(f"no edit {edit_id!r}")
        return found

    def list(self, include_deleted: bool, after: str | None, limit: int) -> list[Edit]:
        return self.store.list(include_deleted, after, limit)

    def match(self, query: str) -> EditMatch | None:
        """The edit whose scope the query falls in, or None (no embedding at all without edits)."""
        snapshot, live = self._state
        if not len(snapshot):
            return None
        vector = self.embed([query])[0]  # (dim,)
        candidates = snapshot.nearest(vector, self.policy.candidates)
        if not candidates:
            return None
        rows = [c.row for c in candidates]
        p = self.classifier.probabilities(query, vector, [c.question for c in candidates], snapshot.vectors[rows])
        best = int(p.argmax())
        if float(p[best]) < self.policy.threshold:
            return None
        return EditMatch(live[candidates[best].edit_id], float(p[best]))
