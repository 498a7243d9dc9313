"""SQuAD v1.1 dev from ../shared: loading (fast) and the full open-domain evaluation (`slow`)."""

from pathlib import Path

import pytest

from service.application.evaluation import load_squad, run_squad_eval
from service.settings import Settings

SQUAD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "squad-v1.1-dev.parquet"
needs_squad = pytest.mark.skipif(not SQUAD.is_file(), reason=f"{SQUAD} not present (it lives in ../shared)")


@needs_squad
def test_load_squad_makes_one_document_per_distinct_paragraph() -> None:
    data = load_squad(SQUAD)
    assert len(data.questions) == 10_570 and len(data.paragraphs) == 2_067
    ids = {d.id for d in data.paragraphs}
    assert len(ids) == 2_067 and all(q.gold_doc in ids for q in data.questions)
    assert data.paragraphs[0].id == "Super_Bowl_50/0" and data.paragraphs[0].title == "Super Bowl 50"


@needs_squad
@pytest.mark.slow
def test_full_open_domain_retrieval(cache_home: Path) -> None:
    """All 10,570 questions over all 2,067 paragraphs (about 2 minutes on 2 cores, 1 to build)."""
    report = run_squad_eval(Settings(home=cache_home), SQUAD, None, [], True, 1, progress=False)
    assert report["questions"] == 10_570
    assert report["recall@1"] >= 0.60 and report["recall@5"] >= 0.85 and report["recall@20"] >= 0.94


@needs_squad
@pytest.mark.slow
def test_reader_on_squad_sample(cache_home: Path) -> None:
    """100 questions answered by the default reader from the top retrieved passage (about 2 minutes)."""
    report = run_squad_eval(Settings(home=cache_home), SQUAD, 100, [None], False, 1, progress=False)
    assert report["exact_match"] >= 0.10 and report["f1"] >= 0.15
