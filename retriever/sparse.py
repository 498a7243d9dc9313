"""BM25 (Robertson & Zaragoza, Lucene's variant) over an index version's chunks.

The indexer writes the inverted index next to the dense one: term frequencies as a sparse
(chunks x terms) matrix in `sparse.npz` (plain arrays, no pickle) and the vocabulary in
`sparse_vocab.json`. Weights are computed at load time, so k1 and b are search settings, not
build settings. Weights are kept term-major (a postings list per term), queries become a sparse
(queries x terms) matrix, and one sparse product scores the whole batch while touching only the
postings of the query terms.

Scores are reported normalised: BM25 divided by the largest value the query could reach (every
query term at its saturation limit), so they lie in [0, 1] whatever the query length and can be
combined with cosine similarities (see `retriever/hybrid.py`).
"""

from __future__ import annotations

import functools
import json
import re
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

SPARSE_FILE = "sparse.npz"
VOCAB_FILE = "sparse_vocab.json"
ANALYZER_VERSION = 1  # bump when `terms` changes: artifacts record it

_WORD = re.compile(r"\w+")
# A short English stop list: words that carry no topic, mostly question words and function words.
STOPWORDS = frozenset(
    """
    a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had
    has have having he her here hers herself him himself his how i if in into is it its itself just
    me more most my myself no nor not now of off on once only or other our ours ourselves out over
    own same she should so some such than that the their theirs them themselves then there these
    they this those through to too under until up very was we were what when where which while who
    whom why will with would you your yours yourself yourselves s t
    """.split()  # noqa: SIM905 (a word list reads better as text)
)


def terms(text: str) -> list[str]:
    """Lower-cased word tokens without stop words; plural -s is folded (cars -> car)."""
    return [t for w in _WORD.findall(text.lower()) if (t := _term(w))]


@functools.lru_cache(maxsize=1 << 18)  # a quarter million distinct words: tens of MB at most
def _term(word: str) -> str:
    """The term of one lower-cased word; "" for a stop word. Memoised: a corpus repeats its words."""
    if word in STOPWORDS:
        return ""
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def indexed_text(title: str, text: str) -> str:
    """What BM25 sees of a chunk: its document title and its text."""
    return f"{title}\n{text}" if title else text


@dataclass(frozen=True, slots=True)
class BM25Params:
    """k1 and b (settings `bm25_k1`, `bm25_b`: fitted with the fusion weights on SQuAD's training
    articles, a low k1 suits short chunks; Lucene's defaults are k1 = 1.2, b = 0.75)."""

    k1: float
    b: float

    def __post_init__(self) -> None:
        assert self.k1 > 0 and 0 <= self.b <= 1, "BM25 needs k1 > 0 and 0 <= b <= 1"


class SparseIndexWriter:
    """Accumulates term counts chunk by chunk, in FAISS id order, and writes them out."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}
        self._indptr = array("q", [0])
        self._indices = array("i")
        self._counts = array("i")
        self._lengths = array("i")

    def add(self, texts: Iterable[str]) -> None:
        for text in texts:
            words = terms(text)
            for term, count in Counter(words).items():
                self._indices.append(self.vocab.setdefault(term, len(self.vocab)))
                self._counts.append(count)
            self._indptr.append(len(self._indices))
            self._lengths.append(len(words))

    @property
    def rows(self) -> int:
        return len(self._lengths)

    def lengths(self) -> np.ndarray:
        return np.frombuffer(self._lengths, np.int32)  # (chunks,) words after stop words

    def matrix(self) -> sp.csr_matrix:
        shape = (self.rows, len(self.vocab))
        return sp.csr_matrix((np.frombuffer(self._counts, np.int32), self._indices, self._indptr), shape=shape)

    def write(self, directory: Path) -> None:
        np.savez(
            directory / SPARSE_FILE,
            indptr=np.frombuffer(self._indptr, np.int64),
            indices=np.frombuffer(self._indices, np.int32),
            counts=np.frombuffer(self._counts, np.int32),
            lengths=self.lengths(),
        )
        words = sorted(self.vocab, key=self.vocab.__getitem__)
        (directory / VOCAB_FILE).write_text(json.dumps(words, ensure_ascii=False), encoding="utf-8")


class SparseIndex:
    """BM25 search over a (chunks x terms) term-frequency matrix."""

    def __init__(self, vocab: dict[str, int], tf: sp.csr_matrix, lengths: np.ndarray, params: BM25Params) -> None:
        assert tf.shape == (lengths.shape[0], len(vocab)), "one row per chunk, one column per term"
        self.vocab = vocab
        self.params = params
        self.rows = int(tf.shape[0])
        df = np.bincount(tf.indices, minlength=len(vocab))  # (terms,) chunks containing each term
        self.avg_length = float(lengths.mean()) if self.rows else 1.0
        self.idf = np.log1p((self.rows - df + 0.5) / (df + 0.5)).astype(np.float32)  # (terms,)
        self.postings = self.weigh(tf, lengths)  # (terms, chunks) csr

    @classmethod
    def load(cls, directory: Path, params: BM25Params) -> SparseIndex:
        words = json.loads((directory / VOCAB_FILE).read_text(encoding="utf-8"))
        with np.load(directory / SPARSE_FILE, allow_pickle=False) as f:
            lengths = f["lengths"]
            tf = sp.csr_matrix((f["counts"], f["indices"], f["indptr"]), shape=(lengths.shape[0], len(words)))
        return cls({w: i for i, w in enumerate(words)}, tf, lengths, params)

    @classmethod
    def from_texts(cls, texts: Iterable[str], params: BM25Params) -> SparseIndex:
        writer = SparseIndexWriter()
        writer.add(texts)
        return cls(writer.vocab, writer.matrix(), writer.lengths(), params)

    def weigh(self, tf: sp.csr_matrix, lengths: np.ndarray) -> sp.csr_matrix:
        """BM25 weights of (chunks x terms) frequencies under this index's statistics, as
        (terms x chunks) postings."""
        k1, b = self.params.k1, self.params.b
        counts = tf.data.astype(np.float32)
        norm = k1 * (1 - b + b * lengths.astype(np.float32) / self.avg_length)  # (chunks,)
        per_posting = np.repeat(norm, np.diff(tf.indptr))
        data = self.idf[tf.indices] * counts * (k1 + 1) / (counts + per_posting)
        return sp.csr_matrix((data, tf.indices, tf.indptr), shape=tf.shape).T.tocsr()

    def tf_rows(self, texts: Sequence[str]) -> tuple[sp.csr_matrix, np.ndarray]:
        """Term frequencies of new texts over this vocabulary (unknown terms dropped: they have no
        statistics here), and their lengths; for a delta index scored with this index's statistics."""
        indptr, indices, counts, lengths = [0], [], [], []
        for text in texts:
            words = terms(text)
            for term, count in Counter(words).items():
                if (col := self.vocab.get(term)) is not None:
                    indices.append(col)
                    counts.append(count)
            indptr.append(len(indices))
            lengths.append(len(words))
        tf = sp.csr_matrix(
            (np.asarray(counts, np.int32), np.asarray(indices, np.int32), np.asarray(indptr, np.int64)),
            shape=(len(lengths), len(self.vocab)),
        )
        return tf, np.asarray(lengths, np.int32)

    def query_matrix(self, queries: Sequence[str]) -> tuple[sp.csr_matrix, np.ndarray]:
        """(queries x terms) term counts and each query's largest attainable BM25 score."""
        query_of: list[int] = []
        term_of: list[int] = []
        counts: list[float] = []
        for q, query in enumerate(queries):
            for term, count in Counter(terms(query)).items():
                if (col := self.vocab.get(term)) is not None:
                    query_of.append(q)
                    term_of.append(col)
                    counts.append(float(count))
        shape = (len(queries), len(self.vocab))
        matrix = sp.csr_matrix((counts, (query_of, term_of)), shape=shape, dtype=np.float32)
        ceiling = (matrix @ self.idf).ravel() * (self.params.k1 + 1)  # (Q,)
        return matrix, np.maximum(ceiling, 1e-6).astype(np.float32)

    def score(self, postings: sp.csr_matrix, queries: sp.csr_matrix, ceiling: np.ndarray) -> np.ndarray:
        """Normalised BM25 of every chunk of `postings` (terms x chunks) for every query -> (Q, chunks)."""
        scores: np.ndarray = (queries @ postings).toarray()  # (Q, chunks)
        normalised: np.ndarray = (scores / ceiling[:, None]).astype(np.float32)
        return normalised

    def search(self, queries: Sequence[str], top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows per query -> scores (Q, k) float32 and rows (Q, k) int64; row -1 = no hit
        (chunks sharing no term with the query are never returned)."""
        matrix, ceiling = self.query_matrix(queries)
        scores = self.score(self.postings, matrix, ceiling)  # (Q, N)
        return top_rows(scores, top_k)


def top_rows(scores: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best positive columns of each row of a (Q, N) score matrix, best first."""
    q, n = scores.shape
    k = min(top_k, n)
    out_scores = np.zeros((q, top_k), np.float32)
    out_rows = np.full((q, top_k), -1, np.int64)
    if k == 0:
        return out_scores, out_rows
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (q, 1))
    picked = np.take_along_axis(scores, part, axis=1)  # (Q, k)
    order = np.argsort(-picked, axis=1, kind="stable")
    part, picked = np.take_along_axis(part, order, axis=1), np.take_along_axis(picked, order, axis=1)
    hit = picked > 0
    out_scores[:, :k] = np.where(hit, picked, 0)
    out_rows[:, :k] = np.where(hit, part, -1)
    return out_scores, out_rows
