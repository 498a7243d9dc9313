"""The edit evaluation set of issue 21 (README, *Edits*): edits with paraphrases that must fall in
their scope and neighbours that must not.

Half of the edits give a counterfactual answer to a SQuAD v1.1 dev question of a **held-out**
article (`select_articles(titles, "heldout")`), so nothing fitted on the training articles (the
scope classifier) has seen them; the file names those questions by id only and holds no SQuAD text.
The other half correct a fact of a small invented corpus (`data/edits_corpus.jsonl`), so the set
also covers documents no encoder has read. Neighbours come in two kinds, the hard negatives of the
model-editing literature: `entity` (the same entity, another attribute) and `attribute` (the same
attribute, another entity).

The loader validates every case and raises ValueError naming it, so a broken case never quietly
scores as a success."""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragserve.types import Document
from service.application.evaluation import Question, load_squad
from service.application.squad import normalize_answer, select_articles

DATA = Path(__file__).resolve().parent / "data"
CORPUS_FILE = DATA / "edits_corpus.jsonl"
EVAL_FILE = DATA / "edits_eval.jsonl"
KINDS = ("entity", "attribute")
SOURCES = ("squad", "corpus")
MIN_PARAPHRASES = 2  # the issue: each edit comes with >= 2 paraphrases
MIN_NEIGHBOURS = 2  # ... and >= 2 out-of-scope neighbours


@dataclass(frozen=True, slots=True)
class Neighbour:
    """An out-of-scope question and what it answers without any edit (SQuAD gold answers, the
    corpus answer, or [] for a written question about a SQuAD entity whose answer is unknown)."""

    question: str
    kind: str  # "entity" (same entity, other attribute) or "attribute" (same attribute, other entity)
    answers: list[str]


@dataclass(frozen=True, slots=True)
class EditCase:
    """One edit: `question` gets `answer` (replacing `old_answers`); `paraphrases` must follow it,
    `neighbours` must not. `doc_id` is the SQuAD paragraph (`<title>/<n>`) or the corpus document
    the edited fact comes from."""

    id: str
    source: str  # "squad" or "corpus"
    question: str
    answer: str
    old_answers: list[str]
    statement: str | None
    paraphrases: list[str]
    neighbours: list[Neighbour]
    doc_id: str | None = None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a hand-written JSON-lines file, blank lines skipped."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: not a JSON object")
            rows.append(row)
    return rows


def _text(row: Mapping[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: {key!r} must be a non-empty string")
    return value


def _texts(row: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = row.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{where}: {key!r} must be a list of non-empty strings")
    return list(value)


def _contains(text: str, phrase: str) -> bool:
    """Whether `phrase` occurs in `text` as whole words, after SQuAD answer normalization."""
    return f" {normalize_answer(phrase)} " in f" {normalize_answer(text)} "


def load_corpus(path: Path = CORPUS_FILE) -> list[Document]:
    """The invented documents the corpus half of the set edits (ingest them before evaluating)."""
    documents = []
    for row in read_jsonl(path):
        where = f"{path.name}: document {row.get('id')!r}"
        documents.append(Document(_text(row, "id", where), _text(row, "title", where), _text(row, "text", where)))
    if len({d.id for d in documents}) != len(documents):
        raise ValueError(f"{path.name}: duplicate document ids")
    return documents


def _kind(entry: Mapping[str, Any], where: str) -> str:
    kind = entry.get("kind")
    if kind not in KINDS:
        raise ValueError(f"{where}: neighbour kind must be one of {', '.join(KINDS)}, not {kind!r}")
    return str(kind)


def _corpus_case(row: Mapping[str, Any], documents: Mapping[str, Document]) -> EditCase:
    """A corpus edit: its old answer must be what its document says, and each neighbour's answer
    must be stated somewhere in the corpus (so "answers as before" is checkable)."""
    case_id = _text(row, "id", "a corpus case")
    doc_id = _text(row, "doc_id", case_id)
    if doc_id not in documents:
        raise ValueError(f"{case_id}: unknown document {doc_id!r}")
    old = _text(row, "old_answer", case_id)
    if not _contains(documents[doc_id].text, old):
        raise ValueError(f"{case_id}: old answer {old!r} is not in document {doc_id!r}")
    neighbours = []
    for entry in row.get("neighbours") or []:
        answer = _text(entry, "answer", f"{case_id} neighbour")
        if not any(_contains(d.text, answer) for d in documents.values()):
            raise ValueError(f"{case_id}: neighbour answer {answer!r} is not in the corpus")
        neighbours.append(Neighbour(_text(entry, "question", case_id), _kind(entry, case_id), [answer]))
    statement = row.get("statement")
    return EditCase(
        case_id,
        "corpus",
        _text(row, "question", case_id),
        _text(row, "answer", case_id),
        [old],
        statement if isinstance(statement, str) else None,
        _texts(row, "paraphrases", case_id),
        neighbours,
        doc_id,
    )


class _Squad:
    """SQuAD v1.1 dev questions by id, the held-out articles, and the gold answers of every edited
    question by paragraph (to catch a neighbour that is really a duplicate of an edited question)."""

    def __init__(self, path: Path, rows: list[dict[str, Any]]) -> None:
        questions = load_squad(path).questions
        self.by_id: dict[str, Question] = {q.id: q for q in questions}
        self.heldout = select_articles({q.article for q in questions}, "heldout")
        self.edited: dict[str, set[str]] = {}
        for row in rows:
            edited = self.question(row.get("squad_id"), str(row.get("id")))
            self.edited.setdefault(edited.gold_doc, set()).update(normalize_answer(a) for a in edited.answers)

    def question(self, squad_id: object, case_id: str) -> Question:
        """The held-out question with that id, or ValueError naming the case."""
        if not isinstance(squad_id, str) or squad_id not in self.by_id:
            raise ValueError(f"{case_id}: unknown SQuAD question id {squad_id!r}")
        question = self.by_id[squad_id]
        if question.article not in self.heldout:
            raise ValueError(f"{case_id}: SQuAD question {squad_id} is not from a held-out article")
        return question

    def neighbour(self, entry: Mapping[str, Any], edited: Question, case_id: str) -> Neighbour:
        """A neighbour by SQuAD id (with its gold answers) or written out (answers unknown: [])."""
        kind = _kind(entry, case_id)
        if "squad_id" not in entry:
            return Neighbour(_text(entry, "question", case_id), kind, [])
        question = self.question(entry["squad_id"], case_id)
        if kind == "entity" and question.gold_doc != edited.gold_doc:
            raise ValueError(f"{case_id}: entity neighbour {question.id} is not on the edited paragraph")
        if {normalize_answer(a) for a in question.answers} & self.edited.get(question.gold_doc, set()):
            raise ValueError(f"{case_id}: neighbour {question.id} shares its paragraph and answer with an edit")
        return Neighbour(question.question.strip(), kind, list(dict.fromkeys(question.answers)))


def _squad_case(row: Mapping[str, Any], squad: _Squad) -> EditCase:
    case_id = _text(row, "id", "a SQuAD case")
    edited = squad.question(row.get("squad_id"), case_id)
    statement = row.get("statement")
    return EditCase(
        case_id,
        "squad",
        edited.question.strip(),
        _text(row, "answer", case_id),
        list(dict.fromkeys(edited.answers)),
        statement if isinstance(statement, str) else None,
        _texts(row, "paraphrases", case_id),
        [squad.neighbour(entry, edited, case_id) for entry in row.get("neighbours") or []],
        edited.gold_doc,
    )


def _check_case(case: EditCase) -> None:
    """The rules every case follows (the issue's minimums, and what makes a case meaningful)."""
    if len(case.paraphrases) < MIN_PARAPHRASES:
        raise ValueError(f"{case.id}: {len(case.paraphrases)} paraphrases, at least {MIN_PARAPHRASES} needed")
    if len(case.neighbours) < MIN_NEIGHBOURS:
        raise ValueError(f"{case.id}: {len(case.neighbours)} neighbours, at least {MIN_NEIGHBOURS} needed")
    missing = set(KINDS) - {n.kind for n in case.neighbours}
    if missing:
        raise ValueError(f"{case.id}: no neighbour of kind {', '.join(sorted(missing))}")
    asked = [normalize_answer(case.question)] + [normalize_answer(p) for p in case.paraphrases]
    if asked[0] in asked[1:]:
        raise ValueError(f"{case.id}: a paraphrase repeats the edited question")
    if len(set(asked)) != len(asked):
        raise ValueError(f"{case.id}: two paraphrases are the same")
    if any(normalize_answer(n.question) in asked for n in case.neighbours):
        raise ValueError(f"{case.id}: a neighbour repeats the edited question or a paraphrase")
    if normalize_answer(case.answer) in {normalize_answer(a) for a in case.old_answers}:
        raise ValueError(f"{case.id}: the edit answer {case.answer!r} equals a gold/old answer")


def _check_set(cases: list[EditCase]) -> None:
    """Across cases: unique ids, and no neighbour that another edit's question or paraphrase asks
    (all edits may be applied at once, and such a neighbour would then rightly change)."""
    if len({c.id for c in cases}) != len(cases):
        raise ValueError("duplicate case ids")
    edited = {normalize_answer(q): c.id for c in cases for q in [c.question, *c.paraphrases]}
    for case in cases:
        for neighbour in case.neighbours:
            other = edited.get(normalize_answer(neighbour.question))
            if other is not None:
                raise ValueError(f"{case.id}: neighbour {neighbour.question!r} is what {other} edits")


def load_edit_set(squad: Path | None, path: Path = EVAL_FILE, corpus: Path = CORPUS_FILE) -> list[EditCase]:
    """Every case in file order; with `squad=None` (no SQuAD Parquet at hand) only the corpus ones."""
    rows = read_jsonl(path)
    for row in rows:
        if row.get("source") not in SOURCES:
            raise ValueError(f"{row.get('id')}: source must be one of {', '.join(SOURCES)}")
    documents = {d.id: d for d in load_corpus(corpus)}
    squad_rows = [row for row in rows if row["source"] == "squad"]
    resolver = _Squad(squad, squad_rows) if squad is not None else None
    cases = []
    for row in rows:
        if row["source"] == "corpus":
            cases.append(_corpus_case(row, documents))
        elif resolver is not None:
            cases.append(_squad_case(row, resolver))
    for case in cases:
        _check_case(case)
    _check_set(cases)
    return cases
