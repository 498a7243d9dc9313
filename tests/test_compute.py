"""The compute thread: every forward pass runs on one OS thread, with the caller's modes."""

import threading

import pytest
import torch

from ragserve.compute import on_compute_thread, use_compute_thread
from retriever.encoder import Encoder


@on_compute_thread
def where_and_modes() -> tuple[str, bool, bool]:
    return threading.current_thread().name, torch.is_grad_enabled(), torch.is_inference_mode_enabled()


@on_compute_thread
def nested() -> str:
    return where_and_modes()[0]  # a call from the compute thread itself runs directly, no deadlock


@on_compute_thread
def fails() -> None:
    raise ValueError("boom")


def test_calls_run_on_the_compute_thread_in_the_callers_modes() -> None:
    use_compute_thread()  # a server's start-up does this (service/application/loading.py)
    assert where_and_modes() == ("torch-compute", True, False)
    with torch.no_grad():
        assert where_and_modes() == ("torch-compute", False, False)
    with torch.inference_mode():
        assert where_and_modes() == ("torch-compute", False, True)
    assert nested() == "torch-compute"
    assert use_compute_thread() is use_compute_thread()  # one per process


def test_an_exception_reaches_the_caller_and_the_thread_goes_on() -> None:
    use_compute_thread()
    with pytest.raises(ValueError, match="boom"):
        fails()
    assert where_and_modes()[0] == "torch-compute"


def test_encoder_passes_from_several_threads_all_run_on_it(encoder: Encoder, monkeypatch: pytest.MonkeyPatch) -> None:
    use_compute_thread()
    assert encoder._lean is not None  # MiniLM runs through the lean forward pass
    seen: list[str] = []
    embed = encoder._lean.embed

    def spy(*args: torch.Tensor) -> torch.Tensor:
        seen.append(threading.current_thread().name)
        return embed(*args)

    monkeypatch.setattr(encoder._lean, "embed", spy)
    callers = [threading.Thread(target=encoder.encode_queries, args=([f"query {i}"],)) for i in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    encoder.encode_queries(["and one from the test's own thread"])
    assert seen == ["torch-compute"] * 5
