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
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

STAGING_PREFIX = ".staging-"
SHARED_STALE_S = 3_600
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


def clean_stale(target: Path, older_than_s: float = 0) -> None:
    """Undo what an interrupted write of `target` left: its staging entries (those untouched for
    `older_than_s`) are removed; an old directory moved aside for a replacement that never arrived
    is moved back."""
    parent = target.parent
    if not parent.is_dir():
        return
    for stale in parent.glob(f"{STAGING_PREFIX}{target.name}-*"):
        if older_than_s and time.time() - stale.stat().st_mtime < older_than_s:
            continue  # another process may be writing it right now
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
def staged_directory(target: Path, replace: bool = False, shared: bool = False) -> Iterator[Path]:
    """An empty directory to fill; when the block ends without error it becomes `target`
    (`publish`), on error it is removed and `target` is untouched.

    `shared`: `target` is named by its content in a cache that several processes may fill at
    once (converted models): a target another process published first is kept (this copy is
    dropped), and only staging entries an hour old are taken for a crash's leftovers."""
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target, older_than_s=SHARED_STALE_S if shared else 0)
    staging = staging_path(target)
    staging.mkdir()
    try:
        yield staging
        try:
            publish(staging, target, replace)
        except OSError:
            if not (shared and target.exists()):
                raise
            shutil.rmtree(staging, ignore_errors=True)  # another process won the race: same content
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


def copy_confined(source: Path, target: Path) -> None:
    """Copy the directory `source` into the existing directory `target`, refusing (ValueError,
    before anything is copied) symbolic links, special files, and anything that resolves outside
    `source`: a folder named by a user cannot pull in files from elsewhere on the machine."""
    root = source.resolve(strict=True)
    plan: list[tuple[Path, bool]] = []  # (path relative to source, is a directory)
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_symlink():
            raise ValueError(f"{source}: {relative} is a symbolic link; copy refused")
        if not path.resolve().is_relative_to(root):
            raise ValueError(f"{source}: {relative} resolves outside the folder; copy refused")
        if not (path.is_dir() or path.is_file()):
            raise ValueError(f"{source}: {relative} is not a regular file or folder; copy refused")
        plan.append((relative, path.is_dir()))
    for relative, is_dir in plan:
        if is_dir:
            (target / relative).mkdir(parents=True, exist_ok=True)
        else:
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / relative, target / relative, follow_symlinks=False)
