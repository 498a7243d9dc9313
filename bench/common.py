"""Shared bits of the benchmarks: the exact command line and the machine, printed with every figure."""

import os
import platform
import sys
import time
from pathlib import Path

# SQuAD v1.1 dev in ../shared beside the checkout (never part of the project).
SQUAD = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "squad-v1.1-dev.parquet"


def header(title: str) -> None:
    print(f"# {title}")
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(
        f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; cores: {os.cpu_count()}; "
        f"python {platform.python_version()}; {platform.machine()}"
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]
