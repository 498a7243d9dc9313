"""The command line's paper cuts (issue 20, item 6), each as it was met: settings errors named by
their field, a missing input found after the models loaded, a token command that made the wrong
token by default, a start that did not say what it served, and faiss's loader noise."""

import io
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from retriever.artifact import read_manifest
from retriever.encoder import Encoder
from service.application.loading import load_indexes, serving_summary
from service.cli import main
from service.settings import Settings
from tests.live import LiveServer

ROOT = Path(__file__).resolve().parent.parent


def test_settings_errors_name_the_environment_variable_and_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("RAGSERVE_ADMIN_TOKEN_SHA256", "RAGSERVE_READ_TOKEN_SHA256"):
        monkeypatch.delenv(name, raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "RAGSERVE_ADMIN_TOKEN_SHA256" in err and "admin_token_sha256" not in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("RAGSERVE_PORT", "abc")
    monkeypatch.setenv("RAGSERVE_CHUNK_TOKENS", "5")
    assert main(["serve"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()  # one line per problem
    assert len(lines) == 2 and all(line.startswith("ragserve: invalid configuration: ") for line in lines)
    assert any("RAGSERVE_PORT (--port): " in line and "(got 'abc')" in line for line in lines)
    assert any("RAGSERVE_CHUNK_TOKENS: " in line for line in lines)  # `serve` has no --chunk-tokens
    monkeypatch.delenv("RAGSERVE_PORT")
    monkeypatch.delenv("RAGSERVE_CHUNK_TOKENS")
    assert main(["index", "build", "--input", str(ROOT), "--out", "/nonexistent/x", "--overlap-tokens", "300"]) == 2
    err = capsys.readouterr().err
    assert "RAGSERVE_OVERLAP_TOKENS (--overlap-tokens)" in err


def test_missing_inputs_fail_before_any_model_library_loads(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere")
    commands = [
        ["index", "build", "--input", missing, "--out", str(tmp_path / "idx")],
        ["eval", "squad", "--data", missing],
        ["train", "reader", "--data", missing, "--out", str(tmp_path / "adapter")],
        ["ingest", missing, "--url", "http://127.0.0.1:1"],
    ]
    code = (
        "import sys\nfrom service.cli import main\n"
        f"codes = [main(argv) for argv in {commands!r}]\n"
        "print(codes, sorted(m for m in ('torch', 'faiss', 'transformers') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[2, 2, 2, 2] []", done.stderr
    assert done.stderr.count(f"no such file or folder: {missing}") == 4


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_token_new_asks_or_needs_the_scope(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "new"]) == 2  # not at a terminal: --scope must say it
    err = capsys.readouterr().err
    assert "--scope" in err and "/v1/ask" in err and "/admin/*" in err and "/v1/documents" in err
    out = Terminal()
    monkeypatch.setattr(sys, "stdin", Terminal("write\nadmin\n"))  # a wrong answer, asked again
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["token", "new"]) == 0
    text = out.getvalue()
    assert text.count("scope of the new token") == 2 and "export RAGSERVE_ADMIN_TOKEN_SHA256=" in text
    assert "scope:  admin: " in text and "ingestion" in text


def test_start_up_says_what_serves_from_where(live_server: LiveServer) -> None:
    log = live_server.log.read_text(encoding="utf-8", errors="replace")
    found = re.search(r"serving index 'default' version (\S+) \((\d+) documents\) from registry (\S+);", log)
    assert found, log[-3000:]
    assert Path(found.group(3)).name == "default" and int(found.group(2)) > 0
    assert "to serve the bundled demo again: ragserve serve --demo" in log
    assert "Could not load library with AVX512" not in log  # faiss's loader, quiet at INFO


def test_serve_demo_serves_the_demo_again(tiny_index: Path, tmp_path: Path, encoder: Encoder) -> None:
    base: dict[str, Any] = {"home": tmp_path / "home", "registry_dir": tmp_path / "registry", "adapter": "none"}

    def served(**given: Any) -> tuple[str, str]:
        settings = Settings(**{**base, **given})
        serving = load_indexes(settings, encoder)
        try:
            return serving.indexes.serving_version, serving_summary(settings, serving)
        finally:
            serving.stop(5)

    tiny, documents = read_manifest(tiny_index).version, read_manifest(tiny_index).counts["documents"]
    version, summary = served(index_path=tiny_index)
    assert version == tiny and f"version {tiny} ({documents} documents) from registry " in summary
    version, summary = served()  # a plain start serves what served last: the registry is state
    assert version == tiny and "ragserve serve --demo" in summary
    demo, summary = served(demo=True)
    assert demo != tiny and summary.endswith("; the bundled demo")
    assert served()[0] == demo
    with pytest.raises(ValueError, match="give one"):
        Settings(**base, demo=True, index_path=tiny_index)
    with pytest.raises(SystemExit):
        main(["serve", "--demo", "--index", str(tiny_index)])


def test_faiss_loader_info_is_quiet_but_its_warnings_are_not() -> None:
    code = (
        "import logging\nfrom service.cli.main import configure_logging\nconfigure_logging('info')\n"
        "import faiss\nlogging.getLogger('faiss.loader').warning('a real warning')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "AVX512" not in done.stderr and "ModuleNotFoundError" not in done.stderr
    assert "WARNING faiss.loader: a real warning" in done.stderr
