"""A named index with immutable versions and a persisted pointer to the one that serves.

    <root>/<name>/versions/<version-id>/   artifacts, exactly as the indexer writes them
    <root>/<name>/serving.json              {"version": ..., "updated_at": ...}

The pointer changes atomically: written to a temporary file, fsynced, renamed over the old one,
and the directory fsynced, so a crash leaves either the old pointer or the new one. Version ids
are validated against their format before they come near the filesystem.
"""

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ragserve.atomic import STAGING_PREFIX, copy_confined, fsync_dir, publish, write_file
from ragserve.errors import ArtifactError, InvalidInputError, UnknownVersionError
from retriever.artifact import read_manifest, verify_artifact

VERSION_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
INDEX_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
POINTER = "serving.json"
LOCK = ".lock"
STALE_POINTER_SECONDS = 60


@contextlib.contextmanager
def _try_lock(path: Path) -> Iterator[bool]:
    """True when nobody holds the lock at `path` (or there is none): the directory is abandoned."""
    try:
        fh = path.open("a")
    except OSError:
        yield True
        return
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


@dataclass(frozen=True, slots=True)
class VersionInfo:
    version: str
    created_at: str
    documents: int
    chunks: int
    bytes: int
    serving: bool
    shards: int = 1


class IndexRegistry:
    def __init__(self, root: Path, name: str) -> None:
        if not INDEX_NAME.match(name):
            raise InvalidInputError(f"index name {name!r} must match {INDEX_NAME.pattern}")
        self.name = name
        self.home = root / name
        self.versions_dir = self.home / "versions"
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        self._clean_incomplete()

    def _clean_incomplete(self) -> None:
        """Remove what crashed imports and builds left behind. A build in progress (in this or
        another process) holds the lock of its work directory and is left alone."""
        for path in self.versions_dir.iterdir():
            if VERSION_ID.match(path.name):
                continue
            with _try_lock(path / LOCK) as free:
                if free:
                    shutil.rmtree(path, ignore_errors=True)
        for tmp in self.home.glob(f"{STAGING_PREFIX}{POINTER}-*"):
            if time.time() - tmp.stat().st_mtime > STALE_POINTER_SECONDS:  # not a switch in flight
                tmp.unlink(missing_ok=True)

    def path_of(self, version: str) -> Path:
        """The directory of an existing version; refuses anything that is not a version id."""
        if not VERSION_ID.match(version):
            raise InvalidInputError(f"{version!r} is not a version id (expected e.g. 20260101T120000Z-0123abcd)")
        path = self.versions_dir / version
        if not (path / "manifest.json").is_file():
            raise UnknownVersionError(f"index {self.name!r} has no version {version!r}")
        return path

    def version_ids(self) -> list[str]:
        return sorted(p.name for p in self.versions_dir.iterdir() if VERSION_ID.match(p.name))

    def serving(self) -> str | None:
        pointer = self.home / POINTER
        if not pointer.is_file():
            return None
        version: str = json.loads(pointer.read_text(encoding="utf-8"))["version"]
        return version

    def set_serving(self, version: str) -> None:
        self.path_of(version)
        payload = {"version": version, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_file(self.home / POINTER, json.dumps(payload).encode())

    def add(self, build: Callable[[Path], object]) -> str:
        """Run `build(out)` to create an artifact in a locked work directory, then file it under
        its version id (an atomic rename)."""
        work = self.versions_dir / f"{STAGING_PREFIX}incoming-{uuid.uuid4().hex[:8]}"
        work.mkdir()
        try:
            with (work / LOCK).open("w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                incoming = work / "artifact"
                build(incoming)
                version = read_manifest(incoming).version
                if not VERSION_ID.match(version):  # a path component from a file: never trusted
                    raise ArtifactError(f"the artifact's manifest names version {version!r}, not a version id")
                target = self.versions_dir / version
                if not target.exists():  # else the very same content is already a version
                    try:
                        publish(incoming, target)
                    except OSError:
                        if not (target / "manifest.json").is_file():
                            raise
                        # another process (a replica starting at once) filed the same version first
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return version

    def import_artifact(self, source: Path) -> str:
        """Copy a verified artifact in as a version (nothing is copied if it is there already)."""
        manifest = verify_artifact(source)
        if VERSION_ID.match(manifest.version) and (self.versions_dir / manifest.version).is_dir():
            return manifest.version
        return self.add(lambda out: _copy_artifact(source, out))

    def describe(self, serving: str | None = None) -> list[VersionInfo]:
        """Every version, `serving` (default: the one serving.json names) marked as serving."""
        serving = serving or self.serving()
        infos = []
        for version in self.version_ids():
            path = self.versions_dir / version
            try:
                manifest = read_manifest(path)
            except ArtifactError:
                continue
            infos.append(
                VersionInfo(
                    version=version,
                    created_at=manifest.created_at,
                    documents=manifest.counts.get("documents", 0),
                    chunks=manifest.counts.get("chunks", 0),
                    bytes=sum(int(f["bytes"]) for f in manifest.files.values()),
                    serving=version == serving,
                    shards=manifest.shard_count,
                )
            )
        return infos

    def prune(self, keep: int, in_use: Iterable[str]) -> list[str]:
        """Delete the oldest versions beyond `keep`, never the serving one or one in use."""
        protected = {*in_use, self.serving()}
        by_age = sorted(self.version_ids(), key=lambda v: (self.versions_dir / v / "manifest.json").stat().st_mtime)
        removable = [v for v in by_age if v not in protected]
        excess = len(self.version_ids()) - keep
        removed = removable[: max(0, excess)]
        for version in removed:
            # Renamed out of the way first: a crash mid-delete leaves a staging directory that the
            # next start removes, never a version id naming half an artifact.
            doomed = self.versions_dir / f"{STAGING_PREFIX}deleting-{version}"
            os.rename(self.versions_dir / version, doomed)
            fsync_dir(self.versions_dir)
            shutil.rmtree(doomed, ignore_errors=True)
        return removed


def _copy_artifact(source: Path, out: Path) -> None:
    """`source` copied to `out` (links refused); `add` fsyncs it before it becomes a version."""
    out.mkdir()
    try:
        copy_confined(source, out)
    except ValueError as exc:
        raise ArtifactError(str(exc)) from None
