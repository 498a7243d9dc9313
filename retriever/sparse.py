"""BM25 (Robertson & Zaragoza, Lucene's variant) over an index version's chunks.

The indexer writes the inverted index next to the dense one: term frequencies as a sparse
(chunks x terms) matrix in `sparse.npz` (plain arrays, no pickle) and the vocabulary in
`sparse_vocab.json`. Weights are computed at load time, so k1 and b are search settings, not
build settings. Weights are kept term-major (a postings list per term), queries become a sparse
(queries x terms) matrix, and one sparse product scores the whole batch while touching only the
postings of the query terms. The product stays sparse (`SparseHits`): a query costs memory for the
chunks that share a term with it, never a row per chunk of the index, and its top k are picked
among those chunks alone.

Scores are reported normalised: BM25 divided by the largest value the query could reach (every
query term at its saturation limit), so they lie in [0, 1] whatever the query length and can be
combined with cosine similarities (see `retriever/hybrid.py`).
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from retriever.postings import Postings, SparseHits

SPARSE_FILE = "sparse.npz"
VOCAB_FILE = "sparse_vocab.json"
CORPUS_VOCAB_FILE = "corpus_vocab.json"
CORPUS_DF_FILE = "corpus_df.npy"
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

    def counts(self) -> TermCounts:
        """What was added, over the vocabulary in sorted order: artifacts store it so, and a
        query's terms are summed in that order whichever shard or build holds a chunk."""
        words = sorted(self.vocab)
        sorted_id = np.empty(len(words), np.int32)  # first-seen id -> sorted id
        sorted_id[[self.vocab[w] for w in words]] = np.arange(len(words), dtype=np.int32)
        indices = sorted_id[np.frombuffer(self._indices, np.int32)]  # (nnz,)
        shape = (self.rows, len(words))
        tf = sp.csr_matrix(
            (np.frombuffer(self._counts, np.int32), indices, np.frombuffer(self._indptr, np.int64)), shape
        )
        tf.sort_indices()
        return TermCounts(words, tf, np.frombuffer(self._lengths, np.int32).copy())

    def write(self, directory: Path) -> TermCounts:
        counts = self.counts()
        counts.write(directory)
        return counts


@dataclass(frozen=True, slots=True)
class TermCounts:
    """The term frequencies of consecutive chunks over their own vocabulary, as an artifact (or a
    shard of one) stores them: `sparse.npz` and `sparse_vocab.json`."""

    words: list[str]  # ascending
    tf: sp.csr_matrix  # (chunks, words) int32
    lengths: np.ndarray  # (chunks,) words after stop words

    @classmethod
    def load(cls, directory: Path) -> TermCounts:
        words = json.loads((directory / VOCAB_FILE).read_text(encoding="utf-8"))
        with np.load(directory / SPARSE_FILE, allow_pickle=False) as f:
            lengths = f["lengths"]
            tf = sp.csr_matrix((f["counts"], f["indices"], f["indptr"]), shape=(lengths.shape[0], len(words)))
        if any(a >= b for a, b in itertools.pairwise(words)):  # written before vocabularies were sorted
            order = sorted(range(len(words)), key=words.__getitem__)
            tf = tf[:, order]  # (chunks, words) columns in ascending word order
            words = [words[i] for i in order]
        return cls(words, tf, lengths)

    def write(self, directory: Path) -> None:
        tf = self.tf
        np.savez(
            directory / SPARSE_FILE,
            indptr=tf.indptr.astype(np.int64),
            indices=tf.indices,
            counts=tf.data,
            lengths=self.lengths,
        )
        (directory / VOCAB_FILE).write_text(json.dumps(self.words, ensure_ascii=False), encoding="utf-8")

    def statistics(self) -> CorpusStatistics:
        """These chunks' own statistics (of a shard: to be merged with the other shards')."""
        df = np.bincount(self.tf.indices, minlength=len(self.words)).astype(np.int64)  # (words,)
        return CorpusStatistics(self.words, df, int(self.tf.shape[0]), int(self.lengths.sum(dtype=np.int64)))

    def over(self, vocab: dict[str, int]) -> sp.csr_matrix:
        """The frequencies over `vocab`'s ids (a superset of these words) -> (chunks, len(vocab))."""
        if len(vocab) == len(self.words):
            return self.tf  # the same vocabulary: both ascending, the same ids
        ids = np.array([vocab[w] for w in self.words], np.int32)  # (words,) ascending too
        return sp.csr_matrix((self.tf.data, ids[self.tf.indices], self.tf.indptr), shape=(self.tf.shape[0], len(vocab)))


@dataclass(frozen=True, slots=True)
class CorpusStatistics:
    """What BM25 needs of the whole corpus, however it is split into shards: each term's document
    frequency, the number of chunks and their total length. A sharded artifact records them
    (`corpus_df.npy`, `corpus_vocab.json`), so a replica serving some shards scores every chunk
    exactly as an unsharded index would."""

    words: list[str]  # ascending: vocabulary id = position
    df: np.ndarray  # (words,) int64
    chunks: int
    total_length: int

    @classmethod
    def merge(cls, parts: Sequence[CorpusStatistics]) -> CorpusStatistics:
        """The statistics of the union of disjoint sets of chunks (the shards of a corpus)."""
        if len(parts) == 1:
            return parts[0]
        words = sorted(set().union(*(p.words for p in parts)))
        at = {w: i for i, w in enumerate(words)}
        df = np.zeros(len(words), np.int64)
        for part in parts:
            np.add.at(df, np.array([at[w] for w in part.words], np.int64), part.df)
        return cls(words, df, sum(p.chunks for p in parts), sum(p.total_length for p in parts))

    @classmethod
    def load(cls, directory: Path, chunks: int, total_length: int) -> CorpusStatistics:
        words = json.loads((directory / CORPUS_VOCAB_FILE).read_text(encoding="utf-8"))
        df = np.load(directory / CORPUS_DF_FILE, allow_pickle=False)
        assert df.shape == (len(words),), "one document frequency per term"
        return cls(words, df, chunks, total_length)

    def write(self, directory: Path) -> None:
        (directory / CORPUS_VOCAB_FILE).write_text(json.dumps(self.words, ensure_ascii=False), encoding="utf-8")
        np.save(directory / CORPUS_DF_FILE, self.df, allow_pickle=False)

    def manifest(self) -> dict[str, int]:
        """What the manifest records beside the files (the totals BM25's length norm needs)."""
        return {"chunks": self.chunks, "total_length": self.total_length, "terms": len(self.words)}


class SparseIndex:
    """BM25 under one corpus's statistics: it turns texts into weights and queries into terms,
    and searches the term counts it was given (`blocks`: one per shard; none for statistics only)."""

    def __init__(self, statistics: CorpusStatistics, params: BM25Params, counts: Sequence[TermCounts] = ()) -> None:
        self.vocab = {w: i for i, w in enumerate(statistics.words)}
        self.params = params
        self.rows = statistics.chunks
        self.avg_length = statistics.total_length / statistics.chunks if statistics.chunks else 1.0
        df = statistics.df
        self.idf = np.log1p((self.rows - df + 0.5) / (df + 0.5)).astype(np.float32)  # (terms,)
        self.blocks = tuple(Postings.of(self.weigh(c.over(self.vocab), c.lengths)) for c in counts)

    @classmethod
    def of(cls, counts: TermCounts, params: BM25Params) -> SparseIndex:
        """The index of one artifact's (or one shard's whole-corpus) counts, under their own statistics."""
        return cls(counts.statistics(), params, [counts])

    @classmethod
    def load(cls, directory: Path, params: BM25Params) -> SparseIndex:
        return cls.of(TermCounts.load(directory), params)

    @classmethod
    def from_texts(cls, texts: Iterable[str], params: BM25Params) -> SparseIndex:
        writer = SparseIndexWriter()
        writer.add(texts)
        return cls.of(writer.counts(), params)

    @property
    def postings(self) -> Postings:
        """The one block of an index over a single set of counts."""
        assert len(self.blocks) == 1, "an index of one artifact has one block"
        return self.blocks[0]

    def weigh(self, tf: sp.csr_matrix, lengths: np.ndarray) -> sp.csr_matrix:
        """BM25 weights of (chunks x terms) frequencies under this index's statistics, (chunks x terms):
        a row's weights depend on the row alone, so rows weighed apart equal rows weighed together."""
        k1, b = self.params.k1, self.params.b
        counts = tf.data.astype(np.float32)
        norm = k1 * (1 - b + b * lengths.astype(np.float32) / self.avg_length)  # (chunks,)
        per_posting = np.repeat(norm, np.diff(tf.indptr))
        data = self.idf[tf.indices] * counts * (k1 + 1) / (counts + per_posting)
        return sp.csr_matrix((data, tf.indices, tf.indptr), shape=tf.shape)

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

    def search(self, queries: Sequence[str], top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows per query -> scores (Q, k) float32 and rows (Q, k) int64; row -1 = no hit
        (chunks sharing no term with the query are never returned)."""
        return SparseHits.of(self.blocks, *self.query_matrix(queries)).top(top_k)
