"""The `ragserve` command line, run in-process (and once as a real server process)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ragserve.precision import resolve_precision
from reader.generator import Generator
from retriever.artifact import read_manifest
from service.cli import main


def test_index_build_and_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.md").write_text("# Kettle rules\nThe kettle in room 4 must be descaled every Friday.", "utf-8")
    (corpus / "b.jsonl").write_text(json.dumps({"id": "b", "text": "Bikes are parked in the yard."}) + "\n", "utf-8")
    out = tmp_path / "idx"
    assert main(["index", "build", "--input", str(corpus), "--out", str(out), "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"]["documents"] == 2 and report["counts"]["chunks"] == 2
    assert report["chunks_per_second"] > 0 and report["index_factory"] == "Flat"
    assert main(["index", "verify", str(out)]) == 0
    assert "4 files verified" in capsys.readouterr().out
    assert read_manifest(out).embedding_precision == resolve_precision("auto", "cpu")  # the default
    bf16 = tmp_path / "idx-bf16"
    args = ["index", "build", "--input", str(corpus), "--out", str(bf16), "--precision", "bf16", "--no-progress"]
    assert main(args) == 0
    assert read_manifest(bf16).embedding_precision == "bf16"


def test_cli_errors_are_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n", "utf-8")
    assert main(["index", "build", "--input", str(bad), "--out", str(tmp_path / "idx"), "--no-progress"]) == 2
    assert "bad.jsonl:1: invalid JSON" in capsys.readouterr().err
    assert not (tmp_path / "idx").exists()
    assert main(["index", "build", "--input", str(bad), "--out", str(tmp_path / "x"), "--chunk-tokens", "5"]) == 2
    assert "invalid configuration" in capsys.readouterr().err


def test_eval_squad_reports_recall_and_answer_scores(
    tmp_path: Path, generator: Generator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx_a = "The Harrow bridge over the river Tessel was built in 1871 by the engineer Tomas Brell."
    ctx_b = "Velt cheese is ripened for nine months in limestone caves near Oskar Hollow."
    rows = [
        ("q1", "Bridges", ctx_a, "Who built the Harrow bridge?", "Tomas Brell", 62),
        ("q2", "Bridges", ctx_a, "When was the Harrow bridge built?", "1871", 46),
        ("q3", "Cheese", ctx_b, "How long is Velt cheese ripened?", "nine months", 30),
    ]
    table = pa.table(
        {
            "id": [r[0] for r in rows],
            "title": [r[1] for r in rows],
            "context": [r[2] for r in rows],
            "question": [r[3] for r in rows],
            "answers": [{"text": [r[4]], "answer_start": [r[5]]} for r in rows],
        }
    )
    data = tmp_path / "squad.parquet"
    pq.write_table(table, data)
    monkeypatch.setenv("RAGSERVE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAGSERVE_GENERATOR_MODEL", str(generator.path))  # the converted copy: no re-conversion
    out = tmp_path / "report.json"
    readers = "stuff,rag-token,rag-sequence,fusion"
    assert main(["eval", "squad", "--data", str(data), "--reader", readers, "--out", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert {"recall@1", "recall@5", "recall@20", "exact_match", "f1", "questions_per_second", "settings"} <= set(report)
    assert report["recall@1"] == 1.0 and report["questions"] == 3
    assert 0 < report["exact_match"] <= report["f1"] <= 1  # the 135M generator gets "1871" right
    assert report["settings"]["paragraphs"] == 2 and report["settings"]["readers"] == readers.split(",")
    assert list(report["readers"]) == readers.split(",")  # the same retrieved passages, every reader
    assert report["readers"]["stuff"]["exact_match"] == report["exact_match"]  # top level: the first reader
    assert all(0 <= r["exact_match"] <= r["f1"] <= 1 and r["p50_latency_ms"] > 0 for r in report["readers"].values())
    # the artifact is reused by a second run, and --retrieval-only skips the reader
    assert main(["eval", "squad", "--data", str(data), "--retrieval-only", "--limit", "2", "--no-progress"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["exact_match"] is None and again["questions"] == 2
    assert again["settings"]["index"] == report["settings"]["index"]
    # readers given each question's own paragraph, answers copied from it
    assert main(["eval", "squad", "--data", str(data), "--passages", "gold", "--extractive", "--no-progress"]) == 0
    copied = json.loads(capsys.readouterr().out)
    assert copied["settings"]["passages"] == "gold" and copied["settings"]["extractive"] is True
    assert copied["exact_match"] > 0  # "1871" at least, now copied from the gold paragraph


def test_serve_runs_a_real_server(tiny_index: Path, cache_home: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "RAGSERVE_HOME": str(cache_home),
        "HF_HUB_OFFLINE": "1",
        "RAGSERVE_REGISTRY_DIR": str(tmp_path),
        "RAGSERVE_ADAPTERS_DIR": str(tmp_path / "adapters"),  # only the bundled adapters
        # The answer checked below is fp32's (docs/performance.md, Generator precision).
        "RAGSERVE_GENERATOR_PRECISION": "fp32",
    }
    cmd = [sys.executable, "-m", "service.cli", "--log-level", "warning", "serve", "--index", str(tiny_index)]
    server = subprocess.Popen([*cmd, "--port", str(port)], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert server.poll() is None, "server exited"
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        # (The base model answers "What is ripened in limestone caves?" with "Velt cheese", the
        # default adapter with "nine months": a wrong span of the right passage.)
        body = json.dumps({"question": "Who built the Harrow bridge?"}).encode()
        request = urllib.request.Request(base + "/v1/ask", body, {"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            answer = json.loads(r.read())
        assert answer["citations"][0]["doc_id"] == "bridge"
        assert answer["adapter"] == "squad-lora"  # the bundled adapter answers by default
        assert "Tomas Brell" in answer["answer"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_serve_refuses_a_missing_index_before_listening(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--index", str(tmp_path / "nowhere"), "--port", "1"]) == 2
    assert "not an index artifact" in capsys.readouterr().err


def test_index_build_into_the_registry_adds_a_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from retriever.registry import IndexRegistry

    monkeypatch.setenv("RAGSERVE_REGISTRY_DIR", str(tmp_path / "registry"))
    corpus = tmp_path / "notes.txt"
    corpus.write_text("The vending machine on floor 2 only takes coins.", "utf-8")
    assert main(["index", "build", "--input", str(corpus), "--registry", "notes", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    registry = IndexRegistry(tmp_path / "registry", "notes")
    assert registry.version_ids() == [report["version"]]
    assert registry.serving() is None  # adding a version does not switch to it
    assert main(["index", "build", "--input", str(corpus), "--registry", "../bad", "--no-progress"]) == 2
