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
- token alignment from the frozen encoder (retriever/scope_features.py, BERTScore-style): each content
  word's best contextual cosine to the other question; a synonym aligns high, a changed attribute does not.

A logistic combination of these (or a tiny one-hidden-layer MLP, when cross-validation by article prefers
it: `fit.model` in the JSON says which), then Platt scaling fitted on out-of-fold scores, gives a
calibrated probability. Parameters live in `retriever/data/scope.json` (JSON, never pickle), fitted by
`python -m bench.fit_scope` on SQuAD training articles only. Serving is a cascade: candidates whose cosine
is below the fitted floor get p = 0 at once; the rest get the lexical features (each string's analysis
cached) and, when the model uses them, the alignment features (the query's words encoded once per call,
the edit questions' from a bounded LRU cache).
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

from retriever.scope_features import ALIGNMENT_FEATURES, WordCache, WordEncoder, Words, alignment_features

BUNDLED = Path(__file__).resolve().parent / "data" / "scope.json"

# Function words: removed before content-word overlap (wh-words are the question type's business).
_STOPWORD_TEXT = """
a an the of in on at to for from by with about into onto over under after before during since until
upon as than then that this these those there here it its it's they them their theirs he him his she
her hers we us our you your i me my mine and or but nor so if not no also too very just only is are
was were be been being am do does did done doing has have had having can could may might must shall
should will would what which who whom whose when where why how whether while one ones some any all
each every both either neither other another such same own s t name called known term type kind sort
give tell describe define
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
# Cardinal and ordinal number words become digits, so "five times" meets "5 times" and "fifth series"
# meets "series 5". "first" stays a word: it is more often "for the first time" than an ordinal.
_NUMBER_TEXT = "one two three four five six seven eight nine ten eleven twelve"
_ORDINAL_TEXT = "- second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth"
NUMBER_WORDS = {w: str(i) for text in (_NUMBER_TEXT, _ORDINAL_TEXT) for i, w in enumerate(text.split(), 1) if w != "-"}
# Suffixes stripped (longest first) before the prefix cut; a crude stemmer, enough for owner/owned/owns.
_SUFFIX_TEXT = "ational ations ation ingly ings ing edly ers ies ied ed er es ly s"
SUFFIXES = tuple(_SUFFIX_TEXT.split())
MIN_STEM = 3  # a suffix is stripped only if this much of the word is left
STEM_PREFIX = 6  # stems are cut to this many characters: "discover" and "discovery" meet
RUN_JOINERS = frozenset({"of", "for", "de"})  # lower-case words inside a name ("Bank of England")
ENTITY_CAP = 3  # missing-entity counts are capped: beyond this the pair is out of scope anyway

# Question types by the phrase that asks; "what"/"which" alone is THING, compatible with every type.
QTYPES: tuple[tuple[str, str], ...] = (
    (
        "QUANTITY",
        r"\bhow (?:many|much|tall|big|large|far|old|high|deep|wide|heavy|fast)\b"
        r"|\bwhat (?:number|amount|percentage|percent|share|fraction|proportion)\b",
    ),
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
_TOKEN = re.compile(r"[^\W_]+(?:[.'][^\W_]+)*")  # hyphens split: "fifth-largest", "24-hour"
_DECADE = re.compile(r"^(\d{3})0s$")  # "1960s" is the decade 196*, met by any year 1960-1969
_QUOTED = re.compile(r"[\"“”]([^\"“”]+)[\"“”]")
_NAMED_WH = re.compile(r"(?<=\w )(?:Who|When|Where|Why|How|What|Which)\b")  # "Doctor Who"
_WH = re.compile(r"\b(?:what|which|who|whom|whose|when|where|why|how)\b")

FEATURES = (
    "cosine",  # encoder cosine of the two questions
    "overlap_min",  # min over both directions of the share of content stems found in the other question
    "overlap_max",  # the max of the same two shares
    "numbers_missing",  # numbers of either question absent from the other (capped)
    "names_missing_query",  # name stems of the query absent from the edit question (capped)
    "names_missing_edit",  # name stems of the edit question absent from the query (capped)
    "entities_swapped",  # both questions have an entity (name or number) the other lacks
    "qtype_same",  # both questions ask the same specific type (TIME, PERSON, ...)
    "qtype_conflict",  # both ask a specific type and the types differ
    "qtype_partial",  # one asks a specific type, the other a plain what/which (compatible or not)
)


@dataclass(frozen=True)
class Analysis:
    """What the features need of one question: its stems, content stems, entity stems, type."""

    stems: frozenset[str]
    content: frozenset[str]
    numbers: frozenset[str]
    names: frozenset[str]
    initials: frozenset[str]  # of runs of capitalised words: "ABC" meets "American Broadcasting Company"
    runs: tuple[tuple[str, frozenset[str]], ...]  # (initials, stems) of each capitalised run, for the reverse
    qtype: str  # one of QTYPES' names, or THING


def _fold(text: str) -> str:
    """Accents stripped (Gür ~ Gur, Céloron ~ Celoron), typographic quotes made plain."""
    text = text.replace("’", "'").replace("‘", "'")
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def stem(word: str) -> str:
    """Lower case, number words as digits, possessive and one suffix off, cut to STEM_PREFIX."""
    word = word.lower().removesuffix("'s").removesuffix("'").replace(".", "")
    word = NUMBER_WORDS.get(word, word)
    digits = "".join(c for c in word if c.isdigit())
    if digits:  # "19th" -> 19, "1,000" -> 1000 ("1960s" is handled as a decade by _number_met)
        decade = _DECADE.match(word)
        return decade.group(1) + "*" if decade else digits
    for suffix in SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= MIN_STEM:
            word = word[: -len(suffix)]
            break
    return word[:STEM_PREFIX]


def question_type(text: str) -> str:
    """The type of the question's asking phrase; in "When X happened, what did Y do?" the last clause asks.
    At one position the earlier QTYPES entry wins ("how many" over "how"); a capitalised wh-word inside
    the sentence is a name ("Doctor Who"), not a question word."""
    text = _NAMED_WH.sub(" _ ", text)
    lowered = text.lower()
    clauses = [c for c in lowered.split(",") if _WH.search(c)]
    span = clauses[-1] if len(clauses) > 1 and lowered.lstrip().startswith(("when", "if", "after", "once")) else lowered
    found = [(m.start(), rank, name) for rank, (name, rx) in enumerate(_QTYPE_RE) for m in [rx.search(span)] if m]
    return min(found)[2] if found else "THING"


def _is_entity(token: str, position: int) -> bool:
    """Numbers anywhere; capitalised words unless sentence-initial function words (What, The, In ...)."""
    if any(c.isdigit() for c in token) or token.lower() in NUMBER_WORDS:
        return True
    if not token[0].isupper():
        return False
    return position > 0 or token.lower() not in STOPWORDS


# Types that can ask the same thing: "how long has X ..." is "since when has X ...", and "how long is the
# bridge?" asks a length ("how many metres long ...?").
_COMPATIBLE = {frozenset({"TIME", "DURATION"}), frozenset({"DURATION", "QUANTITY"})}
_STOPWORD_STEMS = frozenset(stem(w) for w in STOPWORDS)


def _runs(tokens: list[str], stems: list[str]) -> list[tuple[str, frozenset[str]]]:
    """(initials, stems) of every run of >= 2 consecutive capitalised words (inner function words kept)."""
    found: list[tuple[str, frozenset[str]]] = []
    run: list[int] = []
    for i, token in enumerate([*tokens, "."]):
        if token[0].isupper() and (i > 0 or token.lower() not in STOPWORDS):
            run.append(i)
            continue
        if token in RUN_JOINERS and run and i < len(tokens):
            continue  # "Bank of England": the run goes on past "of"
        if len(run) >= 2:
            found.append(("".join(tokens[j][0].lower() for j in run), frozenset(stems[j] for j in run)))
        run = []
    return found


@functools.lru_cache(maxsize=8192)  # edit questions recur across queries; analysis is pure
def analyse(text: str) -> Analysis:
    """Stems, content stems, numbers, name stems and initials of a question, and its type."""
    folded = _fold(text)
    tokens = _TOKEN.findall(folded)
    stems = [stem(t) for t in tokens]
    entities = {s for i, (t, s) in enumerate(zip(tokens, stems, strict=True)) if _is_entity(t, i)}
    for quoted in _QUOTED.findall(folded):
        entities.update(stem(t) for t in _TOKEN.findall(quoted))
    content = {s for t, s in zip(tokens, stems, strict=True) if t.lower() not in STOPWORDS and s}
    entities -= _STOPWORD_STEMS
    numbers = {e for e in entities if any(c.isdigit() for c in e)}
    runs = _runs(tokens, stems)
    initials = {ini[i:j] for ini, _ in runs for i in range(len(ini)) for j in range(i + 2, len(ini) + 1)}
    return Analysis(
        frozenset(stems),
        frozenset(content),
        frozenset(numbers),
        frozenset(entities - numbers),
        frozenset(initials),
        tuple(runs),
        question_type(folded),
    )


def _missing_names(this: Analysis, other: Analysis) -> int:
    """How many names of `this` the other question lacks: not a stem there, not the initials of one of its
    runs, nor part of a run of `this` whose initials the other question has (as an acronym)."""
    expanded = {n for ini, members in this.runs if ini in other.stems for n in members}
    return sum(1 for n in this.names if n not in other.stems and n not in other.initials and n not in expanded)


def _number_met(number: str, stems: frozenset[str]) -> bool:
    """Whether the other question has this number; a decade "196*" meets 1960-1969 and the reverse."""
    if number in stems:
        return True
    if number.endswith("*"):
        return any(s.startswith(number[:-1]) and len(s) == len(number) for s in stems)
    return any(s.endswith("*") and number.startswith(s[:-1]) and len(number) == len(s) for s in stems)


def lexical_features(query: Analysis, edit: Analysis) -> list[float]:
    """FEATURES[1:] of one pair (the cosine comes from the vectors)."""
    shared = len(query.content & edit.content)
    to_edit = shared / len(query.content) if query.content else 0.0
    to_query = shared / len(edit.content) if edit.content else 0.0
    numbers_q = sum(1 for n in query.numbers if not _number_met(n, edit.stems))
    numbers_e = sum(1 for n in edit.numbers if not _number_met(n, query.stems))
    names_q, names_e = _missing_names(query, edit), _missing_names(edit, query)
    swapped = float(numbers_q + names_q > 0 and numbers_e + names_e > 0)
    types = frozenset({query.qtype, edit.qtype})
    specific = "THING" not in types and types not in _COMPATIBLE
    same = float(specific and query.qtype == edit.qtype)
    conflict = float(specific and query.qtype != edit.qtype)
    partial = float((query.qtype == "THING") != (edit.qtype == "THING"))
    return [
        min(to_edit, to_query),
        max(to_edit, to_query),
        float(min(numbers_q + numbers_e, ENTITY_CAP)),
        float(min(names_q, ENTITY_CAP)),
        float(min(names_e, ENTITY_CAP)),
        swapped,
        same,
        conflict,
        partial,
    ]


def pair_features(query: str, query_vector: np.ndarray, edits: Sequence[str], edit_vectors: np.ndarray) -> np.ndarray:
    """(n, len(FEATURES)) for one query against n edit questions."""
    cosine = edit_vectors @ query_vector  # (n,)
    q = analyse(query)
    lexical = np.array([lexical_features(q, analyse(e)) for e in edits], dtype=np.float64).reshape(len(edits), -1)
    return np.column_stack([cosine.astype(np.float64), lexical])  # (n, f)


def full_features(lexical: np.ndarray, query_words: Words | None, edit_words: Sequence[Words]) -> np.ndarray:
    """(n, f) lexical pair features, with the ALIGNMENT_FEATURES appended when word vectors are given."""
    if query_words is None:
        return lexical
    align = [alignment_features(query_words, words, STOPWORDS, stem) for words in edit_words]
    return np.column_stack([lexical, np.array(align, dtype=np.float64).reshape(len(lexical), -1)])  # (n, f + a)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0))))


@dataclass(frozen=True)
class ScopeClassifier:
    """A logistic model or a one-hidden-layer tanh MLP on standardised features, then Platt scaling, behind a
    cosine floor. Arrays by name, from JSON: logistic: `weights` (f,), `bias` (); mlp: `mean`, `scale` (f,),
    `hidden_weights` (h, f), `hidden_bias` (h,), `output_weights` (h,), `output_bias` ().

    The cascade: a candidate whose encoder cosine is below `floor` (chosen by the fit so that almost no
    in-scope training pair lies below it) gets p = 0 without any further work; only the others get the
    features, word vectors included when the model uses ALIGNMENT_FEATURES (`words` then encodes them)."""

    kind: str  # "logistic" or "mlp"
    arrays: dict[str, np.ndarray]
    platt: tuple[float, float]  # calibrated p = sigmoid(a * logit + b)
    meta: dict[str, Any]
    aligned: bool = False  # the model's features end with ALIGNMENT_FEATURES
    floor: float = -1.0  # cosine below which a candidate is out of scope; -1: no cascade
    words: WordCache | None = None

    @classmethod
    def load(cls, path: Path | None = None, words: WordEncoder | None = None) -> ScopeClassifier:
        """Parameters from JSON (None: the bundled retriever/data/scope.json); `words` is the encoder's
        `encode_words`, required when the model uses alignment features."""
        source = path or BUNDLED
        data = json.loads(source.read_text(encoding="utf-8"))
        features = tuple(data["features"])
        if features not in (FEATURES, FEATURES + ALIGNMENT_FEATURES):
            raise ValueError(f"{source}: features {data['features']} differ from this code's {FEATURES}")
        aligned = features != FEATURES
        if aligned and words is None:
            raise ValueError(f"{source}: the model uses token-alignment features; pass words=encoder.encode_words")
        model = data["model"]
        if model["kind"] not in ("logistic", "mlp"):
            raise ValueError(f"{source}: unknown model kind {model['kind']!r}")
        arrays = {k: np.asarray(v, dtype=np.float64) for k, v in model.items() if k != "kind"}
        calibration = (float(data["calibration"]["a"]), float(data["calibration"]["b"]))
        floor = float(data.get("cascade", {}).get("cosine_floor", -1.0))
        cache = WordCache(words) if aligned and words is not None else None
        return cls(model["kind"], arrays, calibration, dict(data.get("fit", {})), aligned, floor, cache)

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(n,) uncalibrated scores from (n, f) features."""
        a = self.arrays
        if self.kind == "mlp":
            hidden = np.tanh(((features - a["mean"]) / a["scale"]) @ a["hidden_weights"].T + a["hidden_bias"])  # (n, h)
            return np.asarray(hidden @ a["output_weights"] + a["output_bias"])
        return np.asarray(features @ a["weights"] + a["bias"])

    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        return _sigmoid(self.platt[0] * logits + self.platt[1])

    def probabilities(
        self, query: str, query_vector: np.ndarray, edit_questions: Sequence[str], edit_vectors: np.ndarray
    ) -> np.ndarray:
        """(n,) calibrated p(query asks what edit_questions[i] asks); vectors are unit, from the same encoder."""
        p = np.zeros(len(edit_questions))
        if not edit_questions:
            return p
        edit_vectors = np.asarray(edit_vectors, dtype=np.float64).reshape(len(edit_questions), -1)  # (n, dim)
        query_vector = np.asarray(query_vector, dtype=np.float64).reshape(-1)  # (dim,)
        near = np.flatnonzero(edit_vectors @ query_vector >= self.floor)  # (m,) candidates past the floor
        if len(near) == 0:
            return p
        edits = [edit_questions[int(i)] for i in near]
        features = pair_features(query, query_vector, edits, edit_vectors[near])  # (m, f)
        if self.aligned:
            assert self.words is not None, "load() checks that an aligned model has its word encoder"
            query_words = self.words.encode([query])[0]  # once per query, never cached
            features = full_features(features, query_words, self.words.get(edits))  # (m, f + a)
        p[near] = self.calibrate(self.logits(features))
        return p
