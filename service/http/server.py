"""Serving with uvicorn, with a drain that ends.

The port opens at once: models and the index load in the background (service/http/app.py) and
the model routes answer `503 not_ready` meanwhile, so an orchestrator sees a live process that
is not ready yet instead of a closed port.

On SIGTERM (or Ctrl-C) the server drains: /readyz turns 503 and new model work is refused with
503 at once (a load balancer moves traffic elsewhere); requests in flight get until
`shutdown_grace_s` after the signal to finish, then uvicorn closes the connections, the job
workers stop at a batch boundary with what is left of the grace, and the process exits 0. A
second signal exits at once.
"""

import asyncio
import logging
import signal
import time
from types import FrameType

import uvicorn

from service.http.app import create_app
from service.http.state import ServiceState
from service.settings import Settings

log = logging.getLogger(__name__)

LAST_SHARE = 0.2  # of the grace, kept for closing connections and stopping the job workers
POLL_S = 0.05


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServiceState) -> None:
        super().__init__(config)
        self.ragserve = state
        self._drain_task: asyncio.Future[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in uvicorn's captured signals: those are raised again after shutdown, and
        # a re-raised SIGTERM would end the process with 143 instead of 0.
        if self.ragserve.draining:
            log.warning("second signal: exiting now")
            self.should_exit = self.force_exit = True
            return
        grace = self.ragserve.settings.shutdown_grace_s
        log.info("signal %s: draining (at most %.1f s)", signal.Signals(sig).name, grace)
        self.ragserve.begin_drain(grace)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not serving yet: nothing to drain
            self.should_exit = True
            return
        loop.call_soon_threadsafe(self._start_drain, grace)

    def _start_drain(self, grace: float) -> None:
        self._drain_task = asyncio.ensure_future(self._drain(grace))  # held: a task nobody holds may vanish

    async def _drain(self, grace: float) -> None:
        """Wait for the model work in flight (at most most of the grace), then shut down."""
        started = time.monotonic()
        while self.ragserve.in_flight and time.monotonic() - started < grace * (1 - LAST_SHARE):
            await asyncio.sleep(POLL_S)
        left = max(0.0, grace - (time.monotonic() - started))
        self.config.timeout_graceful_shutdown = max(1, int(left * (1 - LAST_SHARE)))  # whole seconds
        self.should_exit = True


def serve(settings: Settings, log_level: str = "info") -> None:
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level)
    DrainingServer(config, app.state.ragserve).run()
