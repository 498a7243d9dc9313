from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_defaults_are_safe_and_documented() -> None:
    s = Settings()
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert s.index_path is None  # the demo index
    assert s.ask_top_k <= s.max_ask_top_k and s.retrieve_top_k <= s.max_retrieve_top_k


def test_environment_variables_configure_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAGSERVE_MAX_ASK_TOP_K", "4")
    monkeypatch.setenv("RAGSERVE_INDEX_PATH", str(tmp_path))
    s = Settings()
    assert s.max_ask_top_k == 4 and s.index_path == tmp_path


@pytest.mark.parametrize(
    "bad",
    [
        {"overlap_tokens": 200, "chunk_tokens": 200},
        {"retrieve_top_k": 60, "max_retrieve_top_k": 50},
        {"ask_top_k": 9},
        {"max_ask_top_k": 1000},
        {"max_body_bytes": 10**9},
        {"torch_threads": 0},
        {"torch_threads": 10_000},
        {"port": 70_000},
        {"max_new_tokens": 100_000},
        {"no_such_setting": 1},
    ],
)
def test_unsafe_or_contradictory_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(**bad)


def test_admin_endpoints_are_not_exposed_beyond_loopback_without_a_token() -> None:
    with pytest.raises(ValidationError, match="not a loopback address"):
        Settings(host="0.0.0.0")
    assert Settings(host="0.0.0.0", admin_token_sha256=["a" * 64]).host == "0.0.0.0"
    assert Settings(host="::1").host == "::1" and Settings(host="localhost").host == "localhost"
