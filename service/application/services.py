"""What the loader (service/application/loading.py) hands the HTTP app once models and index are in."""

from dataclasses import dataclass

from service.application.engine import QAEngine
from service.application.indexes import IndexManager
from service.application.jobs import Jobs


@dataclass(frozen=True, slots=True)
class Services:
    engine: QAEngine
    indexes: IndexManager
    jobs: Jobs
