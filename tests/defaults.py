"""Component configurations as the default settings make them: tests build readers, builds and
searches from service/settings.py, the one place their defaults live."""

from typing import Any

from reader.base import ReaderConfig
from service.application.loading import build_config, job_policy, reader_config, search_config
from service.settings import Settings

SETTINGS = Settings()
SEARCH = search_config(SETTINGS)
BUILD = build_config(SETTINGS)
JOBS = job_policy(SETTINGS)


def readers(**overrides: Any) -> ReaderConfig:
    """The reader configuration of the default settings, with `overrides`."""
    return reader_config(SETTINGS, **overrides)


def build(**overrides: Any) -> Any:
    """The build configuration of the default settings, with `overrides`."""
    return build_config(SETTINGS, **overrides)
