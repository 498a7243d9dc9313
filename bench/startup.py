"""Time from `ragserve serve` to a 200 from /readyz: a first start on an empty cache (converts the
generator, builds the demo index) and a second start that reuses both.

    python -m bench.startup
"""

import os
import subprocess
import sys
import tempfile
import time

from bench.common import header
from bench.latency import free_port, wait_ready


def seconds_to_ready(home: str) -> float:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAGSERVE_HOME": home}
    cmd = [sys.executable, "-m", "service.cli", "--log-level", "warning", "serve", "--port", str(port)]
    started = time.perf_counter()
    server = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{port}", server)
        return time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    header("start-up time of `ragserve serve` on the bundled default")
    with tempfile.TemporaryDirectory() as home:
        first = seconds_to_ready(home)
        second = seconds_to_ready(home)
    print(f"first start, empty cache: {first:.1f} s to ready; second start: {second:.1f} s to ready")


if __name__ == "__main__":
    main()
