"""The edit memory's scope classifier (retriever/scope.py) with its bundled parameters and the real
encoder (all-MiniLM-L6-v2, loaded once for the module: a few seconds, fine for the normal run).

The cases are written here, not taken from the evaluation set (bench/data/edits_eval.jsonl) nor from
the training file: paraphrases must be in scope, both neighbour kinds (same entity / other attribute,
same attribute / other entity) out."""

import json
from pathlib import Path

import numpy as np
import pytest

from retriever.encoder import Encoder
from retriever.scope import BUNDLED, FEATURES, ScopeClassifier, analyse, lexical_features
from retriever.scope_features import ALIGNMENT_FEATURES, WordCache
from service.application.loading import make_encoder
from service.settings import Settings

EDIT = "When was the Eiffel Tower built?"
PARAPHRASES = ["In what year was the Eiffel Tower constructed?", "The Eiffel Tower was built when?"]
SAME_ENTITY = ["Who designed the Eiffel Tower?", "How tall is the Eiffel Tower?"]
SAME_ATTRIBUTE = ["When was the Empire State Building built?", "When was the Leaning Tower of Pisa built?"]
CASES = [
    (
        "Who wrote the novel War and Peace?",
        ["War and Peace was written by whom?", "Who is the author of War and Peace?"],
        ["When was War and Peace written?", "Who wrote the novel Anna Karenina?"],
    ),
    (
        "How many moons does Jupiter have?",
        ["What is the number of moons of Jupiter?", "Jupiter has how many moons?"],
        ["How many moons does Saturn have?", "How big is Jupiter?"],
    ),
]


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return make_encoder(Settings())


@pytest.fixture(scope="module")
def model(encoder: Encoder) -> ScopeClassifier:
    return ScopeClassifier.load(words=encoder.encode_words)


def scores(encoder: Encoder, model: ScopeClassifier, query: str, edits: list[str]) -> np.ndarray:
    vectors = encoder.encode_queries([query, *edits])
    return model.probabilities(query, vectors[0], edits, vectors[1:])


def test_bundled_parameters_load_and_record_their_fit(encoder: Encoder, model: ScopeClassifier) -> None:
    data = json.loads(BUNDLED.read_text(encoding="utf-8"))
    assert data["features"] == list(FEATURES) + list(ALIGNMENT_FEATURES)[: len(data["features"]) - len(FEATURES)]
    assert model.kind in ("logistic", "mlp")
    for key in ("date", "command", "anchors", "pairs", "cv_auc", "cosine_threshold"):
        assert key in model.meta
    assert ScopeClassifier.load(BUNDLED, words=encoder.encode_words).platt == model.platt


def test_paraphrases_in_scope_neighbours_out(encoder: Encoder, model: ScopeClassifier) -> None:
    edits = PARAPHRASES + SAME_ENTITY + SAME_ATTRIBUTE
    p = scores(encoder, model, EDIT, edits)
    assert (p[: len(PARAPHRASES)] >= 0.5).all(), dict(zip(edits, p.round(3), strict=True))
    assert (p[len(PARAPHRASES) :] < 0.5).all(), dict(zip(edits, p.round(3), strict=True))


@pytest.mark.parametrize(("edit", "inside", "outside"), CASES)
def test_more_handwritten_cases(
    encoder: Encoder, model: ScopeClassifier, edit: str, inside: list[str], outside: list[str]
) -> None:
    for query in inside:
        assert scores(encoder, model, query, [edit])[0] >= 0.5, query
    for query in outside:
        assert scores(encoder, model, query, [edit])[0] < 0.5, query


def test_shapes_range_and_vectorised_equals_per_pair(encoder: Encoder, model: ScopeClassifier) -> None:
    edits = PARAPHRASES + SAME_ENTITY + SAME_ATTRIBUTE
    vectors = encoder.encode_queries([EDIT, *edits])
    p = model.probabilities(EDIT, vectors[0], edits, vectors[1:])
    assert p.shape == (len(edits),)
    assert ((p >= 0) & (p <= 1)).all()
    single = [model.probabilities(EDIT, vectors[0], [e], vectors[1 + i : 2 + i])[0] for i, e in enumerate(edits)]
    np.testing.assert_allclose(p, single, rtol=1e-6, atol=1e-9)
    assert model.probabilities(EDIT, vectors[0], [], np.zeros((0, vectors.shape[1]))).shape == (0,)


def test_features_see_what_the_cosine_misses() -> None:
    names = dict(
        zip(
            FEATURES[1:],
            lexical_features(analyse("When did the 1973 crisis begin?"), analyse("When did the 1979 crisis begin?")),
            strict=True,
        )
    )
    assert names["numbers_missing"] == 2 and names["entities_swapped"] == 1
    names = dict(
        zip(
            FEATURES[1:],
            lexical_features(analyse("Who owns the American Broadcasting Company?"), analyse("ABC is owned by whom?")),
            strict=True,
        )
    )
    assert names["names_missing_query"] == 0 and names["names_missing_edit"] == 0  # ABC = its initials
    names = dict(
        zip(FEATURES[1:], lexical_features(analyse("When was X founded?"), analyse("Who founded X?")), strict=True)
    )
    assert names["qtype_conflict"] == 1


def test_a_parameter_file_of_other_features_is_refused(tmp_path: Path) -> None:
    data = json.loads(BUNDLED.read_text(encoding="utf-8"))
    data["features"] = data["features"][:-1]
    path = tmp_path / "scope.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match="features"):
        ScopeClassifier.load(path, words=lambda texts: [])


def test_an_aligned_model_without_a_word_encoder_is_refused() -> None:
    data = json.loads(BUNDLED.read_text(encoding="utf-8"))
    if tuple(data["features"]) == FEATURES:
        pytest.skip("the bundled model uses no alignment features")
    with pytest.raises(ValueError, match="encode_words"):
        ScopeClassifier.load()


def test_encode_words_pools_word_pieces_into_unit_vectors(encoder: Encoder) -> None:
    (words, vectors), (empty, none) = encoder.encode_words(["Who founded Céloron's fort?", ""])
    assert words == ["Who", "founded", "Céloron", "'", "s", "fort", "?"]
    assert vectors.shape == (len(words), encoder.dimension) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert empty == [] and none.shape == (0, encoder.dimension)


def test_cascade_skips_far_candidates_and_caches_edit_words(encoder: Encoder) -> None:
    calls: list[list[str]] = []

    def counting(texts: list[str]) -> list[tuple[list[str], np.ndarray]]:
        calls.append(list(texts))
        return encoder.encode_words(texts)

    model = ScopeClassifier.load(words=counting)  # type: ignore[arg-type]  # a list is a Sequence
    if model.words is None:
        pytest.skip("the bundled model uses no alignment features")
    far = "What is the boiling point of water at sea level?"
    vectors = encoder.encode_queries([EDIT, far, PARAPHRASES[0]])
    assert float(vectors[1] @ vectors[0]) < model.floor
    assert model.probabilities(EDIT, vectors[0], [far], vectors[1:2])[0] == 0.0
    assert calls == []  # nothing past the floor: no word vectors at all
    p = model.probabilities(EDIT, vectors[0], [far, PARAPHRASES[0]], vectors[1:])
    assert p[0] == 0.0 and p[1] >= 0.5
    assert calls == [[EDIT], [PARAPHRASES[0]]]  # the query once, the near edit question once
    model.probabilities(EDIT, vectors[0], [PARAPHRASES[0]], vectors[2:])
    assert calls[-1] == [EDIT]  # the edit question's words came from the cache


def test_word_cache_is_bounded_and_least_recently_used_goes_first() -> None:
    def fake(texts: list[str]) -> list[tuple[list[str], np.ndarray]]:
        return [([t], np.ones((1, 2), dtype=np.float32)) for t in texts]

    cache = WordCache(fake, size=2)  # type: ignore[arg-type]
    cache.get(["a", "b"])
    cache.get(["a"])  # "a" is now the most recently used
    cache.get(["c"])
    assert list(cache._entries) == ["a", "c"]
