"""Reader adapters while serving: which are loaded, which one answers by default, and swapping them.

Adapters are folders (reader/adapters.py): the ones bundled with ragserve, and those in the
adapter directory (setting `adapters_dir`, default `<home>/adapters/<name>/`; a folder there
overrides a bundled one of the same name). At start every one that fits the generator is loaded;
one that does not is skipped with a log line (the configured default must load, or start-up
fails). At run time the admin API loads an adapter from a folder (copied into the directory, so
it is there after a restart), replaces one, unloads one, or changes the default.

Requests never lock: they read the current mapping of names to adapters, which a change replaces
whole (one reference assignment). A request that resolved an adapter keeps it to the end, so a
swap never mixes two adapters' weights in one answer. Changes are serialized by their own lock.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from ragserve.atomic import clean_stale, copy_confined, staged_directory
from ragserve.errors import InvalidAdapterError, InvalidInputError, UnknownAdapterError

if TYPE_CHECKING:
    from reader.adapters import Adapter

log = logging.getLogger(__name__)

NO_ADAPTER = "none"  # asks for the base model alone
AUTO = "auto"  # the default setting: the bundled adapter, if it fits the generator
BUNDLED_DEFAULT = "squad-lora"
ADAPTER_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
BUNDLED_DIR = Path(str(files("reader").joinpath("data", "adapters")))

LoadFn = Callable[[Path, str], "Adapter"]


def bundled_adapters() -> dict[str, Path]:
    if not BUNDLED_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(BUNDLED_DIR.iterdir()) if (p / "adapter_config.json").is_file()}


def check_name(name: str) -> str:
    if not ADAPTER_NAME.fullmatch(name) or name in (NO_ADAPTER, AUTO):
        raise InvalidInputError(
            f"invalid adapter name {name!r}: lower-case letters, digits, '.', '_' and '-', at most 64, "
            f"and not {NO_ADAPTER!r} or {AUTO!r}"
        )
    return name


def adapter_folder(directory: Path, name_or_path: str) -> tuple[str, Path]:
    """(name, folder) for an adapter name (in `directory`, else bundled) or a folder path: for the
    command line, whose user names files on their own machine. HTTP requests name adapters only
    (`named_folder`)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return check_name(re.sub(r"[^a-z0-9_.-]", "-", path.name.lower()).lstrip("-._") or "adapter"), path
    return check_name(name_or_path), named_folder(directory, name_or_path)


def named_folder(directory: Path, name: str) -> Path:
    """The folder of adapter `name`: in `directory`, else bundled. A name is never a path."""
    check_name(name)
    if (directory / name).is_dir():
        return directory / name
    if name in (bundled := bundled_adapters()):
        return bundled[name]
    raise UnknownAdapterError(f"no adapter {name!r} in {directory} nor bundled ({', '.join(bundled) or 'none'})")


@dataclass(frozen=True, slots=True)
class AdapterInfo:
    name: str
    method: str
    parameters: int
    source: str  # "bundled", "directory", or "folder" (attached where it is, for one process)
    path: str
    loaded_at: str
    default: bool


@dataclass(frozen=True, slots=True)
class _Loaded:
    adapter: Adapter
    source: str
    loaded_at: str


class AdapterManager:
    def __init__(self, directory: Path, load: LoadFn, default: str = AUTO) -> None:
        self.directory = directory
        self._load = load
        self._loaded: dict[str, _Loaded] = {}  # replaced whole, never mutated
        self._default: str | None = None
        self._change = threading.Lock()
        self.skipped: dict[str, str] = {}  # adapters found at start that did not load, and why
        self._start(default)

    def _start(self, default: str) -> None:
        found = {name: (path, "bundled") for name, path in bundled_adapters().items()}
        if self.directory.is_dir():
            for path in sorted(self.directory.iterdir()):
                if (path / "adapter_config.json").is_file() and ADAPTER_NAME.fullmatch(path.name):
                    found[path.name] = (path, "directory")
        loaded: dict[str, _Loaded] = {}
        for name, (path, source) in found.items():
            try:
                loaded[name] = _Loaded(self._load(path, name), source, _now())
            except InvalidInputError as exc:
                log.warning("adapter %s (%s) not loaded: %s", name, path, exc)
                self.skipped[name] = str(exc)
        self._loaded = loaded
        if default == AUTO:
            self._default = BUNDLED_DEFAULT if BUNDLED_DEFAULT in loaded else None
        elif default != NO_ADAPTER:
            if default not in loaded:
                why = self.skipped.get(default, f"no such adapter in {self.directory} nor bundled")
                raise InvalidAdapterError(f"the configured default adapter {default!r} cannot be served: {why}")
            self._default = default
        log.info("adapters loaded: %s; default: %s", ", ".join(loaded) or "none", self._default or NO_ADAPTER)

    @property
    def default(self) -> str | None:
        return self._default

    def names(self) -> list[str]:
        return sorted(self._loaded)

    def resolve(self, name: str | None) -> Adapter | None:
        """The adapter a request asks for: None = the default, "none" = no adapter."""
        name = self._default if name is None else name
        if name is None or name == NO_ADAPTER:
            return None
        loaded = self._loaded.get(name)
        if loaded is None:
            raise UnknownAdapterError(
                f"unknown adapter {name!r}; loaded: {', '.join(self._loaded) or 'none'} (or {NO_ADAPTER!r})"
            )
        return loaded.adapter

    def attach(self, name: str, folder: Path) -> str:
        """Load the adapter in `folder` where it is, under `name`, for this process only: nothing is
        copied into the directory (evaluation, benchmarks). Returns the name to ask for."""
        adapter = self._load(folder, check_name(name))
        with self._change:
            self._loaded = {**self._loaded, name: _Loaded(adapter, "folder", _now())}
        return name

    def describe(self) -> list[AdapterInfo]:
        loaded, default = self._loaded, self._default
        return [
            AdapterInfo(
                name=name,
                method=item.adapter.method,
                parameters=item.adapter.parameters,
                source=item.source,
                path=str(item.adapter.path),
                loaded_at=item.loaded_at,
                default=name == default,
            )
            for name, item in sorted(loaded.items())
        ]

    def load(self, name: str, source: Path | None = None) -> tuple[AdapterInfo, bool]:
        """Load (or load again) adapter `name`: from `source`, which is first copied into the
        directory (replacing the folder of that name), else from the directory or the bundled
        ones. Returns its description and whether it replaced a loaded adapter."""
        check_name(name)
        with self._change:
            if source is not None:
                folder = self._import(name, source)
                kind = "directory"
            else:
                folder = named_folder(self.directory, name)
                kind = "directory" if folder.parent == self.directory else "bundled"
            adapter = self._load(folder, name)
            replaced = name in self._loaded
            self._loaded = {**self._loaded, name: _Loaded(adapter, kind, _now())}
            self.skipped.pop(name, None)
        log.info("adapter %s loaded from %s%s", name, folder, " (replacing the one loaded)" if replaced else "")
        return next(i for i in self.describe() if i.name == name), replaced

    def _import(self, name: str, source: Path) -> Path:
        """Copy `source` (an absolute path; links and anything outside it refused) into the
        directory as `name`, replacing the folder there only once the copy loads."""
        if not source.is_absolute():
            raise InvalidInputError(f"adapter folder {str(source)!r} must be an absolute path on the server")
        if not (source / "adapter_config.json").is_file():
            raise InvalidAdapterError(f"{source}: not an adapter folder (no adapter_config.json)")
        target = self.directory / name
        clean_stale(target)
        try:
            with staged_directory(target, replace=True) as staging:
                copy_confined(source, staging)
                self._load(staging, name)  # refuse what does not fit before it replaces anything
        except ValueError as exc:
            raise InvalidAdapterError(str(exc)) from None
        return target

    def unload(self, name: str) -> AdapterInfo:
        """Stop serving `name` and delete its folder from the directory (a bundled adapter comes
        back at the next start). Requests already decoding with it finish with it."""
        with self._change:
            if name not in self._loaded:
                raise UnknownAdapterError(f"adapter {name!r} is not loaded")
            if name == self._default:
                raise InvalidInputError(
                    f"adapter {name!r} is the default; make another one (or none) the default first"
                )
            info = next(i for i in self.describe() if i.name == name)
            self._loaded = {k: v for k, v in self._loaded.items() if k != name}
            if info.source == "directory":
                shutil.rmtree(self.directory / name, ignore_errors=True)
        return info

    def set_default(self, name: str) -> str | None:
        """Make `name` ("none": no adapter) the default until the next start; returns the previous."""
        with self._change:
            if name != NO_ADAPTER and name not in self._loaded:
                raise UnknownAdapterError(f"adapter {name!r} is not loaded")
            previous, self._default = self._default, None if name == NO_ADAPTER else name
        return previous


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
