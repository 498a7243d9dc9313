"""The scope classifier of the edit memory (SERAC-style): p(a query asks what a stored edit's question asks).

An edit answers a query only when the query is in its *scope*: a paraphrase of the edit's question
(other words, other order). The hard negatives are its neighbours: the same entity asked about another
attribute ("Who founded X?" against "When was X founded?") and the same attribute of another entity
("When was Y founded?"). The encoder cosine alone confuses both, since such questions share most of
their words and their embeddings lie close. So a pair (query, edit question) is described by the
cosine plus lexical features that see what the cosine misses:

- content-word overlap both ways (lower case, accents stripped, a crude suffix/prefix stem, the
  stopword list below), so a paraphrase that keeps the content words scores high;
- "entity" tokens (capitalised words, numbers, quoted strings) of either question that the other one
  lacks: a swapped entity or number is the mark of a same-attribute neighbour;
- agreement of the question type (wh-word, "how many" ~ "what number", "in what year" ~ "when"):
  a same-entity neighbour usually asks another type of question;
- optionally a learned projection of u * v (the elementwise product of the two unit vectors), used
  only when cross-validation by article says it helps (`bench/fit_scope.py` records the choice).

A logistic combination of these, then Platt scaling fitted on out-of-fold scores, gives a calibrated
probability. Parameters live in `retriever/data/scope.json` (JSON, never pickle), fitted by
`python -m bench.fit_scope` on SQuAD training articles only. Serving is pure numpy: the n candidates
are scored with one matrix product; the text analysis of each string is cached, so an edit question
seen before costs a dictionary look-up.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BUNDLED = Path(__file__).resolve().parent / "data" / "scope.json"

# Function words: removed before content-word overlap (wh-words are the question type's business).
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "at",
        "to",
        "for",
        "from",
        "by",
        "with",
        "about",
        "into",
        "onto",
        "over",
        "under",
        "after",
        "before",
        "during",
        "since",
        "until",
        "upon",
        "as",
        "than",
        "then",
        "that",
        "this",
        "these",
        "those",
        "there",
        "here",
        "it",
        "its",
        "it's",
        "they",
        "them",
        "their",
        "theirs",
        "he",
        "him",
        "his",
        "she",
        "her",
        "hers",
        "we",
        "us",
        "our",
        "you",
        "your",
        "i",
        "me",
        "my",
        "mine",
        "and",
        "or",
        "but",
        "nor",
        "so",
        "if",
        "not",
        "no",
        "also",
        "too",
        "very",
        "just",
        "only",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "am",
        "do",
        "does",
        "did",
        "done",
        "doing",
        "has",
        "have",
        "had",
        "having",
        "can",
        "could",
        "may",
        "might",
        "must",
        "shall",
        "should",
        "will",
        "would",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "when",
        "where",
        "why",
        "how",
        "whether",
        "while",
        "one",
        "ones",
        "some",
        "any",
        "all",
        "each",
        "every",
        "both",
        "either",
        "neither",
        "other",
        "another",
        "such",
        "same",
        "own",
        "s",
        "t",
        "name",
        "called",
        "known",
        "term",
        "type",
        "kind",
        "sort",
        "give",
        "tell",
        "describe",
        "define",
    ]
)
# Cardinal and ordinal number words become digits, so "five times" meets "5 times" and "fifth series"
# meets "series 5". "first" stays a word: it is more often "for the first time" than an ordinal.
NUMBER_WORDS = {
    w: str(i)
    for i, group in enumerate(
        [
            (),
            ("one",),
            ("two", "second"),
            ("three", "third"),
            ("four", "fourth"),
            ("five", "fifth"),
            ("six", "sixth"),
            ("seven", "seventh"),
            ("eight", "eighth"),
            ("nine", "ninth"),
            ("ten", "tenth"),
            ("eleven", "eleventh"),
            ("twelve", "twelfth"),
        ]
    )
    for w in group
}
# Suffixes stripped (longest first) before the prefix cut; a crude stemmer, enough for owner/owned/owns.
SUFFIXES = (
    "ational",
    "ations",
    "ation",
    "ingly",
    "ings",
    "ing",
    "edly",
    "ers",
    "ies",
    "ied",
    "ed",
    "er",
    "es",
    "ly",
    "s",
)
MIN_STEM = 3  # a suffix is stripped only if this much of the word is left
STEM_PREFIX = 6  # stems are cut to this many characters: "discover" and "discovery" meet
ENTITY_CAP = 3  # missing-entity counts are capped: beyond this the pair is out of scope anyway

# Question types by the phrase that asks; "what"/"which" alone is THING, compatible with every type.
QTYPES: tuple[tuple[str, str], ...] = (
    ("QUANTITY", r"\bhow (?:many|much)\b|\bwhat (?:number|amount|percentage|percent|share|fraction|proportion)\b"),
    ("DURATION", r"\b(?:for )?how long\b"),
    (
        "TIME",
        r"\bwhen\b|\b(?:what|which) (?:year|month|date|day|time|period|decade|century|season|point)\b|\bsince what\b",
    ),
    ("PERSON", r"\bwho\b|\bwhom\b|\bwhose\b|\b(?:what|which) (?:person|individual|man|woman)\b|\bby whom\b"),
    ("PLACE", r"\bwhere\b|\b(?:what|which) (?:place|city|country|region|continent|area|location|town|state)\b"),
    ("REASON", r"\bwhy\b|\b(?:what|which) (?:reason|caused|prompted|led|made)\b|\bfor what reason\b"),
    ("MANNER", r"\bhow\b|\bin what way\b|\bby what means\b"),
)
_QTYPE_RE = [(name, re.compile(pattern)) for name, pattern in QTYPES]
_TOKEN = re.compile(r"[^\W_]+(?:[.'\-][^\W_]+)*")
_QUOTED = re.compile(r"[\"“”]([^\"“”]+)[\"“”]")
_WH = re.compile(r"\b(?:what|which|who|whom|whose|when|where|why|how)\b")

FEATURES = (
    "cosine",  # encoder cosine of the two questions
    "overlap_min",  # min over both directions of the share of content stems found in the other question
    "overlap_max",  # the max of the same two shares
    "entity_missing_query",  # entity stems of the query absent from the edit question (capped)
    "entity_missing_edit",  # entity stems of the edit question absent from the query (capped)
    "qtype_same",  # both questions ask the same specific type (TIME, PERSON, ...)
    "qtype_conflict",  # both ask a specific type and the types differ
)


@dataclass(frozen=True)
class Analysis:
    """What the features need of one question: its stems, content stems, entity stems, type."""

    stems: frozenset[str]
    content: frozenset[str]
    entities: frozenset[str]
    qtype: str  # one of QTYPES' names, or THING


def _fold(text: str) -> str:
    """Accents stripped (Gür ~ Gur, Céloron ~ Celoron), typographic quotes made plain."""
    text = text.replace("’", "'").replace("‘", "'")
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def stem(word: str) -> str:
    """Lower case, number words as digits, possessive and one suffix off, cut to STEM_PREFIX."""
    word = word.lower().removesuffix("'s").removesuffix("'").replace("-", "").replace(".", "")
    word = NUMBER_WORDS.get(word, word)
    if word.isdigit():
        return word
    for suffix in SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= MIN_STEM:
            word = word[: -len(suffix)]
            break
    return word[:STEM_PREFIX]


def question_type(text: str) -> str:
    """The type of the question's asking phrase; in "When X happened, what did Y do?" the last clause asks."""
    lowered = text.lower()
    clauses = [c for c in lowered.split(",") if _WH.search(c)]
    span = clauses[-1] if len(clauses) > 1 and lowered.lstrip().startswith(("when", "if", "after", "once")) else lowered
    found = [(m.start(), name) for name, rx in _QTYPE_RE for m in [rx.search(span)] if m]
    return min(found)[1] if found else "THING"


def _is_entity(token: str, position: int) -> bool:
    """Numbers anywhere; capitalised words unless sentence-initial function words (What, The, In ...)."""
    if any(c.isdigit() for c in token) or token.lower() in NUMBER_WORDS:
        return True
    if not token[0].isupper():
        return False
    return position > 0 or token.lower() not in STOPWORDS


@functools.lru_cache(maxsize=8192)  # edit questions recur across queries; analysis is pure
def analyse(text: str) -> Analysis:
    """Stems, content stems and entity stems of a question, and its type."""
    folded = _fold(text)
    tokens = _TOKEN.findall(folded)
    stems = [stem(t) for t in tokens]
    entities = {s for i, (t, s) in enumerate(zip(tokens, stems, strict=True)) if _is_entity(t, i)}
    for quoted in _QUOTED.findall(folded):
        entities.update(stem(t) for t in _TOKEN.findall(quoted))
    content = {s for t, s in zip(tokens, stems, strict=True) if t.lower() not in STOPWORDS and s}
    entities -= {stem(w) for w in STOPWORDS}
    return Analysis(frozenset(stems), frozenset(content), frozenset(entities), question_type(folded))


def lexical_features(query: Analysis, edit: Analysis) -> list[float]:
    """FEATURES[1:] of one pair (the cosine comes from the vectors)."""
    shared = len(query.content & edit.content)
    to_edit = shared / len(query.content) if query.content else 0.0
    to_query = shared / len(edit.content) if edit.content else 0.0
    missing_q = min(len(query.entities - edit.stems), ENTITY_CAP)
    missing_e = min(len(edit.entities - query.stems), ENTITY_CAP)
    specific = query.qtype != "THING" and edit.qtype != "THING"
    same = float(specific and query.qtype == edit.qtype)
    conflict = float(specific and query.qtype != edit.qtype)
    return [min(to_edit, to_query), max(to_edit, to_query), float(missing_q), float(missing_e), same, conflict]


def pair_features(query: str, query_vector: np.ndarray, edits: Sequence[str], edit_vectors: np.ndarray) -> np.ndarray:
    """(n, len(FEATURES)) for one query against n edit questions."""
    cosine = edit_vectors @ query_vector  # (n,)
    q = analyse(query)
    lexical = np.array([lexical_features(q, analyse(e)) for e in edits], dtype=np.float64).reshape(len(edits), -1)
    return np.column_stack([cosine.astype(np.float64), lexical])  # (n, f)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))


@dataclass(frozen=True)
class ScopeClassifier:
    """Logistic combination of FEATURES (+ optional u*v projection), Platt-calibrated."""

    weights: np.ndarray  # (f,) over FEATURES
    bias: float
    uv_weights: np.ndarray | None  # (dim,) over u * v, or None when the fit chose no projection
    platt_a: float  # calibrated p = sigmoid(platt_a * logit + platt_b)
    platt_b: float
    meta: dict[str, Any]

    @classmethod
    def load(cls, path: Path | None = None) -> ScopeClassifier:
        """Parameters from JSON; None: the bundled retriever/data/scope.json."""
        data = json.loads((path or BUNDLED).read_text(encoding="utf-8"))
        if tuple(data["features"]) != FEATURES:
            raise ValueError(f"{path or BUNDLED}: features {data['features']} differ from this code's {FEATURES}")
        uv = data.get("uv_weights")
        return cls(
            weights=np.asarray(data["weights"], dtype=np.float64),
            bias=float(data["bias"]),
            uv_weights=None if uv is None else np.asarray(uv, dtype=np.float64),
            platt_a=float(data["calibration"]["a"]),
            platt_b=float(data["calibration"]["b"]),
            meta=dict(data.get("fit", {})),
        )

    def logits(self, features: np.ndarray, products: np.ndarray | None) -> np.ndarray:
        """(n,) uncalibrated scores from (n, f) features and (n, dim) u * v products."""
        z = features @ self.weights + self.bias
        if self.uv_weights is not None and products is not None:
            z = z + products @ self.uv_weights
        return np.asarray(z)

    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        return _sigmoid(self.platt_a * logits + self.platt_b)

    def probabilities(
        self, query: str, query_vector: np.ndarray, edit_questions: Sequence[str], edit_vectors: np.ndarray
    ) -> np.ndarray:
        """(n,) calibrated p(query asks what edit_questions[i] asks); vectors are unit, from the same encoder."""
        edit_vectors = np.asarray(edit_vectors, dtype=np.float32).reshape(len(edit_questions), -1)  # (n, dim)
        query_vector = np.asarray(query_vector, dtype=np.float32).reshape(-1)  # (dim,)
        if not edit_questions:
            return np.zeros(0)
        features = pair_features(query, query_vector, edit_questions, edit_vectors)  # (n, f)
        products = edit_vectors * query_vector if self.uv_weights is not None else None  # (n, dim)
        return self.calibrate(self.logits(features, products))
