"""What the loader (service/application/loading.py) hands the HTTP app once models and index are in."""

from dataclasses import dataclass

from service.application.edits import EditMemory
from service.application.engine import QAEngine
from service.application.indexes import IndexManager
from service.application.jobs import Jobs
from service.application.replicas import Replica
from service.application.store import Store


@dataclass(frozen=True, slots=True)
class Serving:
    """An index as this process serves it: versions and delta, job workers, this replica, the store."""

    indexes: IndexManager
    jobs: Jobs
    replica: Replica
    store: Store
    edits: EditMemory

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Listed as draining; the job workers stop at a batch boundary (within `timeout_s`); the
        jobs still held are handed back, the replica leaves the list, the store is closed.
        Whether the workers ended in time."""
        self.replica.drain()
        ended = self.jobs.stop(timeout_s)
        self.replica.stop()
        self.store.close()
        return ended


@dataclass(frozen=True, slots=True)
class Services:
    engine: QAEngine
    serving: Serving

    @property
    def indexes(self) -> IndexManager:
        return self.serving.indexes

    @property
    def jobs(self) -> Jobs:
        return self.serving.jobs

    @property
    def replica(self) -> Replica:
        return self.serving.replica
