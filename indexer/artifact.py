"""Index artifacts: one immutable directory = FAISS file + SQLite docstore + manifest.json.

The manifest records what built the index (retriever name and weights digest, chunking, index
type) and the sha256 of every other file. Artifacts are written into a hidden staging directory
beside the destination and renamed into place only when complete, so a reader never sees half
of one and a crash leaves nothing but a staging directory that the next build removes.
"""

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from retriever.errors import ArtifactError, IntegrityError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
DOCSTORE_FILE = "docstore.sqlite"
STAGING_PREFIX = ".staging-"


@dataclass(frozen=True, slots=True)
class Manifest:
    version: str
    retriever_model: str
    retriever_weights_sha256: str
    dimension: int
    metric: str
    index_factory: str
    chunking: dict[str, int]
    counts: dict[str, int]
    created_at: str
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    # The document table's change counter this version includes (0: built from files, not from
    # ingested documents); the delta index of a serving version holds only later changes.
    documents_seq: int = 0
    # Version of the BM25 analyzer that wrote sparse.npz (0: the artifact has no sparse index and
    # one is built from the docstore when the version is opened).
    sparse_analyzer: int = 0
    # Number format the passages were embedded in (retriever/types.py Precision; fp32 before it was recorded).
    embedding_precision: str = "fp32"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        data = json.loads(text)
        if data.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"unsupported artifact format {data.get('format_version')!r}")
        return cls(**data)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def new_version_id(files: dict[str, dict[str, Any]]) -> str:
    """Sortable and content-addressed: UTC time of the build plus a digest of its files."""
    content = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:8]
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + content


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clean_stale_staging(out: Path) -> None:
    """Remove staging directories that an interrupted build of `out` left behind (only those:
    builds of other artifacts in the same folder keep theirs)."""
    if out.parent.is_dir():
        for stale in out.parent.glob(f"{STAGING_PREFIX}{out.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def staging_directory(out: Path) -> Iterator[Path]:
    """Yield an empty directory on the same filesystem as `out`; discarded on error."""
    if out.exists():
        raise ArtifactError(f"{out} already exists: artifacts are immutable, choose a new --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f"{STAGING_PREFIX}{out.name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def seal(staging: Path, out: Path, manifest_fields: dict[str, Any]) -> Manifest:
    """Checksum every file, write the manifest, fsync, and rename the directory into place."""
    files = {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted(staging.iterdir()) if p.is_file()
    }
    manifest = Manifest(version=new_version_id(files), files=files, **manifest_fields)
    (staging / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
    for p in staging.iterdir():
        with p.open("rb") as fh:
            os.fsync(fh.fileno())
    fsync_dir(staging)
    os.rename(staging, out)
    fsync_dir(out.parent)
    return manifest


def read_manifest(path: Path) -> Manifest:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{path} is not an index artifact (no {MANIFEST})")
    try:
        return Manifest.from_json(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, TypeError) as exc:
        raise ArtifactError(f"{manifest_path} is malformed: {exc}") from exc


def verify_artifact(path: Path) -> Manifest:
    """The manifest, after checking that every listed file exists and matches its sha256."""
    manifest = read_manifest(path)
    for required in (INDEX_FILE, DOCSTORE_FILE):
        if required not in manifest.files:
            raise ArtifactError(f"{path}: manifest lists no {required}")
    for name, info in manifest.files.items():
        file = path / name
        if not file.is_file():
            raise IntegrityError(f"{path}: {name} is missing")
        if sha256_file(file) != info["sha256"]:
            raise IntegrityError(f"{path}: {name} does not match its sha256 in the manifest (tampered or corrupt)")
    return manifest
