"""Dense retrieval over one verified index artifact."""

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from indexer.artifact import DOCSTORE_FILE, INDEX_FILE, Manifest, verify_artifact
from indexer.docstore import Docstore, StoredChunk
from retriever import faiss_index
from retriever.base import Retriever
from retriever.encoder import Encoder
from retriever.errors import ModelMismatchError
from retriever.types import Passage, SearchResult


class DenseRetriever(Retriever):
    def __init__(self, path: Path, encoder: Encoder, ef_search: int = 128, nprobe: int = 16) -> None:
        self.path = path
        self.manifest: Manifest = verify_artifact(path)
        if self.manifest.retriever_weights_sha256 != encoder.weights_sha256:
            raise ModelMismatchError(
                f"{path} was built with retriever {self.manifest.retriever_model!r} "
                f"(weights sha256 {self.manifest.retriever_weights_sha256[:12]}…), but the loaded retriever is "
                f"{encoder.name!r} (weights sha256 {encoder.weights_sha256[:12]}…): rebuild the index or "
                "configure the matching model"
            )
        self.encoder = encoder
        self.index = faiss_index.load(path / INDEX_FILE, ef_search=ef_search, nprobe=nprobe)
        self.docstore = Docstore(path / DOCSTORE_FILE)

    @property
    def index_version(self) -> str:
        return self.manifest.version

    def search_batch(self, queries: Sequence[str], top_k: int) -> list[SearchResult]:
        t0 = time.perf_counter()
        vectors = self.encoder.encode_queries(queries)  # (Q, dim)
        t1 = time.perf_counter()
        scores, rows = self.index.search(vectors, top_k)  # (Q, k) each; row -1 = no hit
        t2 = time.perf_counter()
        records = self.docstore.get(sorted({int(r) for r in rows.ravel() if r >= 0}))
        t3 = time.perf_counter()
        per_query = len(queries)
        timings = {
            "embed": (t1 - t0) * 1000 / per_query,
            "search": (t2 - t1) * 1000 / per_query,
            "fetch": (t3 - t2) * 1000 / per_query,
        }
        return [self._result(s, r, records, timings) for s, r in zip(scores, rows, strict=True)]

    def _result(
        self, scores: np.ndarray, rows: np.ndarray, records: dict[int, StoredChunk], timings: dict[str, float]
    ) -> SearchResult:
        passages = [
            Passage(
                chunk_id=rec.chunk_id,
                doc_id=rec.doc_id,
                title=rec.title,
                text=rec.text,
                score=score,
                start_char=rec.start_char,
                end_char=rec.end_char,
                metadata=rec.metadata,
            )
            for score, row in zip(scores.tolist(), rows.tolist(), strict=True)
            if row >= 0 and (rec := records[row])
        ]
        return SearchResult(passages=passages, index_version=self.index_version, timings_ms=dict(timings))
