"""The one atomic write: a staging directory (or file) beside the target, every file and the
directory fsynced, one rename into place, the parent fsynced. A reader sees the old content or the
new, never half of it, and a crash leaves at most a staging entry that the next write of the same
target removes (`clean_stale`).

Used for index artifacts and versions, the serving pointer, reader adapters and their training
checkpoints, the RETRO retrofit's weights, and the converted generator. Lucene's commit points are
the model: write everything new, make it durable, then switch with one rename.

Replacing a directory takes two renames (the old one out of the way, the new one in); a crash
between them leaves the old one under `.old-<name>-*`, which `clean_stale` moves back.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

STAGING_PREFIX = ".staging-"
OLD_PREFIX = ".old-"


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file under `path` and every directory, deepest first."""
    for root, _, names in os.walk(path, topdown=False):
        for name in names:
            with (Path(root) / name).open("rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(Path(root))


def staging_path(target: Path) -> Path:
    """A fresh hidden name beside `target`, on the same filesystem (so the rename is atomic)."""
    return target.parent / f"{STAGING_PREFIX}{target.name}-{uuid.uuid4().hex[:8]}"


def clean_stale(target: Path) -> None:
    """Undo what an interrupted write of `target` left: its staging entries are removed; an old
    directory moved aside for a replacement that never arrived is moved back."""
    parent = target.parent
    if not parent.is_dir():
        return
    for stale in parent.glob(f"{STAGING_PREFIX}{target.name}-*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    for old in sorted(parent.glob(f"{OLD_PREFIX}{target.name}-*")):
        if not target.exists():
            os.rename(old, target)
        else:
            shutil.rmtree(old, ignore_errors=True)


def publish(staging: Path, target: Path, replace: bool = False) -> None:
    """Make the finished `staging` directory durable and rename it to `target`. With `replace`, an
    existing `target` is swapped out (and deleted); without, an existing target is an error."""
    if target.exists() and not replace:
        raise FileExistsError(f"{target} exists")
    fsync_tree(staging)
    old = None
    if replace and target.exists():
        old = target.parent / f"{OLD_PREFIX}{target.name}-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
    os.rename(staging, target)
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_directory(target: Path, replace: bool = False) -> Iterator[Path]:
    """An empty directory to fill; when the block ends without error it becomes `target`
    (`publish`), on error it is removed and `target` is untouched."""
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target)
    staging = staging_path(target)
    staging.mkdir()
    try:
        yield staging
        publish(staging, target, replace)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_file(target: Path, fill: Callable[[Path], None] | bytes) -> None:
    """Replace the file `target` atomically: `fill(path)` writes the new content at a staging path
    (or the bytes are written there), which is fsynced and renamed over `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_path(target)
    try:
        if isinstance(fill, bytes):
            staging.write_bytes(fill)
        else:
            fill(staging)
        with staging.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(staging, target)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
