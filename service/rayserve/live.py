"""The settings a Serve `user_config` changes on running replicas, in place (no restart).

Only what really changes behaviour live is here. Everything else is built into objects when the
app starts (the request models carry the size limits, the readers their configuration, the
admission middleware its deadline and refusal delay) and changes through the application's
`args` or `runtime_env` (RAGSERVE_* variables), which Serve rolls out by replacing replicas.

| key | what changes, at once, on every replica |
|---|---|
| `log_level` | the level of ragserve's own loggers: debug, info, warning, error; null: Ray's level |
| `default_reader` | the reader of /v1/ask requests that name none (a reader this server runs) |
| `adapter` | the default reader adapter: a loaded name, `none` (the base model), `auto` (the bundled one) |
| `ask_max_queue`, `retrieve_max_queue` | requests that may wait for admission before a 429 |
| `ask_max_in_service`, `retrieve_max_in_service` | requests answered at once (a higher limit admits waiting ones now) |

Serve's own `max_ongoing_requests` per replica stays what the start-up limits made it.

The `user_config` is declarative: a key it leaves out takes the replica's start value (its
settings), so removing a key undoes it.

Nothing here imports Ray: the values are checked the same way before a deploy and in a replica.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from ragserve.errors import InvalidInputError
from service.application.adapters import AUTO, BUNDLED_DEFAULT, NO_ADAPTER
from service.http.state import ServiceState
from service.settings import Settings

LOGGERS = ("ragserve", "indexer", "retriever", "reader", "service")  # the project's packages
QUEUES = {"ask_max_queue": "/v1/ask", "retrieve_max_queue": "/v1/retrieve"}  # key -> admission gate
IN_SERVICE = {"ask_max_in_service": "/v1/ask", "retrieve_max_in_service": "/v1/retrieve"}
SETTINGS_KEYS = ("default_reader", "adapter", *QUEUES, *IN_SERVICE)
LIVE_KEYS = ("log_level", *SETTINGS_KEYS)
LogLevel = Literal["debug", "info", "warning", "error"]


class LiveConfigError(InvalidInputError):
    """A user_config that names a setting that is not live, or a value it refuses."""


def _fields() -> dict[str, Any]:
    """The live settings with the types and bounds of service/settings.py (one place for both)."""
    fields: dict[str, Any] = {"log_level": (LogLevel | None, None)}
    for name in SETTINGS_KEYS:
        info = Settings.model_fields[name]
        fields[name] = (info.annotation, info)
    return fields


LiveConfig: type[BaseModel] = create_model("LiveConfig", __config__=ConfigDict(extra="forbid"), **_fields())


def validate_live(config: object) -> dict[str, Any]:
    """The keys `config` sets, checked; LiveConfigError names what is wrong."""
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise LiveConfigError(f"user_config must be a mapping of live settings ({', '.join(LIVE_KEYS)})")
    unknown = sorted(str(key) for key in config if key not in LIVE_KEYS)
    if unknown:
        raise LiveConfigError(
            f"user_config: {', '.join(unknown)} cannot change on running replicas (live: {', '.join(LIVE_KEYS)}); "
            "set other settings in the application's args or its runtime_env (RAGSERVE_*), and Serve replaces "
            "the replicas"
        )
    try:
        values = LiveConfig.model_validate(dict(config))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise LiveConfigError(f"user_config: {problems}") from None
    return values.model_dump(exclude_unset=True)


def start_values(settings: Settings) -> dict[str, Any]:
    """What each live setting is when the user_config does not say."""
    return {"log_level": None, **{name: getattr(settings, name) for name in SETTINGS_KEYS}}


def apply_live(state: ServiceState, config: object) -> dict[str, Any]:
    """Make the replica's live settings what `config` says (its start values where it is silent);
    all or nothing: every value is checked before any changes. Returns the values in effect."""
    values = {**start_values(state.settings), **validate_live(config)}
    if state.services is None:
        raise LiveConfigError("the replica has not loaded its models and index yet")
    engine = state.services.engine
    try:
        engine.reader(values["default_reader"])  # raises for a reader this server does not run
    except InvalidInputError as exc:
        raise LiveConfigError(f"user_config: default_reader: {exc}") from None
    adapter = values["adapter"]
    loaded = engine.adapters.names() if engine.adapters is not None else []
    if adapter == AUTO:
        adapter = BUNDLED_DEFAULT if BUNDLED_DEFAULT in loaded else NO_ADAPTER
    if adapter != NO_ADAPTER and adapter not in loaded:
        raise LiveConfigError(f"user_config: adapter {adapter!r} is not loaded (loaded: {', '.join(loaded) or 'none'})")

    level = values["log_level"]
    for name in LOGGERS:
        logging.getLogger(name).setLevel(level.upper() if level else logging.NOTSET)
    engine.default_reader = values["default_reader"]
    if engine.adapters is not None:
        engine.adapters.set_default(adapter)
    for key, path in QUEUES.items():
        if path in state.gates:
            state.gates[path].queue = values[key]
    for key, path in IN_SERVICE.items():
        if path in state.gates:
            state.gates[path].resize(values[key])
    return values
