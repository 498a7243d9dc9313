"""Index artifacts: one immutable directory = FAISS file + BM25 files + SQLite docstore + manifest.json.

The manifest records what built the index (retriever name and weights digest, chunking, index
type) and the sha256 of every other file. Artifacts are written into a staging directory beside
the destination and published with one rename when complete (ragserve/atomic.py), so a reader
never sees half of one and a crash leaves nothing but a staging directory that the next build
removes. The writer is retriever/writer.py; this module reads and verifies.
"""

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ragserve.errors import ArtifactError, IntegrityError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
DOCSTORE_FILE = "docstore.sqlite"


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
    # Number format the passages were embedded in (ragserve/types.py Precision; fp32 before it was recorded).
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


def write_manifest(staging: Path, manifest_fields: dict[str, Any]) -> Manifest:
    """Checksum every file of a finished staging directory and write its manifest there; the
    caller publishes the directory (ragserve/atomic.py)."""
    files = {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted(staging.iterdir()) if p.is_file()
    }
    manifest = Manifest(version=new_version_id(files), files=files, **manifest_fields)
    (staging / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
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
