"""Calibrated abstention (issue 21): does retrieval alone say whether the passages answer?

Unanswerable questions are made honestly: each article split (train, held-out) is cut into two
halves of articles, and for each half an index of every paragraph except that half's articles is
built (cached under the settings' home like the full index). A question asked against the index
without its own article is unanswerable by construction; the same question against the full index
is the answerable one.

    python -m bench.abstention --fit      # fit retriever/data/support.json on the training articles
    python -m bench.abstention            # report on the held-out articles (EM on --limit questions)

The report, per retrieval mode: abstention on unanswerable and answerable questions at the stored
threshold (goals >= 0.80 and <= 0.10), ECE of the probability (10 bins) against "the passages hold
the answer", the precision/coverage curve next to the baseline "threshold on the top score alone",
and exact match of the default reader with and without abstention.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.common import SQUAD, header
from ragserve.types import Passage, RetrievalMode, SearchResult
from retriever.support import FEATURES, SUPPORT_FILE, SupportModel, features
from retriever.version import VersionRetriever
from service.application.evaluation import Question, SquadData, load_squad, spread_sample, squad_retriever
from service.application.squad import exact_match, normalize_answer, select_articles
from service.settings import Settings

MODES = (RetrievalMode.DENSE, RetrievalMode.SPARSE, RetrievalMode.HYBRID)
GOAL_UNANSWERABLE = 0.80  # abstain on at least this share of unanswerable questions
GOAL_ANSWERABLE = 0.10  # and on at most this share of answerable ones
ECE_BINS = 10
CURVE_POINTS = 10
L2 = 1e-2  # ridge on the logistic weights: the features are on comparable [0, 1]-ish scales


def halves(articles: set[str]) -> tuple[set[str], set[str]]:
    """An article set cut in two (sorted titles, first half and second half)."""
    ordered, middle = sorted(articles), len(articles) // 2
    return set(ordered[:middle]), set(ordered[middle:])


def index_without(settings: Settings, data: SquadData, split: str, half: int, removed: set[str]) -> VersionRetriever:
    """The index of every paragraph outside the `removed` articles, built once into the cache."""
    from service.application.loading import cached_index_path, ensure_index, make_encoder, open_version

    kept = [p for p in data.paragraphs if p.id.rpartition("/")[0] not in removed]
    encoder = make_encoder(settings)
    path = cached_index_path(settings, f"squad-without-{split}-h{half}", SQUAD)
    ensure_index(settings, path, lambda: kept, lambda: encoder, progress=False)
    return open_version(settings, path, encoder)


def build_all(settings: Settings, data: SquadData) -> None:
    """Every index the benchmark uses (the full one and four with a half split removed)."""
    squad_retriever(settings, SQUAD, False, data).close()
    titles = {q.article for q in data.questions}
    for split in ("train", "heldout"):
        for half, removed in enumerate(halves(select_articles(titles, split)), start=1):
            index_without(settings, data, split, half, removed).close()


@dataclass
class Retrieved:
    """One split's questions, each searched in every mode against both indexes."""

    questions: list[Question]
    answerable: dict[RetrievalMode, list[list[Passage]]]  # full index
    unanswerable: dict[RetrievalMode, list[list[Passage]]]  # index without the question's article


def search_all(
    retriever: VersionRetriever, questions: Sequence[Question], top_k: int
) -> dict[RetrievalMode, list[list[Passage]]]:
    """The top_k passages of each question in each mode (queries embedded once)."""
    texts = [q.question for q in questions]
    vectors = retriever.encoder.encode_queries(texts)  # (Q, dim)
    found: dict[RetrievalMode, list[list[Passage]]] = {}
    for mode in MODES:
        given = None if mode is RetrievalMode.SPARSE else vectors
        found[mode] = [r.passages for r in retriever.search_embedded(texts, given, top_k, mode, 0.0)]
    return found


def retrieve(settings: Settings, data: SquadData, split: str, top_k: int) -> Retrieved:
    """Search `split`'s questions against the full index and against the index without their half."""
    titles = {q.article for q in data.questions}
    questions = [q for q in data.questions if q.article in select_articles(titles, split)]
    full = squad_retriever(settings, SQUAD, False, data)
    answerable = search_all(full, questions, top_k)
    position = {q.id: i for i, q in enumerate(questions)}
    unanswerable: dict[RetrievalMode, list[list[Passage]]] = {m: [[] for _ in questions] for m in MODES}
    for half, removed in enumerate(halves(select_articles(titles, split)), start=1):
        part = [q for q in questions if q.article in removed]
        found = search_all(index_without(settings, data, split, half, removed), part, top_k)
        for mode in MODES:
            for q, passages in zip(part, found[mode], strict=True):
                unanswerable[mode][position[q.id]] = passages
    return Retrieved(questions, answerable, unanswerable)


def supported(question: Question, passages: Sequence[Passage]) -> bool:
    """Whether passages from the full index hold the answer: the gold paragraph or a gold answer."""
    answers = [normalize_answer(a) for a in question.answers]
    return any(
        p.doc_id == question.gold_doc or any(a and a in normalize_answer(p.text) for a in answers) for p in passages
    )


@dataclass
class Rows:
    """One mode's feature rows: answerable questions first, then the same ones unanswerable."""

    x: dict[str, np.ndarray]  # feature name -> (2Q,)
    label: np.ndarray  # (2Q,) 1 where the passages hold the answer
    answerable: np.ndarray  # (2Q,) bool: asked against the full index
    half: np.ndarray  # (2Q,) 1 or 2: the article half of the question (the fit's folds)
    top: np.ndarray  # (2Q,) the top score (the baseline)

    def matrix(self, names: Sequence[str]) -> np.ndarray:
        return np.column_stack([self.x[n] for n in names])  # (2Q, f)


def rows_of(got: Retrieved, mode: RetrievalMode, first_half: set[str], count: int) -> Rows:
    """Feature rows of one mode from the first `count` passages; the label from all top_k."""
    lists = got.answerable[mode] + got.unanswerable[mode]
    questions = got.questions + got.questions
    n = len(got.questions)
    table = [
        features(q.question, ps[:count]) if ps else dict.fromkeys(FEATURES, 0.0)
        for q, ps in zip(questions, lists, strict=True)
    ]
    x = {name: np.array([t[name] for t in table]) for name in FEATURES}
    label = np.array(
        [i < n and supported(q, ps) for i, (q, ps) in enumerate(zip(questions, lists, strict=True))], float
    )
    half = np.array([1 if q.article in first_half else 2 for q in questions])
    return Rows(x, label, np.arange(2 * n) < n, half, x["top_score"])


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = L2, steps: int = 30) -> np.ndarray:
    """Weights (f + 1,) of p(y | x) = sigmoid(x @ w[:-1] + w[-1]) by Newton's method (bench/hybrid.py's idea)."""
    x = np.column_stack([x, np.ones(len(x))])  # (n, f + 1)
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(x @ w)))  # (n,)
        grad = x.T @ (p - y) + l2 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(len(w))
        w -= np.linalg.solve(hess, grad)
    return w


def out_of_fold(rows: Rows, names: Sequence[str]) -> np.ndarray:
    """Logits (2Q,) of each row from a fit on the other article half: what calibration may see."""
    x = rows.matrix(names)
    logits = np.empty(len(x))
    for held in (1, 2):
        w = fit_logistic(x[rows.half != held], rows.label[rows.half != held])
        logits[rows.half == held] = x[rows.half == held] @ w[:-1] + w[-1]
    return logits


def sigmoid(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1 / (1 + np.exp(-np.clip(z, -50, 50)))  # clipped: exp must not overflow
    return out


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    eps = 1e-9  # keeps log finite at p = 0 or 1
    return float(-np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)))


def choose_threshold(p: np.ndarray, answerable: np.ndarray) -> float:
    """The middle of the thresholds that abstain on >= 80% of unanswerable and <= 10% of answerable
    questions (the middle of the two bounds' gap when no threshold meets both)."""
    low = float(np.quantile(p[~answerable], GOAL_UNANSWERABLE))  # abstaining below it meets the first goal
    high = float(np.quantile(p[answerable], GOAL_ANSWERABLE))  # abstaining below it keeps the second
    return (low + high) / 2


def abstention(p: np.ndarray, answerable: np.ndarray, threshold: float) -> tuple[float, float]:
    """Shares abstained (p < threshold) of unanswerable and of answerable rows."""
    off = p < threshold
    return float(off[~answerable].mean()), float(off[answerable].mean())


# Feature sets compared by the fit (out-of-fold log loss on the training articles); the best is kept.
CANDIDATE_SETS = {
    "scores": ("top_score", "gap", "mean_score"),
    "top passage": ("top_score", "cover_top", "entity_top", "has_entity"),
    "all": FEATURES,
}


def fit_combination(rows: Rows) -> tuple[dict[str, object], np.ndarray, list[str]]:
    """The best candidate feature set, fitted on all rows and Platt-calibrated on out-of-fold
    logits; its calibrated out-of-fold p (2Q,); table lines of each set and each dropped feature."""
    lines, scored = [], {}
    for name, names in CANDIDATE_SETS.items():
        p = sigmoid(out_of_fold(rows, names))
        scored[name] = log_loss(p, rows.label)
        lines.append(f"| {name} | {scored[name]:.4f} | {_goal_line(p, rows)} |")
    for dropped in FEATURES:
        p = sigmoid(out_of_fold(rows, [n for n in FEATURES if n != dropped]))
        lines.append(f"| all but {dropped} | {log_loss(p, rows.label):.4f} | {_goal_line(p, rows)} |")
    best = min(scored, key=lambda k: scored[k])
    names = CANDIDATE_SETS[best]
    oof = out_of_fold(rows, names)
    scale, shift = fit_logistic(oof[:, None], rows.label, l2=0.0)  # Platt: p = sigmoid(scale * z + shift)
    w = fit_logistic(rows.matrix(names), rows.label)
    params: dict[str, object] = {
        "feature_set": best,
        "features": list(names),
        "weights": [round(float(v), 6) for v in w[:-1]],
        "bias": round(float(w[-1]), 6),
        "calibration": {"scale": round(float(scale), 6), "shift": round(float(shift), 6)},
    }
    return params, sigmoid(scale * oof + shift), lines


def fit_mode(got: Retrieved, mode: RetrievalMode, top_k: int) -> dict[str, object]:
    """One mode: a combination per passage count 1..top_k, the threshold chosen on the top_k one."""
    first, _ = halves({q.article for q in got.questions})
    fitted = [fit_combination(rows_of(got, mode, first, count)) for count in range(1, top_k + 1)]
    rows = rows_of(got, mode, first, top_k)
    threshold = choose_threshold(fitted[-1][1], rows.answerable)
    print(f"\n## {mode.value}: out-of-fold on the training articles, {top_k} passages (threshold chosen per row)")
    print("| features | log loss | abstain unanswerable | abstain answerable |\n|---|---:|---:|---:|")
    print("\n".join(fitted[-1][2]))
    print(f"threshold {threshold:.4f}; per passage count (out of fold, at that threshold):")
    for count, (params, p, _) in enumerate(fitted, start=1):
        unans, ans = abstention(p, rows.answerable, threshold)
        print(f"- {count}: {params['feature_set']}, abstains on {unans:.3f} unanswerable, {ans:.3f} answerable")
    return {
        "threshold": round(threshold, 4),
        "baseline_top_score_threshold": round(choose_threshold(rows.top, rows.answerable), 4),
        "by_passages": {str(count): params for count, (params, _, _) in enumerate(fitted, start=1)},
    }


def _goal_line(p: np.ndarray, rows: Rows) -> str:
    unans, ans = abstention(p, rows.answerable, choose_threshold(p, rows.answerable))
    return f"{unans:.3f} | {ans:.3f}"


def fit(settings: Settings, data: SquadData, top_k: int) -> None:
    """Fit every mode on the training articles and write retriever/data/support.json."""
    got = retrieve(settings, data, "train", top_k)
    modes = {mode.value: fit_mode(got, mode, top_k) for mode in MODES}
    doc = {
        "description": "p(the retrieved passages answer the question) from retrieval alone (retriever/support.py)",
        "label": "1: the full index's top_k passages include the gold paragraph or a gold answer; 0: otherwise, "
        "and always for a question asked against the index without its article; by_passages[c] judges that "
        "event from the first c passages alone",
        "fit": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": "python -m bench.abstention --fit",
            "data": "SQuAD v1.1 dev, train articles (service.application.squad.select_articles)",
            "top_k": top_k,
            "questions": len(got.questions),
            "rows_per_mode": 2 * len(got.questions),
            "articles": len({q.article for q in got.questions}),
        },
        "modes": modes,
    }
    SUPPORT_FILE.parent.mkdir(parents=True, exist_ok=True)
    SUPPORT_FILE.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {SUPPORT_FILE}")


def ece(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: |mean p - share positive| per equal-width bin, weighted by size."""
    which = np.minimum((p * bins).astype(int), bins - 1)  # (n,) bin of each row
    return float(sum(abs(p[which == b].mean() - y[which == b].mean()) * (which == b).mean() for b in np.unique(which)))


def curve(signal: np.ndarray, good: np.ndarray) -> list[tuple[float, float]]:
    """(coverage, precision) when only the best-`signal` share of questions is answered."""
    order = np.argsort(-signal, kind="stable")
    points = []
    for step in range(CURVE_POINTS, 0, -1):
        answered = order[: max(1, round(len(order) * step / CURVE_POINTS))]
        points.append((len(answered) / len(order), float(good[answered].mean())))
    return points


def print_curve(title: str, model: np.ndarray, top: np.ndarray, good: np.ndarray) -> None:
    print(f"{title}\n| coverage | precision (support model) | precision (top score alone) |\n|---:|---:|---:|")
    for (c, a), (_, b) in zip(curve(model, good), curve(top, good), strict=True):
        print(f"| {c:.2f} | {a:.4f} | {b:.4f} |")


def report_mode(model: SupportModel, got: Retrieved, mode: RetrievalMode, first: set[str]) -> None:
    """Abstention at the stored threshold, calibration and the support curve of one mode (the
    fit's top_k passages judged), and abstention when a request hands the top passage alone."""
    params = model.modes[mode]
    rows = rows_of(got, mode, first, params.top_k)
    lists, questions = got.answerable[mode] + got.unanswerable[mode], got.questions + got.questions
    started = time.perf_counter()
    p = np.array([model.probability(q.question, ps, mode) for q, ps in zip(questions, lists, strict=True)])
    micros = (time.perf_counter() - started) * 1e6 / len(lists)
    one = np.array([model.probability(q.question, ps[:1], mode) for q, ps in zip(questions, lists, strict=True)])
    unans, ans = abstention(p, rows.answerable, params.threshold)
    one_unans, one_ans = abstention(one, rows.answerable, params.threshold)
    top_t = float(json.loads(SUPPORT_FILE.read_text())["modes"][mode.value]["baseline_top_score_threshold"])
    b_unans, b_ans = abstention(rows.top, rows.answerable, top_t)
    print(
        f"\n## {mode.value} (features: {', '.join(params.features)})\n"
        f"threshold {params.threshold:.4f}: abstains on {unans:.3f} of unanswerable (goal >= {GOAL_UNANSWERABLE}) "
        f"and {ans:.3f} of answerable (goal <= {GOAL_ANSWERABLE}); {micros:.0f} µs per probability\n"
        f"ECE ({ECE_BINS} bins, label: the top {params.top_k} hold the answer): {ece(p, rows.label):.4f}; "
        f"log loss {log_loss(p, rows.label):.4f}; share positive {rows.label.mean():.3f}\n"
        f"handed the top passage alone: abstains on {one_unans:.3f} of unanswerable and {one_ans:.3f} of "
        f"answerable; ECE {ece(one, rows.label):.4f}\n"
        f"baseline, top score < {top_t:.4f} (chosen the same way on the training articles): "
        f"abstains on {b_unans:.3f} of unanswerable and {b_ans:.3f} of answerable"
    )
    a = rows.answerable
    title = "answerable questions (full index), precision = share whose passages hold the answer:"
    print_curve(title, p[a], rows.top[a], rows.label[a])


def report_em(
    settings: Settings, data: SquadData, model: SupportModel, got: Retrieved, limit: int, mode: RetrievalMode
) -> None:
    """Exact match of the default reader on the full index's passages of a spread sample of
    answerable held-out questions, with and without abstention, and its precision/coverage curve."""
    from tqdm import tqdm

    from service.application.loading import load_engine

    retriever = squad_retriever(settings, SQUAD, False, data)
    engine = load_engine(settings, retriever)
    plan = engine.plan(None, None, None)
    position = {q.id: i for i, q in enumerate(got.questions)}
    sample = spread_sample(got.questions, limit)
    lists = [got.answerable[mode][position[q.id]] for q in sample]
    started = time.perf_counter()
    em = []
    for q, passages in tqdm(list(zip(sample, lists, strict=True)), desc=f"reading ({mode.value})", unit=" q"):
        found = SearchResult(passages, retriever.index_version, {"embed": 0.0, "search": 0.0})
        em.append(exact_match(engine.read(q.question, passages, plan, found, time.perf_counter()).answer, q.answers))
    seconds = (time.perf_counter() - started) / len(sample)
    p = np.array([model.probability(q.question, ps, mode) for q, ps in zip(sample, lists, strict=True)])
    top = np.array([ps[0].score if ps else 0.0 for ps in lists])
    kept, right = p >= model.modes[mode].threshold, np.array(em)
    print(
        f"\n## exact match, {mode.value}, default reader ({settings.default_reader}), {len(sample)} held-out "
        f"answerable questions (spread sample), {seconds:.2f} s each\n"
        f"EM without abstention: {right.mean():.4f}; answered at the threshold: {kept.mean():.3f}, "
        f"EM among them: {right[kept].mean() if kept.any() else float('nan'):.4f} (goal: no lower)"
    )
    print_curve("precision = EM among the answered:", p, top, right)


def report(settings: Settings, data: SquadData, top_k: int, limit: int, reader_modes: Sequence[RetrievalMode]) -> None:
    model = SupportModel.load()
    print(f"model: {SUPPORT_FILE.name} fitted {model.meta['fit']['date']}; top_k {top_k}")  # type: ignore[index]
    got = retrieve(settings, data, "heldout", top_k)
    first, _ = halves({q.article for q in got.questions})
    print(
        f"held-out: {len(got.questions)} questions, each answerable (full index) and unanswerable "
        f"(index without its article half), {len({q.article for q in got.questions})} articles"
    )
    for mode in MODES:
        report_mode(model, got, mode, first)
    for mode in reader_modes:
        report_em(settings, data, model, got, limit, mode)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fit", action="store_true", help="fit on the training articles, write support.json")
    parser.add_argument("--top-k", type=int, default=Settings().retrieve_top_k, help="passages judged per question")
    parser.add_argument("--limit", type=int, default=200, help="held-out questions the reader answers (EM)")
    parser.add_argument("--reader-modes", default="hybrid", help="comma-separated modes whose EM is measured")
    args = parser.parse_args()
    settings = Settings()
    header("abstention: p(the retrieved passages answer the question)" + (" (fit)" if args.fit else ""))
    data = load_squad(SQUAD)
    build_all(settings, data)
    if args.fit:
        fit(settings, data, args.top_k)
    else:
        modes = [RetrievalMode(m) for m in args.reader_modes.split(",") if m]
        report(settings, data, args.top_k, args.limit, modes)


if __name__ == "__main__":
    main()
