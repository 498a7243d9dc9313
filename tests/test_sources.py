import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from indexer.sources import read_corpus
from ragserve.errors import InvalidInputError


def test_reads_jsonl_text_markdown_and_parquet(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"id": "j1", "title": "J", "text": "json text", "metadata": {"lang": "en"}})
        + "\n\n"
        + json.dumps({"id": 2, "text": "no title"})
        + "\n",
        encoding="utf-8",
    )
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "b.txt").write_text("plain text", encoding="utf-8")
    (tmp_path / "notes" / "c.md").write_text("intro\n# Heading Title\nbody", encoding="utf-8")
    (tmp_path / "notes" / "ignored.bin").write_bytes(b"\x00")
    pq.write_table(pa.table({"id": ["p1"], "title": ["P"], "text": ["parquet text"]}), tmp_path / "d.parquet")

    corpus = read_corpus([tmp_path])
    docs = {d.id: d for d in corpus}
    assert [(s.file, s.reason) for s in corpus.skipped] == [
        (str(tmp_path / "notes" / "ignored.bin"), "unsupported file type .bin")
    ]
    assert docs["notes/b.txt"].metadata == {"source": "notes/b.txt"}  # ids relative to the folder given
    assert docs["j1"].metadata == {"lang": "en"} and docs["j1"].title == "J"
    assert docs["2"].title == "" and docs["2"].text == "no title"
    assert docs["p1"].text == "parquet text"
    md = next(d for d in docs.values() if d.id.endswith("c.md"))
    assert md.title == "Heading Title"
    assert sorted(docs) == sorted(["j1", "2", "p1", md.id, next(i for i in docs if i.endswith("b.txt"))])


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "invalid JSON"),
        ('{"text": "no id"}', "'id'"),
        ('{"id": "x", "text": 5}', "'text'"),
        ('{"id": "x", "text": "t", "metadata": []}', "metadata"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_bad_jsonl_lines_name_file_line_and_problem(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "ok", "text": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=message) as err:
        list(read_corpus([path]))
    assert "bad.jsonl:2" in str(err.value)


def test_duplicate_ids_and_missing_paths_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', encoding="utf-8")
    with pytest.raises(InvalidInputError, match="duplicate"):
        list(read_corpus([path]))
    with pytest.raises(InvalidInputError, match="no such file"):
        list(read_corpus([tmp_path / "missing.jsonl"]))
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    with pytest.raises(InvalidInputError, match="unsupported"):  # a file argument: refused before reading
        read_corpus([tmp_path / "x.png"])
