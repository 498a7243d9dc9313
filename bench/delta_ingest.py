"""What one ingested batch costs the delta index, at several delta sizes: the incremental delta
(retriever/delta.py) against the rebuild-whole delta it replaced, measured in the same run.

The version's BM25 statistics come from the SQuAD v1.1 dev paragraphs; the delta holds SQuAD
paragraphs as chunks (cycled, each a new document) with random unit vectors: embedding is the
indexer's cost and the same either way, so it is left out. The delta is filled `--fill` documents
a batch; then a batch is `--batch` documents of one chunk each, half of them new, half replacing a
document the delta holds. The last column is what the delta's blocks of postings cost a search,
against one block over the same chunks (what the rebuilt delta searched).

    python -m bench.delta_ingest [--sizes 1000 10000 50000] [--batch 8] [--batches 50]
"""

import argparse
import statistics
import time
from collections.abc import Sequence

import numpy as np

from bench.common import SQUAD, header
from ragserve.types import RetrievalMode
from retriever.delta import DeltaIndex, Embedded
from retriever.docstore import StoredChunk
from retriever.search import search
from retriever.sparse import BM25Params, SparseIndex, indexed_text
from service.application.evaluation import load_squad
from service.application.loading import search_config
from service.settings import Settings

DIM = 384
FUSION = search_config(Settings()).fusion  # the defaults (unused by BM25 alone)


def one_chunk(doc_id: str, title: str, text: str, rng: np.random.Generator) -> Embedded:
    vector = rng.standard_normal((1, DIM)).astype(np.float32)
    return [StoredChunk(0, f"{doc_id}#0", doc_id, title, text, 0, len(text), {})], vector / np.linalg.norm(vector)


def old_rebuild(sparse: SparseIndex, docs: dict[str, Embedded]) -> None:
    """What DeltaIndex.put did before: every chunk analysed, weighed and stacked again."""
    rows = [c for chunks, _ in docs.values() for c in chunks]
    tf, lengths = sparse.tf_rows([indexed_text(c.title, c.text) for c in rows])
    sparse.weigh(tf, lengths).T.tocsr()  # (terms, rows) postings
    np.ascontiguousarray(np.vstack([v for chunks, v in docs.values() if len(chunks)]), dtype=np.float32)


def batches(
    paragraphs: Sequence[tuple[str, str]], held: int, count: int, size: int, rng: np.random.Generator
) -> list[dict[str, Embedded]]:
    """`count` batches of `size` one-chunk documents: half new ids, half ids the delta holds."""
    out = []
    for b in range(count):
        ids = [f"new-{b}-{i}" for i in range(size - size // 2)] + [f"d{rng.integers(held)}" for _ in range(size // 2)]
        out.append({doc: one_chunk(doc, *paragraphs[rng.integers(len(paragraphs))], rng) for doc in ids})
    return out


def search_ms(delta: DeltaIndex, sparse: SparseIndex, questions: Sequence[str]) -> float:
    """p50 milliseconds of one BM25 search of the delta alone, a query at a time."""
    snap, times = delta.snapshot(), []
    for question in questions:
        started = time.perf_counter()
        search(snap, sparse, [question], None, 10, RetrievalMode.SPARSE, FUSION)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def filled(size: int, fill: int, paragraphs: Sequence[tuple[str, str]], sparse: SparseIndex) -> DeltaIndex:
    """A delta of `size` one-chunk documents, ingested `fill` documents a batch."""
    rng = np.random.default_rng(size)
    delta = DeltaIndex(DIM, sparse)
    for start in range(0, size, fill):
        docs = range(start, min(start + fill, size))
        delta.put({f"d{i}": one_chunk(f"d{i}", *paragraphs[i % len(paragraphs)], rng) for i in docs}, [], seq=1)
    return delta


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--fill", type=int, default=64, help="documents per batch while the delta is filled")
    ap.add_argument("--old-repeats", type=int, default=3)
    args = ap.parse_args()
    header("delta index: cost of one ingested batch, incremental vs rebuilt whole")
    settings = Settings()
    print(
        f"settings: bm25 k1={settings.bm25_k1} b={settings.bm25_b}, batches of {args.batch} one-chunk documents "
        f"(half replacing held ones) on a delta filled {args.fill} a batch, dim {DIM}"
    )
    squad = load_squad(SQUAD)
    paragraphs = [(d.title, d.text) for d in squad.paragraphs]
    questions = [q.question for q in squad.questions[:: len(squad.questions) // 100]]
    sparse = SparseIndex.from_texts(
        [indexed_text(t, x) for t, x in paragraphs], BM25Params(settings.bm25_k1, settings.bm25_b)
    )
    print(
        "| delta chunks | incremental, ms per batch (p50 / max) | rows analysed per batch "
        "| rebuilt whole, ms per batch (p50) | ratio | BM25 search of the delta, ms (p50): blocks held / one block |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        rng = np.random.default_rng(size + 1)
        delta = filled(size, args.fill, paragraphs, sparse)
        timings, analysed = [], delta.analysed
        for seq, batch in enumerate(batches(paragraphs, size, args.batches, args.batch, rng), start=2):
            started = time.perf_counter()
            delta.put(batch, [], seq=seq)
            timings.append((time.perf_counter() - started) * 1000)
        per_batch_rows = (delta.analysed - analysed) / args.batches
        contents = delta.contents()
        docs: dict[str, Embedded] = {
            c.doc_id: ([c], contents.vectors[i : i + 1]) for i, c in enumerate(contents.chunks)
        }
        old = []
        for batch in batches(paragraphs, size, args.old_repeats, args.batch, rng):
            started = time.perf_counter()
            old_rebuild(sparse, {**docs, **batch})
            old.append((time.perf_counter() - started) * 1000)
        whole = DeltaIndex(DIM, sparse)
        whole.put(docs, [], seq=1)  # one block over the same chunks, as the rebuilt delta had
        new_p50, old_p50 = statistics.median(timings), statistics.median(old)
        blocks = len(delta.snapshot().postings)
        print(
            f"| {size:,} | {new_p50:.2f} / {max(timings):.2f} | {per_batch_rows:.0f} | {old_p50:.1f} | "
            f"{old_p50 / new_p50:.0f}x | {search_ms(delta, sparse, questions):.2f} ({blocks} blocks) / "
            f"{search_ms(whole, sparse, questions):.2f} |"
        )


if __name__ == "__main__":
    main()
