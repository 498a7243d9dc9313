"""Edits on the evaluation set (bench/data/edits_eval.jsonl: SQuAD held-out paragraphs with
counterfactual answers, and a corpus written for it), scored with the model-editing literature's
names (EasyEdit), side by side with the plainest alternative, the edit ingested as a document:

- reliability: the edited question answers the new answer;
- generalization: its paraphrases do;
- locality: out-of-scope neighbours (same entity and another attribute, or the same attribute of
  another entity) answer exactly what they answered before the edit.

An answer "gives" the new answer when, normalised as SQuAD does, it equals it or contains it as a
phrase. All edits are in the memory at once (harder than one at a time: more near neighbours).
One server process serves SQuAD's 2,067 paragraphs and the written corpus, with its defaults.
Then freshness: the seconds from an edit's 201 on one replica until another replica answers from
it, on a shared SQLite registry (polled) and on PostgreSQL (notified).

    python -m bench.edits [--limit N] [--no-baseline] [--no-freshness] [--edit-answers reader]
"""

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.cluster import Node, replicas, wait_until
from bench.common import SQUAD, header, percentile
from bench.edit_set import EditCase, load_corpus, load_edit_set
from bench.replicas import wait_job
from service.application.evaluation import load_squad
from service.application.loading import cached_index_path, ensure_index, make_encoder
from service.application.squad import normalize_answer
from service.settings import Settings

PROBE = "Which glaze does the Ommerby kiln fire?"  # unanswerable here: refused fast until its edit applies


def build_index(settings: Settings) -> Path:
    """The index of SQuAD's paragraphs and the written corpus (built once, cached)."""
    documents = [*load_squad(SQUAD).paragraphs, *load_corpus()]
    source = settings.cache_dir / "bench" / "edits-corpus.jsonl"
    source.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"id": d.id, "title": d.title, "text": d.text}, ensure_ascii=False) for d in documents]
    source.write_text("\n".join(lines) + "\n")
    path = cached_index_path(settings, "edits", source)
    return ensure_index(settings, path, lambda: documents, lambda: make_encoder(settings))


def gives(answer: str, target: str) -> bool:
    said, wanted = f" {normalize_answer(answer)} ", f" {normalize_answer(target)} "
    return wanted.strip() != "" and wanted in said


def ask(node: Node, question: str, **options: Any) -> dict[str, Any]:
    status, body = node.post("/v1/ask", {"question": question, **options})
    assert status == 200, body
    answer: dict[str, Any] = body
    return answer


def answers(node: Node, questions: Iterable[str], **options: Any) -> dict[str, dict[str, Any]]:
    return {q: ask(node, q, **options) for q in dict.fromkeys(questions)}


def neighbours_of(cases: list[EditCase]) -> list[str]:
    return [n.question for c in cases for n in c.neighbours]


def score(cases: list[EditCase], before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The three figures (and how often the memory named an edit) for one way of editing."""
    reliable = [gives(after[c.question]["answer"], c.answer) for c in cases]
    general = [gives(after[p]["answer"], c.answer) for c in cases for p in c.paraphrases]
    local = [after[q]["answer"] == before[q]["answer"] for q in neighbours_of(cases)]
    by_kind = {
        kind: statistics.fmean(
            after[n.question]["answer"] == before[n.question]["answer"]
            for c in cases
            for n in c.neighbours
            if n.kind == kind
        )
        for kind in ("entity", "attribute")
    }
    named = statistics.fmean(after[p]["edit_id"] is not None for c in cases for p in (c.question, *c.paraphrases))
    wrongly = statistics.fmean(after[q]["edit_id"] is not None for q in neighbours_of(cases))
    return {
        "reliability": statistics.fmean(reliable),
        "generalization": statistics.fmean(general),
        "locality": statistics.fmean(local),
        "locality_same_entity": by_kind["entity"],
        "locality_same_attribute": by_kind["attribute"],
        "in_scope_named": named,
        "neighbours_named": wrongly,
    }


def edit_memory(node: Node, cases: list[EditCase], before: dict[str, dict[str, Any]]) -> dict[str, Any]:
    made = []
    for c in cases:
        body = {"question": c.question, "answer": c.answer} | ({"statement": c.statement} if c.statement else {})
        status, edit = node.post("/v1/edits", body)
        assert status == 201, edit
        made.append(edit["edit_id"])
    after = answers(node, [q for c in cases for q in (c.question, *c.paraphrases)] + neighbours_of(cases))
    for edit_id in made:
        node.request("DELETE", f"/v1/edits/{edit_id}")
    return score(cases, before, after)


def as_documents(node: Node, cases: list[EditCase], before: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The plainest alternative: each edit's fact ingested as a document of its own."""
    docs = [
        {"id": f"correction-{c.id}", "title": "Correction", "text": c.statement or f"{c.question} {c.answer}."}
        for c in cases
    ]
    wait_job(node, node.post("/v1/documents", {"upsert": docs, "delete": []})[1]["job_id"], 600)
    after = answers(node, [q for c in cases for q in (c.question, *c.paraphrases)] + neighbours_of(cases))
    wait_job(node, node.post("/v1/documents", {"upsert": [], "delete": [d["id"] for d in docs]})[1]["job_id"], 600)
    return score(cases, before, after)


def answered_by(node: Node) -> str | None:
    edit_id: str | None = ask(node, PROBE, abstain=True)["edit_id"]
    return edit_id


def freshness(index: Path, registry: Path, database_url: str | None, rounds: int) -> list[float]:
    """Seconds from a 201 on replica a until replica b answers from the edit (a answers at once)."""
    took = []
    with replicas(2, index, registry, database_url) as (a, b):
        for _ in range(rounds):
            status, edit = a.post("/v1/edits", {"question": PROBE, "answer": "celadon"})
            acked = time.monotonic()
            assert status == 201 and ask(a, PROBE, abstain=True)["edit_id"] == edit["edit_id"]
            wait_until(lambda: answered_by(b) == edit["edit_id"], 30, every=0.005)  # noqa: B023 (waited for here)
            took.append(time.monotonic() - acked)
            a.request("DELETE", f"/v1/edits/{edit['edit_id']}")
            wait_until(lambda: answered_by(b) is None, 30, every=0.005)
    return took


def table(rows: dict[str, dict[str, Any]]) -> None:
    names = list(next(iter(rows.values())))
    print("| | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for label, row in rows.items():
        print(f"| {label} | " + " | ".join(f"{row[n]:.3f}" for n in names) + " |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, help="edit cases of each source (default: all)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the edits-as-documents comparison")
    ap.add_argument("--no-freshness", action="store_true", help="skip the two-replica timing")
    ap.add_argument("--rounds", type=int, default=10, help="edits timed per store (freshness)")
    ap.add_argument("--edit-answers", choices=("edit", "reader"), default="edit", help="setting edit_answers")
    args = ap.parse_args()
    header("edits: reliability, generalization, locality; edit memory vs edits ingested as documents")
    cases = load_edit_set(SQUAD)
    if args.limit:
        cases = [c for s in ("squad", "corpus") for c in [c for c in cases if c.source == s][: args.limit]]
    settings = Settings()
    index = build_index(settings)
    print(f"cases: {len(cases)} ({sum(c.source == 'squad' for c in cases)} SQuAD held-out, the rest written); "
          f"paraphrases {sum(len(c.paraphrases) for c in cases)}, neighbours {len(neighbours_of(cases))}; "
          f"server defaults (top_k {settings.ask_top_k}, reader {settings.default_reader}, "
          f"edit_scope_threshold {settings.edit_scope_threshold})")  # fmt: skip
    registry = Path(settings.cache_dir / "bench" / f"edits-registry-{time.time_ns()}")
    with replicas(1, index, registry, None, {"RAGSERVE_EDIT_ANSWERS": args.edit_answers}) as (node,):
        before = answers(node, neighbours_of(cases))
        rows = {f"edit memory (POST /v1/edits), edit_answers={args.edit_answers}": edit_memory(node, cases, before)}
        if not args.no_baseline:
            rows["edit ingested as a document"] = as_documents(node, cases, before)
    table(rows)
    if args.no_freshness:
        return
    from bench import pgserver

    stores: dict[str, Any] = {"SQLite (polled every follow_poll_s)": None}
    with pgserver.postgres_server() if pgserver.available() else contextlib.nullcontext() as server:
        if server is not None:
            stores["PostgreSQL (LISTEN/NOTIFY)"] = server.new_database()
        for name, url in stores.items():
            took = freshness(index, registry.with_name(registry.name + f"-{len(name)}"), url, args.rounds)
            print(f"freshness on {name}: p50 {percentile(took, 50):.3f} s, max {max(took):.3f} s ({len(took)} edits)")


if __name__ == "__main__":
    main()
