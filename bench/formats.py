"""PDF and HTML ingestion throughput, in pages per second: reading and extraction alone
(indexer/sources.py `read_corpus`: pypdf, trafilatura), and end to end through the build that
`ragserve index build` runs (read + chunk + embed + FAISS + BM25 + docstore + seal).

    python -m bench.formats [--pdfs 20] [--pdf-pages 10] [--html 200] [--threads 2] [--seed 7]

The corpus is generated, from the sentences of the bundled demo corpus (indexer/data/*.jsonl),
sampled with a fixed seed: `--pdfs` PDFs written by fpdf2 (Helvetica 11 pt, `--pdf-pages` pages
of 22 sentences each; the pages counted are those pypdf reads back), and `--html` HTML pages of
8-16 sentences in an <article>, inside boilerplate: a head with a stylesheet and a script, a
navigation bar of 12 links, a sidebar of related links, a comment box and a footer (one page
each). A page of either format is about 400 words (PDF) or 250 (HTML).
"""

import argparse
import json
import random
import re
import tempfile
import time
from pathlib import Path

import torch
from fpdf import FPDF

from bench.common import header
from indexer.build import build_artifact
from indexer.sources import read_corpus
from service.application.loading import build_config, make_encoder
from service.settings import Settings

DEMO = Path(__file__).resolve().parents[1] / "indexer" / "data"
SENTENCES_PER_PDF_PAGE = 22


def sentences() -> list[str]:
    """Every sentence of the demo corpus, as Latin-1 (fpdf2's core fonts)."""
    found: list[str] = []
    for path in sorted(DEMO.glob("*.jsonl")):
        for line in path.read_text("utf-8").splitlines():
            record = json.loads(line)
            text = record.get("text") or record.get("question") or ""
            found += [s.strip() for s in re.split(r"(?<=[.?!])\s+", text) if len(s.strip()) > 20]
    return [s.encode("latin-1", "replace").decode("latin-1") for s in found]


def write_pdfs(folder: Path, rng: random.Random, pool: list[str], count: int, pages: int) -> None:
    for i in range(count):
        pdf = FPDF()
        pdf.set_font("Helvetica", size=11)
        pdf.set_title(f"Report {i}")
        for _ in range(pages):
            pdf.add_page()
            pdf.multi_cell(0, 5, " ".join(rng.choices(pool, k=SENTENCES_PER_PDF_PAGE)))
        pdf.output(str(folder / f"report-{i:04d}.pdf"))


def write_html(folder: Path, rng: random.Random, pool: list[str], count: int) -> None:
    nav = "".join(f'<li><a href="/section/{k}">Section {k}</a></li>' for k in range(12))
    for i in range(count):
        paragraphs = "".join(f"<p>{' '.join(rng.choices(pool, k=rng.randint(2, 4)))}</p>" for _ in range(4))
        related = "".join(f'<li><a href="/a/{rng.randrange(10**6)}">{rng.choice(pool)[:40]}</a></li>' for _ in range(6))
        page = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>Article {i} - The Demo Times</title>"
            "<link rel='stylesheet' href='/site.css'><style>body{font:14px sans-serif}</style>"
            "<script>window.analytics=[];function track(e){analytics.push(e)}</script></head><body>"
            f"<header><div class='logo'>The Demo Times</div><nav><ul>{nav}</ul></nav></header>"
            f"<div class='layout'><main><article><h1>Article {i}</h1>{paragraphs}</article>"
            "<section class='comments'><h3>Comments</h3><form><textarea></textarea><button>Post</button></form>"
            f"</section></main><aside><h3>Related</h3><ul>{related}</ul></aside></div>"
            "<footer><p>Copyright 2026 The Demo Times. All rights reserved.</p><a href='/privacy'>Privacy</a>"
            "<a href='/cookies'>Cookie settings</a></footer></body></html>"
        )
        (folder / f"article-{i:04d}.html").write_text(page, "utf-8")


def pages_of(folder: Path) -> tuple[int, float]:
    """(pages, seconds) of reading and extracting every file of `folder`."""
    started = time.perf_counter()
    docs = list(read_corpus([folder]))
    seconds = time.perf_counter() - started
    return sum(int(d.metadata.get("page_count", 1)) for d in docs), seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pdfs", type=int, default=20)
    ap.add_argument("--pdf-pages", type=int, default=10)
    ap.add_argument("--html", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the end-to-end build")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    header("PDF and HTML ingestion throughput")
    rng = random.Random(args.seed)
    pool = sentences()
    settings = Settings()
    encoder = make_encoder(settings)
    print(f"corpus: {args.pdfs} PDFs x {args.pdf_pages} pages, {args.html} HTML pages; {len(pool)} demo sentences")
    print("| format | files | pages | read+extract s | pages/s | index build s | pages/s | chunks |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, write in (
            ("pdf", lambda f: write_pdfs(f, rng, pool, args.pdfs, args.pdf_pages)),
            ("html", lambda f: write_html(f, rng, pool, args.html)),
        ):
            folder = root / name
            folder.mkdir()
            write(folder)
            files = len(list(folder.iterdir()))
            pages_of(folder)  # warm: parsers imported, files in the page cache
            pages, read_s = pages_of(folder)
            started = time.perf_counter()
            manifest = build_artifact(
                read_corpus([folder]), root / f"{name}-index", encoder, build_config(settings), progress=False
            )
            build_s = time.perf_counter() - started
            print(
                f"| {name} | {files} | {pages} | {read_s:.2f} | {pages / read_s:.1f} | {build_s:.2f} | "
                f"{pages / build_s:.1f} | {manifest.counts['chunks']} |"
            )


if __name__ == "__main__":
    main()
