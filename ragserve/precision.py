"""Which number format a model runs in: `auto` is bf16 where the hardware multiplies bf16 natively."""

import functools
from pathlib import Path

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
    precision = Precision(precision)
    if precision is Precision.AUTO:
        return Precision.BF16 if native_bf16(device) else Precision.FP32
    return precision
