"""BM25 and hybrid retrieval: every fast path checked against a plain re-computation."""

import itertools
import json
import math
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from indexer.delta import DeltaFeed
from ragserve.types import Document, RetrievalMode
from retriever.artifact import MANIFEST, read_manifest
from retriever.delta import DeltaIndex, FreshRetriever
from retriever.docstore import Docstore
from retriever.encoder import Encoder
from retriever.hybrid import FusionWeights, QueryTerms, fuse, lexical_features, rank
from retriever.postings import SparseHits
from retriever.sparse import SPARSE_FILE, VOCAB_FILE, BM25Params, SparseIndex, terms
from retriever.version import VersionRetriever
from service.application.squad import select_articles
from tests.defaults import BUILD, SEARCH

TEXTS = [
    "The lantern parade of Quenmoor is held in spring.",
    "Granite bridges last long; the Harrow bridge is granite.",
    "Cheese ripens in caves. Caves are cool.",
    "Nothing here matches.",
]


def plain_bm25(texts: list[str], query: str, k1: float, b: float) -> list[float]:
    """Textbook Lucene BM25, term by term, divided by the query's ceiling."""
    docs = [Counter(terms(t)) for t in texts]
    lengths = [sum(d.values()) for d in docs]
    avg = sum(lengths) / len(lengths)
    n = len(docs)
    q = Counter(terms(query))
    vocab = {w for d in docs for w in d}
    idf = {w: math.log(1 + (n - sum(w in d for d in docs) + 0.5) / (sum(w in d for d in docs) + 0.5)) for w in vocab}
    ceiling = sum(idf[w] * c for w, c in q.items() if w in vocab) * (k1 + 1)
    out = []
    for d, length in zip(docs, lengths, strict=True):
        s = sum(c * idf[w] * d[w] * (k1 + 1) / (d[w] + k1 * (1 - b + b * length / avg)) for w, c in q.items() if w in d)
        out.append(s / ceiling if ceiling else 0.0)
    return out


@pytest.mark.parametrize(("k1", "b"), [(0.3, 0.5), (1.2, 0.75), (0.9, 0.0)])
def test_bm25_equals_the_textbook_formula(k1: float, b: float) -> None:
    index = SparseIndex.from_texts(TEXTS, BM25Params(k1, b))
    for query in ["granite bridge", "caves caves cheese", "spring parade in Quenmoor", "unknown words"]:
        matrix, ceiling = index.query_matrix([query])
        got = SparseHits.of([index.postings], matrix, ceiling).scores.toarray()[0]
        np.testing.assert_allclose(got, plain_bm25(TEXTS, query, k1, b), rtol=1e-5, atol=1e-6)


def test_bm25_search_ranks_and_skips_non_matching_chunks() -> None:
    index = SparseIndex.from_texts(TEXTS, SEARCH.bm25)
    scores, rows = index.search(["granite bridge", "zzz"], 3)
    assert rows[0][0] == 1 and rows[0][1:].tolist() == [-1, -1]  # one chunk shares a term
    assert 0 < scores[0][0] <= 1
    assert rows[1].tolist() == [-1, -1, -1]


def test_terms_drop_stop_words_and_fold_plurals() -> None:
    assert terms("What are the Bridges of the river?") == ["bridge", "river"]
    assert terms("glass bus analysis") == ["glass", "bus", "analysis"]  # -ss, -us, -is kept


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.sampled_from([0.0, 0.0, 0.25, 0.5, 0.5, 1.0, -0.5]), min_size=1, max_size=30),  # ties are common
    st.integers(0, 40),
)
def test_top_k_of_sparse_hits_equals_a_full_stable_sort(values: list[float], k: int) -> None:
    dense = np.array([values, values[::-1]], np.float32)  # (2, N)
    got_scores, got_rows = SparseHits(sp.csr_matrix(dense)).top(k)
    for q in range(2):
        want = [i for i in np.argsort(-dense[q], kind="stable") if dense[q][i] > 0][:k]  # ties by row
        assert got_rows[q].tolist() == want + [-1] * (k - len(want))
        assert got_scores[q].tolist() == dense[q][want].tolist() + [0.0] * (k - len(want))


def test_lexical_features() -> None:
    query = QueryTerms.of("When was the Harrow bridge built?")
    phrase, title = lexical_features(query, "Harrow bridge", "It was built in 1871.")
    assert phrase == pytest.approx(2 / 2)  # (harrow, bridge) and (bridge, built) both adjacent in title+text
    assert title == 1.0
    assert lexical_features(query, "", "bridge harrow") == (0.0, 0.0)


WORDS = ["bridge", "bridges", "harrow", "the", "of", "built", "Tomas", "brell", "cars", "car", "1871", "is"]


@settings(max_examples=200, deadline=None)
@given(
    query=st.lists(st.sampled_from(WORDS), min_size=1, max_size=6),
    title=st.lists(st.sampled_from(WORDS), max_size=3),
    text=st.lists(st.sampled_from([*WORDS, ",", "-", "\n"]), max_size=40),
)
def test_lexical_features_equal_their_definition(query: list[str], title: list[str], text: list[str]) -> None:
    """The shortcut path (substring pre-check, joined-terms search) against plain set arithmetic."""
    q = QueryTerms.of(" ".join(query))
    title_s, text_s = " ".join(title), " ".join(text)
    pairs = set(itertools.pairwise(terms(f"{title_s}\n{text_s}" if title_s else text_s)))
    title_terms = set(terms(title_s))
    phrase = len(q.pairs & pairs) / len(q.pairs) if q.pairs else 0.0
    title_hit = len(title_terms & q.words) / len(title_terms) if title_terms else 0.0
    assert lexical_features(q, title_s, text_s) == pytest.approx((phrase, title_hit))


@settings(max_examples=300, deadline=None)
@given(
    query=st.lists(st.sampled_from(WORDS), min_size=1, max_size=6),
    chunks=st.lists(
        st.tuples(st.lists(st.sampled_from(WORDS), max_size=2), st.lists(st.sampled_from(WORDS), max_size=12)),
        min_size=1,
        max_size=30,
    ),
    scores=st.data(),
    phrase_weight=st.sampled_from([0.19, 0.0, -0.3, 2.0]),
    top_k=st.integers(1, 8),
)
def test_rank_equals_a_full_ranking_by_fuse(
    query: list[str],
    chunks: list[tuple[list[str], list[str]]],
    scores: st.DataObject,
    phrase_weight: float,
    top_k: int,
) -> None:
    n = len(chunks)
    grid = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])  # coarse: ties are common, and must break the same way
    dense = np.array(scores.draw(st.lists(grid, min_size=n, max_size=n)), np.float32)
    sparse = np.array(scores.draw(st.lists(grid, min_size=n, max_size=n)), np.float32)
    texts = [(" ".join(title), " ".join(text)) for title, text in chunks]
    weights = FusionWeights(sparse=0.75, phrase=phrase_weight, title=-0.21, candidates=50)
    q = QueryTerms.of(" ".join(query))
    rows = np.arange(100, 100 + n, dtype=np.int64)
    got_scores, got_rows = rank(q, rows, dense, sparse, texts, weights, top_k)
    full = fuse(q, dense, sparse, texts, weights)  # (n,)
    want = np.argsort(-full, kind="stable")[:top_k]
    assert got_rows.tolist() == rows[want].tolist()
    np.testing.assert_array_equal(got_scores, full[want])


def test_each_mode_finds_the_obvious_chunk(tiny_index: Path, encoder: Encoder) -> None:
    retriever = VersionRetriever(tiny_index, encoder, SEARCH)
    for mode in RetrievalMode:
        top = retriever.search("Who built the Harrow bridge?", 2, mode).passages
        assert top[0].doc_id == "bridge", mode


def test_hybrid_scores_equal_the_fusion_formula(tiny_index: Path, encoder: Encoder) -> None:
    weights = FusionWeights(sparse=0.7, phrase=0.3, title=-0.1, candidates=50)
    retriever = VersionRetriever(tiny_index, encoder, replace(SEARCH, fusion=weights))
    query = "In which town is the Zorblat festival held?"
    passages = retriever.search(query, 3, RetrievalMode.HYBRID).passages
    dense = {p.chunk_id: p.score for p in retriever.search(query, 10, RetrievalMode.DENSE).passages}
    chunks = [c for rows in Docstore(tiny_index / "docstore.sqlite").scan() for c in rows]
    texts = [f"{c.title}\n{c.text}" for c in chunks]
    bm25 = dict(zip([c.chunk_id for c in chunks], plain_bm25(texts, query, 0.3, 0.5), strict=True))
    for p in passages:
        phrase, title = lexical_features(QueryTerms.of(query), p.title, p.text)
        want = dense[p.chunk_id] + 0.7 * bm25[p.chunk_id] + 0.3 * phrase - 0.1 * title
        assert p.score == pytest.approx(want, abs=1e-4)
    assert [p.score for p in passages] == sorted((p.score for p in passages), reverse=True)


def test_an_artifact_without_a_bm25_index_gets_one_built_on_open(
    tiny_index: Path, encoder: Encoder, tmp_path: Path
) -> None:
    old = tmp_path / "old"
    shutil.copytree(tiny_index, old)
    manifest = json.loads((old / MANIFEST).read_text())
    for name in (SPARSE_FILE, VOCAB_FILE):
        (old / name).unlink()
        del manifest["files"][name]
    manifest["sparse_analyzer"] = 0
    (old / MANIFEST).write_text(json.dumps(manifest))
    assert read_manifest(old).sparse_analyzer == 0
    query = "limestone caves cheese"
    got = VersionRetriever(old, encoder, SEARCH).search(query, 3, RetrievalMode.SPARSE).passages
    want = VersionRetriever(tiny_index, encoder, SEARCH).search(query, 3, RetrievalMode.SPARSE).passages
    assert got == want and got


@pytest.mark.parametrize("mode", list(RetrievalMode))
def test_delta_chunks_compete_with_the_version_on_one_scale(tiny_index: Path, encoder: Encoder, mode: str) -> None:
    base = VersionRetriever(tiny_index, encoder, SEARCH)
    delta = DeltaIndex(encoder.dimension, base.sparse)
    fresh = FreshRetriever(base, delta)
    text = "The Harrow bridge was rebuilt in 1990 from red brick by the engineer Ada Brell."
    DeltaFeed(delta, encoder, BUILD.chunking).apply([Document("bridge", "Harrow bridge", text)], ["ferment"], seq=1)
    query = "Who rebuilt the Harrow bridge in red brick?"
    got = fresh.search(query, 10, RetrievalMode(mode)).passages
    assert got[0].text == text  # the replacement, not the version's old bridge chunk
    assert [p.doc_id for p in got].count("bridge") == 1
    assert "ferment" not in {p.doc_id for p in got}
    assert [p.score for p in got] == sorted((p.score for p in got), reverse=True)
    if mode == RetrievalMode.DENSE:  # the delta's score is the plain cosine
        cosine = float(encoder.encode_queries([query])[0] @ encoder.encode_queries([text])[0])
        assert got[0].score == pytest.approx(cosine, abs=1e-5)


def test_article_split_is_by_sorted_title() -> None:
    titles = ["d", "b", "a", "c", "a"]
    assert select_articles(titles, "train") == {"a", "b"}
    assert select_articles(titles, "heldout") == {"c", "d"}
    assert select_articles(titles, "all") == {"a", "b", "c", "d"}
    with pytest.raises(ValueError, match="unknown article split"):
        select_articles(titles, "test")
