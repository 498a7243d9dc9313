"""The edit evaluation set (bench/edit_set.py, issue 21): the counts the issue asks for, and the
loader's refusal of broken cases (checked on a tiny stand-in SQuAD Parquet, so it runs anywhere)."""

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.edit_set import KINDS, EditCase, load_corpus, load_edit_set

SQUAD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "squad-v1.1-dev.parquet"
needs_squad = pytest.mark.skipif(not SQUAD.is_file(), reason=f"{SQUAD} not present (it lives in ../shared)")
MIN_WORDS, MAX_WORDS = 80, 250  # the corpus documents' length, as specified


def check_case(case: EditCase) -> None:
    """The issue's minimums for one edit."""
    assert len(case.paraphrases) >= 2, case.id
    assert len(case.neighbours) >= 2, case.id
    assert {n.kind for n in case.neighbours} == set(KINDS), case.id
    assert case.answer not in case.old_answers and case.old_answers, case.id


def test_corpus_documents_are_short_and_distinct() -> None:
    documents = load_corpus()
    assert 12 <= len(documents) <= 16
    assert len({d.id for d in documents}) == len(documents)
    for document in documents:
        assert MIN_WORDS <= len(document.text.split()) <= MAX_WORDS, document.id


def test_corpus_half_covers_every_document() -> None:
    cases = load_edit_set(None)
    assert len(cases) >= 30 and {c.source for c in cases} == {"corpus"}
    for case in cases:
        check_case(case)
        assert case.statement and all(n.answers for n in case.neighbours), case.id
    assert {c.doc_id for c in cases} == {d.id for d in load_corpus()}


@needs_squad
def test_whole_set_has_the_counts_the_issue_asks() -> None:
    cases = load_edit_set(SQUAD)
    sources = Counter(c.source for c in cases)
    assert len(cases) >= 60
    assert sources["squad"] >= 30 and sources["corpus"] >= 30
    assert abs(sources["squad"] - sources["corpus"]) <= 2  # half from each source
    for case in cases:
        check_case(case)
    written = [n for c in cases if c.source == "squad" for n in c.neighbours if not n.answers]
    squad_neighbours = [n for c in cases if c.source == "squad" for n in c.neighbours]
    assert len(written) < len(squad_neighbours) / 4  # mostly real SQuAD questions with gold answers


# --- validation, on a stand-in SQuAD: article "A_train" is in the training half, "B_heldout" held out


def write_squad(path: Path) -> Path:
    rows = [
        ("t1", "A_train", "Alpha was founded in 1900.", "When was Alpha founded?", ["1900"]),
        ("h1", "B_heldout", "Beta was founded in 1950 by Carl.", "When was Beta founded?", ["1950"]),
        ("h2", "B_heldout", "Beta was founded in 1950 by Carl.", "Who founded Beta?", ["Carl"]),
        ("h3", "B_heldout", "Beta was founded in 1950 by Carl.", "In what year did Beta start?", ["1950"]),
        ("h4", "B_heldout", "Gamma was founded in 1960.", "When was Gamma founded?", ["1960"]),
    ]
    table = pa.Table.from_pylist(
        [
            {"id": i, "title": t, "context": c, "question": q, "answers": {"text": a, "answer_start": [0]}}
            for i, t, c, q, a in rows
        ]
    )
    pq.write_table(table, path)
    return path


def squad_row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": "squad-1",
        "source": "squad",
        "squad_id": "h1",
        "answer": "1961",
        "paraphrases": ["In what year was Beta established?", "Beta was founded in which year?"],
        "neighbours": [{"squad_id": "h2", "kind": "entity"}, {"squad_id": "h4", "kind": "attribute"}],
    }
    return row | changes


def corpus_row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": "corpus-1",
        "source": "corpus",
        "doc_id": "delta",
        "question": "When was Delta built?",
        "old_answer": "1901",
        "answer": "1911",
        "paraphrases": ["In what year was Delta built?", "Delta was built in which year?"],
        "neighbours": [
            {"question": "Who built Delta?", "kind": "entity", "answer": "Ilse"},
            {"question": "When was Epsilon built?", "kind": "attribute", "answer": "1902"},
        ],
    }
    return row | changes


def load_rows(tmp_path: Path, rows: list[dict[str, Any]], squad: bool = True) -> list[EditCase]:
    documents = [
        {"id": "delta", "title": "Delta", "text": "Delta was built in 1901 by Ilse."},
        {"id": "epsilon", "title": "Epsilon", "text": "Epsilon was built in 1902."},
    ]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in documents))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    squad_path = write_squad(tmp_path / "squad.parquet") if squad else None
    return load_edit_set(squad_path, tmp_path / "eval.jsonl", tmp_path / "corpus.jsonl")


def test_stand_in_set_resolves_squad_ids(tmp_path: Path) -> None:
    squad_case, corpus_case = load_rows(tmp_path, [squad_row(), corpus_row()])
    assert squad_case.question == "When was Beta founded?" and squad_case.old_answers == ["1950"]
    assert [n.answers for n in squad_case.neighbours] == [["Carl"], ["1960"]]
    assert squad_case.doc_id == "B_heldout/0" and corpus_case.old_answers == ["1901"]
    assert [c.id for c in load_rows(tmp_path, [squad_row(), corpus_row()], squad=False)] == ["corpus-1"]


BROKEN = {
    "one paraphrase": squad_row(paraphrases=["Beta was founded in which year?"]),
    "one neighbour": corpus_row(neighbours=[{"question": "Who built Delta?", "kind": "entity", "answer": "Ilse"}]),
    "no kind": squad_row(neighbours=[{"squad_id": "h2"}, {"squad_id": "h4", "kind": "attribute"}]),
    "one kind only": squad_row(neighbours=[{"squad_id": "h2", "kind": "entity"}, {"squad_id": "h4", "kind": "entity"}]),
    "paraphrase = question": squad_row(paraphrases=["when was beta founded", "Beta was founded in which year?"]),
    "unknown id": squad_row(squad_id="nope"),
    "training article": squad_row(squad_id="t1"),
    "answer = gold": squad_row(answer="the 1950"),
    "answer = old": corpus_row(answer="1901."),
    "neighbour duplicates the edit": squad_row(
        neighbours=[{"squad_id": "h3", "kind": "entity"}, {"squad_id": "h4", "kind": "attribute"}]
    ),
    "old answer not in document": corpus_row(old_answer="1899"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_cases_are_refused_by_name(tmp_path: Path, name: str) -> None:
    row = BROKEN[name]
    with pytest.raises(ValueError, match=row["id"]):
        load_rows(tmp_path, [row])


def test_a_neighbour_another_case_edits_is_refused(tmp_path: Path) -> None:
    other = corpus_row(id="corpus-2", question="Who built Delta?", old_answer="Ilse", answer="Olga")
    other["neighbours"][0] = {"question": "When was Delta built?", "kind": "entity", "answer": "1901"}
    with pytest.raises(ValueError, match="corpus-1"):
        load_rows(tmp_path, [corpus_row(), other], squad=False)


# Ordinary capitalised words both sides may use ("Festival" in a name is not the name).
_COMMON_TEXT = """America Athletic Bank Black Bridge City Club Company Duchy Festival Hall Hill House Institute
Mount Museum Northern Observatory Orchestra Park Prize Radio Saturday Stadium Street Sunday Tower United University"""
COMMON = frozenset(_COMMON_TEXT.split())


def _names(texts: list[str]) -> set[str]:
    """Capitalised words not at a sentence start: the invented entities' names."""
    found = set()
    for text in texts:
        words = re.findall(r"[\w'’-]+", text)
        found |= {w.strip(",.'’s") for w in words[1:] if w[:1].isupper() and len(w) > 3}
    return found


def test_written_training_anchors_are_well_formed_and_share_no_name_with_the_evaluation_set() -> None:
    """bench/data/scope_train_written.jsonl trains the scope classifier on invented entities; a name shared
    with the evaluation set or its corpus would leak held-out cases into the fit."""
    data = Path(__file__).resolve().parents[1] / "bench" / "data"
    rows = [json.loads(line) for line in (data / "scope_train_written.jsonl").read_text().splitlines() if line]
    counts = {"paraphrases": 3, "other_entity": 2, "other_attribute": 3}
    texts: list[str] = []
    for row in rows:
        assert set(row) == {"question", *counts}, row
        assert all(len(row[key]) == n for key, n in counts.items()), row["question"]
        texts += [row["question"], *(t for key in counts for t in row[key])]
    assert len(rows) >= 100 and all(t.endswith("?") for t in texts)
    assert len({t.lower() for t in texts}) == len(texts), "a question appears twice"
    held_out = [
        json.dumps(json.loads(line))
        for name in ("edits_eval.jsonl", "edits_corpus.jsonl")
        for line in (data / name).read_text().splitlines()
        if line
    ]
    shared = (_names(texts) & _names(held_out)) - COMMON
    assert not shared, shared
