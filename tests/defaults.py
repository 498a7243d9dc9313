"""Component configurations as the default settings make them: tests build readers, builds and
searches from service/settings.py, the one place their defaults live."""

from pathlib import Path
from typing import Any

from reader.base import ReaderConfig
from service.application.jobqueue import SqliteJobQueue
from service.application.loading import build_config, job_policy, reader_config, search_config
from service.settings import Settings

SETTINGS = Settings()
SEARCH = search_config(SETTINGS)
BUILD = build_config(SETTINGS)
JOBS = job_policy(SETTINGS)


def sqlite_queue(path: Path, **overrides: Any) -> SqliteJobQueue:
    """A job queue on a SQLite file as the default settings make it (owner "test")."""
    args = {"max_pending": SETTINGS.max_pending_jobs, "owner": "test", "lease_s": SETTINGS.replica_timeout_s}
    return SqliteJobQueue(path, **{**args, **overrides})


def readers(**overrides: Any) -> ReaderConfig:
    """The reader configuration of the default settings, with `overrides`."""
    return reader_config(SETTINGS, **overrides)


def build(**overrides: Any) -> Any:
    """The build configuration of the default settings, with `overrides`."""
    return build_config(SETTINGS, **overrides)
