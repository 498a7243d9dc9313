"""Where a model runs (`auto`: CUDA when torch sees a GPU) and in which number format (`auto`: bf16
where the hardware multiplies bf16 natively)."""

import functools
from pathlib import Path

from ragserve.errors import InvalidInputError
from ragserve.types import Precision


@functools.cache
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def native_bf16(device: str) -> bool:
    """Whether bf16 matrix products run natively (faster than fp32) on `device`: on a CPU, AMX or
    AVX512-BF16 (docs/performance.md, *Generator precision*)."""
    import torch  # only a process that runs models asks

    if device.startswith("cuda"):
        return bool(torch.cuda.is_bf16_supported())
    return device == "cpu" and (torch.cpu._is_amx_tile_supported() or "avx512_bf16" in _cpu_flags())


def resolve_precision(precision: Precision | str, device: str) -> Precision:
    """The number format a model runs in on `device`. fp16 is refused off CUDA: CPUs have no fast
    fp16 matrix products (torch would emulate them, slower than fp32), so asking for it there is a
    configuration mistake, not a wish to honour."""
    precision = Precision(precision)
    if precision is Precision.AUTO:
        return Precision.BF16 if native_bf16(device) else Precision.FP32
    if precision is Precision.FP16 and not device.startswith("cuda"):
        raise InvalidInputError(f"precision fp16 runs only on a CUDA device, not on {device!r}: use fp32, bf16 or auto")
    return precision


def resolve_device(device: str | None, role: str) -> str:
    """`auto` (or None): CUDA when torch sees a GPU, else the CPU; `cuda[:n]` without one is refused.
    `role` names the model in the message (the retriever, the generator)."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInputError(f"{role} device {device!r}: torch sees no CUDA GPU (use auto or cpu)")
    return device
