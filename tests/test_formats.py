"""The documents people have (indexer/formats.py, indexer/formats_csv.py, indexer/sources.py):
real PDFs (fpdf2), HTML pages with boilerplate, DOCX files (python-docx) and CSV files made here;
pages kept down to the retrieved passage; ids relative to the folder given, however it is
written; every skipped file reported with its reason and counted."""

import importlib.util
import json
import os
from pathlib import Path

import docx
import pytest
from fpdf import FPDF

from indexer.build import build_artifact
from indexer.chunking import PAGE_BREAK, ChunkingConfig, chunk_document
from indexer.sources import CsvColumns, ReadOptions, Skipped, read_corpus
from ragserve.types import Document, RetrievalMode
from retriever.docstore import Docstore
from retriever.encoder import Encoder
from retriever.version import VersionRetriever
from service.cli import main
from tests.defaults import SEARCH, build

# One made-up fact a page, so a search finds exactly one page.
PAGES = [
    "The Orrin lighthouse keeper logs the tide twice a day in a green ledger.",
    "The Calder mill grinds rye on Tuesdays and barley on Fridays. " * 6,
    "The Tamsin ferry to Isle Brack leaves at seven and carries twelve bicycles at most.",
]
ARTICLE = [
    "The Wexley reservoir was drained in March so that engineers could inspect the old dam.",
    "Inspectors found that the clay core had held for ninety years without a single repair.",
]
BOILERPLATE = ["Home", "Subscribe to our newsletter", "Cookie settings", "All rights reserved by Wexley Gazette"]


def make_pdf(pages: list[str], title: str | None = None, user_password: str | None = None) -> bytes:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    if title:
        pdf.set_title(title)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 6, text)
    if user_password is not None:
        pdf.set_encryption(owner_password="owner-secret", user_password=user_password)
    return bytes(pdf.output())


def make_html(paragraphs: list[str], title: str = "Wexley reservoir drained - Wexley Gazette") -> str:
    nav = "".join(f'<li><a href="/{i}">{word}</a></li>' for i, word in enumerate(BOILERPLATE[:2]))
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        "<style>p { color: black }</style><script>var tracking = 1;</script></head><body>"
        f"<header><nav><ul>{nav}</ul></nav></header>"
        f"<main><article><h1>Reservoir drained</h1>{body}</article></main>"
        f"<footer><p>{BOILERPLATE[2]}</p><p>{BOILERPLATE[3]}</p></footer></body></html>"
    )


def make_docx(path: Path, core_title: str | None = None) -> None:
    document = docx.Document()
    if core_title:
        document.core_properties.title = core_title
    document.add_heading("Cellar inventory", level=1)
    document.add_paragraph("The Brisket cellar holds forty casks of pear cider.")
    table = document.add_table(rows=2, cols=2)
    for (r, c), text in {(0, 0): "Cask", (0, 1): "Litres", (1, 0): "Pear", (1, 1): "225"}.items():
        table.cell(r, c).text = text
    document.add_paragraph("Inventory is counted every November.")
    document.save(str(path))


def one(docs: list[Document], suffix: str) -> Document:
    (found,) = [d for d in docs if d.id.endswith(suffix)]
    return found


def test_a_pdf_keeps_its_pages_down_to_the_retrieved_passage(tmp_path: Path, encoder: Encoder) -> None:
    (tmp_path / "ferry.pdf").write_bytes(make_pdf(PAGES, title="Harbour notes"))
    (doc,) = list(read_corpus([tmp_path / "ferry.pdf"]))
    assert doc.id == "ferry.pdf" and doc.title == "Harbour notes"
    assert doc.metadata == {"source": "ferry.pdf", "format": "pdf", "page_count": 3}
    assert doc.text.count(PAGE_BREAK) == 2 and "Tamsin ferry" in doc.text.split(PAGE_BREAK)[2]

    # every chunk names the pages it lies on, also one that crosses a page break
    chunks = chunk_document(doc, encoder.tokenize([doc.text])[0], ChunkingConfig(24, 4))
    assert len(chunks) > 3
    for c in chunks:
        first = 1 + doc.text[: c.start_char].count(PAGE_BREAK)
        assert c.metadata["page"] == first
        assert c.metadata["pages"] == [first, first + c.text.count(PAGE_BREAK)]
    assert any(c.metadata["pages"][0] < c.metadata["pages"][1] for c in chunks)

    out = tmp_path / "idx"
    build_artifact([doc], out, encoder, build(chunking=ChunkingConfig(32, 4)), progress=False)
    retriever = VersionRetriever(out, encoder, SEARCH)
    (hits,) = retriever.search_batch(["Which ferry goes to Isle Brack?"], 1, RetrievalMode.HYBRID)
    (top,) = hits.passages
    assert "Tamsin ferry" in top.text and top.metadata["pages"][1] == 3 and top.metadata["page_count"] == 3
    assert top.metadata["page"] == top.metadata["pages"][0] == 3 - top.text.count(PAGE_BREAK)


def test_pdfs_that_cannot_be_read_are_skipped_with_their_reason(tmp_path: Path) -> None:
    (tmp_path / "locked.pdf").write_bytes(make_pdf(PAGES[:1], user_password="open-sesame"))
    (tmp_path / "owner-only.pdf").write_bytes(make_pdf(PAGES[:1], user_password=""))  # opens without one
    (tmp_path / "scanned.pdf").write_bytes(make_pdf(["", ""]))
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >>\ngarbage")
    corpus = read_corpus([tmp_path])
    docs = list(corpus)
    assert [d.id for d in docs] == ["owner-only.pdf"] and "Orrin lighthouse" in docs[0].text
    reasons = {Path(s.file).name: s.reason for s in corpus.skipped}
    assert "encrypted" in reasons["locked.pdf"]
    assert "no text" in reasons["scanned.pdf"]
    assert "not a readable PDF" in reasons["broken.pdf"]
    assert corpus.totals() == {"files": 4, "documents": 1, "skipped": 3}


def test_html_main_text_without_the_boilerplate(tmp_path: Path) -> None:
    (tmp_path / "reservoir.html").write_text(make_html(ARTICLE), "utf-8")
    (tmp_path / "lockers.htm").write_text(
        "<html><body><div class='footer'>Locker 12 is in corridor B.</div></body></html>", "utf-8"
    )
    (tmp_path / "script-only.html").write_text("<html><body><script>var x = 1;</script></body></html>", "utf-8")
    corpus = read_corpus([tmp_path])
    docs = list(corpus)
    page = one(docs, "reservoir.html")
    assert page.title == "Wexley reservoir drained - Wexley Gazette"
    assert all(sentence in page.text for sentence in ARTICLE)
    assert not any(noise in page.text for noise in [*BOILERPLATE, "tracking", "color"])
    assert page.metadata["format"] == "html" and page.metadata["extraction"] == "main-text"
    fallback = one(docs, "lockers.htm")  # trafilatura finds no main text: every visible text
    assert fallback.text == "Locker 12 is in corridor B." and fallback.title == "lockers"
    assert fallback.metadata["extraction"] == "all-text"
    assert [(Path(s.file).name, "no text" in s.reason) for s in corpus.skipped] == [("script-only.html", True)]


def test_docx_paragraphs_tables_and_title(tmp_path: Path) -> None:
    make_docx(tmp_path / "cellar.docx", core_title="Brisket cellar, 2025")
    make_docx(tmp_path / "plain.docx")
    (tmp_path / "fake.docx").write_bytes(b"PK\x03\x04 this is no zip")
    corpus = read_corpus([tmp_path])
    docs = list(corpus)
    cellar = one(docs, "cellar.docx")
    assert cellar.title == "Brisket cellar, 2025" and cellar.metadata["format"] == "docx"
    assert cellar.text.splitlines() == [
        "Cellar inventory",
        "The Brisket cellar holds forty casks of pear cider.",
        "Cask | Litres",
        "Pear | 225",
        "Inventory is counted every November.",
    ]
    assert one(docs, "plain.docx").title == "Cellar inventory"  # no core title: the first heading
    assert [Path(s.file).name for s in corpus.skipped] == ["fake.docx"]
    assert "not a readable DOCX" in corpus.skipped[0].reason


def test_csv_rows_with_a_column_mapping(tmp_path: Path) -> None:
    (tmp_path / "faq.csv").write_text(
        "Question,Answer,Ref,lang\n"
        "Where are the keys?,In the blue box by the door.,k1,en\n"
        '"Opening, hours?",,k2,en\n'
        "\n"
        'Who cleans?,"The night team, from ten.",k3,de\n',
        "utf-8",
    )
    (tmp_path / "plain.tsv").write_text("ID\ttext\nt-1\tTabs work too.\n", "utf-8")
    (tmp_path / "noid.csv").write_text("title,text,extra\nA,First row.,x\nB,Second row.,y\n", "utf-8")
    options = ReadOptions(CsvColumns(id="Ref", title="Question", text="Answer"))
    corpus = read_corpus([tmp_path / "faq.csv"], options)
    docs = list(corpus)
    assert [(d.id, d.title, d.text) for d in docs] == [
        ("k1", "Where are the keys?", "In the blue box by the door."),
        ("k3", "Who cleans?", "The night team, from ten."),
    ]
    assert docs[1].metadata == {"source": "faq.csv", "row": 3, "lang": "de"}
    assert corpus.skipped == [Skipped(str(tmp_path / "faq.csv"), "row 2: no text in column 'Answer'")]

    defaults = read_corpus([tmp_path], ReadOptions())  # columns named id/title/text, any case
    found = {d.id: d for d in defaults}
    assert found["t-1"].text == "Tabs work too."
    assert found["noid.csv#2"].title == "B" and found["noid.csv#2"].metadata == {
        "source": "noid.csv",
        "row": 2,
        "extra": "y",
    }
    (skip,) = defaults.skipped  # faq.csv has no column named text
    assert skip.file.endswith("faq.csv") and "--csv-text-column" in skip.reason and "Answer" in skip.reason


def test_a_folder_gives_the_same_ids_however_it_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "mydocs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("Alpha notes.", "utf-8")
    (folder / "sub" / "b.md").write_text("# Bravo\nBravo notes.", "utf-8")
    (folder / "sub" / "c.pdf").write_bytes(make_pdf(PAGES[:1]))
    (folder / "rows.jsonl").write_text(json.dumps({"id": "own-id", "text": "Kept."}) + "\n", "utf-8")
    (folder / "table.csv").write_text("text\nCharlie row.\n", "utf-8")
    monkeypatch.chdir(tmp_path)
    relative = [d.id for d in read_corpus([Path("mydocs")])]
    absolute = [d.id for d in read_corpus([folder.resolve()])]
    monkeypatch.chdir(folder)
    here = [d.id for d in read_corpus([Path(".")])]
    assert relative == absolute == here == ["a.txt", "own-id", "sub/b.md", "sub/c.pdf", "table.csv#1"]
    assert [d.id for d in read_corpus([Path("sub/b.md"), folder / "a.txt"])] == ["b.md", "a.txt"]  # a file: its name
    assert os.getcwd() == str(folder)


def test_every_skipped_file_is_reported_and_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus_dir = tmp_path / "corpus"
    (corpus_dir / ".git").mkdir(parents=True)
    (corpus_dir / ".git" / "config").write_text("[core]", "utf-8")
    (corpus_dir / "photo.png").write_bytes(b"\x89PNG\r\n")
    (corpus_dir / "empty.txt").write_bytes(b"")
    (corpus_dir / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (corpus_dir / "blank.md").write_text("  \n\n", "utf-8")
    (corpus_dir / "good.md").write_text("# Kettle rules\nThe kettle in room 4 is descaled on Fridays.", "utf-8")
    (corpus_dir / "guide.pdf").write_bytes(make_pdf(PAGES))
    seen: list[Skipped] = []
    corpus = read_corpus([corpus_dir], on_skip=seen.append)
    assert [d.id for d in corpus] == ["good.md", "guide.pdf"]
    reasons = {Path(s.file).name: s.reason for s in corpus.skipped}
    assert reasons == {
        ".git": "a hidden folder (not read)",
        "blank.md": "no text in it",
        "empty.txt": "an empty file",
        "latin1.txt": "not UTF-8 text (byte 3 is not)",
        "photo.png": "unsupported file type .png",
    }
    assert seen == corpus.skipped and corpus.totals() == {"files": 5, "documents": 2, "skipped": 5}

    out = tmp_path / "idx"
    assert main(["index", "build", "--input", str(corpus_dir), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr()
    report = json.loads(printed.out)
    assert report["skipped"] == 5 and report["counts"]["documents"] == 2
    assert f"skipped {corpus_dir / 'photo.png'}: unsupported file type .png" in printed.err.splitlines()
    assert sum(line.startswith("skipped ") for line in printed.err.splitlines()) == 5


def test_index_build_maps_csv_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "faq.csv"
    table.write_text("Ref,Question,Answer\nk1,Where are the keys?,In the blue box by the door.\n", "utf-8")
    out = tmp_path / "idx"
    args = ["index", "build", "--input", str(table), "--out", str(out), "--no-progress"]
    mapping = ["--csv-id-column", "Ref", "--csv-title-column", "Question", "--csv-text-column", "Answer"]
    assert main([*args, *mapping]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"]["documents"] == 1 and report["skipped"] == 0
    assert main([*args[:-2], str(tmp_path / "idx2"), "--no-progress"]) == 2  # no text column: nothing to index
    assert "skipped" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="the Ray build needs Ray Data")
def test_a_ray_build_reads_the_new_formats_and_reports_their_skips(tmp_path: Path, encoder: Encoder) -> None:
    import ray

    from indexer.ray_build import RayBuildConfig, build_artifact_ray
    from tests.defaults import SETTINGS

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "ferry.pdf").write_bytes(make_pdf(PAGES))
    (corpus / "reservoir.html").write_text(make_html(ARTICLE), "utf-8")
    (corpus / "faq.csv").write_text("id,text\nq1,Keys are in the blue box.\nq2,\n", "utf-8")
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.4 nothing")
    (corpus / "photo.png").write_bytes(b"\x89PNG")
    config = build(chunking=ChunkingConfig(32, 4))
    local: list[Skipped] = []
    build_artifact(read_corpus([corpus], on_skip=local.append), tmp_path / "local", encoder, config, progress=False)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    try:
        distributed: list[Skipped] = []
        ray_config = RayBuildConfig.of(config, SETTINGS)
        build_artifact_ray([corpus], tmp_path / "ray", encoder, ray_config, False, None, distributed.append)
    finally:
        if started:
            ray.shutdown()
    assert sorted(distributed, key=str) == sorted(local, key=str) and len(local) == 3
    rows = [[c for b in Docstore(tmp_path / v / "docstore.sqlite").scan() for c in b] for v in ("local", "ray")]
    assert rows[0] == rows[1]
    assert {c.doc_id for c in rows[1]} == {"ferry.pdf", "reservoir.html", "q1"}
    assert all(c.metadata["page"] == c.metadata["pages"][0] for c in rows[1] if c.doc_id == "ferry.pdf")
