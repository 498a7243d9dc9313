"""Which number format a model runs in: `auto` is bf16 where the hardware multiplies bf16 natively."""

import torch

from retriever.types import Precision


def native_bf16(device: str) -> bool:
    """Whether bf16 matrix products run natively (faster than fp32) on `device`: AMX on a CPU."""
    if device.startswith("cuda"):
        return bool(torch.cuda.is_bf16_supported())
    return device == "cpu" and torch.cpu._is_amx_tile_supported()


def resolve_precision(precision: Precision | str, device: str) -> Precision:
    precision = Precision(precision)
    if precision is Precision.AUTO:
        return Precision.BF16 if native_bf16(device) else Precision.FP32
    return precision
