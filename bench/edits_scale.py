"""What 10,000 edits cost /v1/ask: one server on SQuAD's 2,067 paragraphs with N synthetic edits
in its memory, asked held-out SQuAD questions (in no edit's scope) with the edit memory on and off
(`"edits": false` skips it: the path of a server without edits), in pairs, in random order. Figures:
wall time and server CPU time per request (from /proc), their ratios, the memory's own stage time,
how many questions an edit wrongly claimed, and the start-up time with and without the edits.

Synthetic edits are "attribute of entity" questions over invented names (seeded), written to the
edit table before the server starts, as a long-running deployment would have accumulated them.

    python -m bench.edits_scale [--edits 10000] [--questions 60]
"""

import argparse
import os
import random
import statistics
import time
from pathlib import Path

from bench.cluster import Node, replicas
from bench.common import SQUAD, header, percentile
from indexer.edits import NewEdit, SqliteEditStore
from retriever.registry import IndexRegistry
from service.application.edits import stored_vector
from service.application.evaluation import load_squad, spread_sample, squad_retriever
from service.application.loading import encoder_key, make_encoder
from service.application.squad import select_articles
from service.application.store import DOCUMENTS_FILE
from service.settings import Settings

TEMPLATES = [
    "Who founded {e}?",
    "When was {e} founded?",
    "Who is the director of {e}?",
    "How tall is {e}?",
    "Where is {e} located?",
    "What colour is the roof of {e}?",
    "How many people work at {e}?",
    "Who designed {e}?",
    "In what year did {e} close?",
    "What is the motto of {e}?",
    "Which river flows past {e}?",
    "Who owns {e}?",
]
KINDS = ["Museum", "Observatory", "Library", "Brewery", "Bridge", "Harbour", "Academy", "Theatre", "Mill", "Chapel"]
SYLLABLES = ["ka", "lo", "ven", "dre", "mor", "tis", "al", "qui", "ber", "sun", "ox", "ri", "pel", "gan", "ul"]
TICKS = os.sysconf("SC_CLK_TCK")


def synthetic_edits(n: int, seed: int = 7) -> list[NewEdit]:
    rng = random.Random(seed)
    seen: set[str] = set()
    edits: list[NewEdit] = []
    while len(edits) < n:
        name = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))).capitalize()
        question = rng.choice(TEMPLATES).format(e=f"the {name} {rng.choice(KINDS)}")
        if question not in seen:
            seen.add(question)
            edits.append(NewEdit(question, f"answer {len(edits)}"))
    return edits


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def timed_ask(node: Node, question: str, edits: bool) -> tuple[float, float, float, str | None]:
    """(wall s, server CPU s, edit stage ms, edit_id) of one request."""
    cpu, started = cpu_s(node.process.pid), time.perf_counter()
    status, body = node.post("/v1/ask", {"question": question, "edits": edits})
    wall = time.perf_counter() - started
    assert status == 200, body
    return wall, cpu_s(node.process.pid) - cpu, body["timings_ms"].get("edits", 0.0), body["edit_id"]


def started_in(index: Path, registry: Path) -> float:
    began = time.monotonic()
    with replicas(1, index, registry, None):
        return time.monotonic() - began


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edits", type=int, default=10_000)
    ap.add_argument("--questions", type=int, default=60, help="held-out SQuAD questions, each asked both ways")
    ap.add_argument("--unstored", action="store_true", help="edits without their vectors (start-up embeds them)")
    args = ap.parse_args()
    header(f"/v1/ask with {args.edits} edits in the memory vs without")
    settings = Settings()
    index = squad_retriever(settings, SQUAD, progress=False).path
    data = load_squad(SQUAD)
    heldout = select_articles((q.article for q in data.questions), "heldout")
    questions = [q.question for q in spread_sample([q for q in data.questions if q.article in heldout], args.questions)]
    root = settings.cache_dir / "bench" / f"edits-scale-{time.time_ns()}"
    empty_start = started_in(index, root / "empty")
    home = IndexRegistry(root / "full", settings.index_name).home
    home.mkdir(parents=True, exist_ok=True)
    store = SqliteEditStore(home / DOCUMENTS_FILE)
    encoder = make_encoder(settings)  # each edit's question vector, as the replica that took it stores it
    edits = synthetic_edits(args.edits)
    vectors = encoder.encode_queries([e.question for e in edits])  # (edits, dim)
    for edit, vector in zip(edits, vectors, strict=True):
        stored = None if args.unstored else stored_vector(encoder_key(encoder), vector)
        store.create(edit, "bench", settings.max_edits, stored)
    full_start = started_in(index, root / "full")
    rows: dict[bool, list[tuple[float, float, float, str | None]]] = {True: [], False: []}
    rng = random.Random(11)
    with replicas(1, index, root / "full", None) as (node,):
        for question in questions[:3]:  # warm-up, not counted
            timed_ask(node, question, True)
        for question in questions:
            for on in rng.sample([True, False], 2):
                rows[on].append(timed_ask(node, question, on))
    wall = {on: statistics.median(r[0] for r in rows[on]) for on in rows}
    cpu = {on: statistics.fmean(r[1] for r in rows[on]) for on in rows}
    stage = [r[2] for r in rows[True]]
    claimed = sum(r[3] is not None for r in rows[True])
    print(f"questions: {len(questions)} held-out SQuAD, each asked with the memory on and off (random order)")
    print("| | p50 wall ms | mean server CPU ms |")
    print("|---|---:|---:|")
    print(f"| memory off (as without edits) | {wall[False] * 1e3:.1f} | {cpu[False] * 1e3:.1f} |")
    print(f"| memory on, {args.edits} edits | {wall[True] * 1e3:.1f} | {cpu[True] * 1e3:.1f} |")
    print(f"| ratio | {wall[True] / wall[False]:.3f} | {cpu[True] / cpu[False]:.3f} |")
    print(f"edit stage (embed the question, search the edits, judge the candidates): "
          f"p50 {percentile(stage, 50):.1f} ms, p90 {percentile(stage, 90):.1f} ms")  # fmt: skip
    print(f"questions an edit wrongly claimed: {claimed} of {len(questions)}")
    how = "vectors embedded at start" if args.unstored else "vectors read from the table"
    print(f"start-up to ready: {empty_start:.1f} s without edits, {full_start:.1f} s with {args.edits} ({how})")


if __name__ == "__main__":
    main()
