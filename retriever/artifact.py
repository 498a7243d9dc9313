"""Index artifacts: one immutable directory = FAISS file + BM25 files + SQLite docstore + manifest.json.

A sharded artifact (format 2) holds those files once per shard, in `shard-000/` ... (partitioned
by retriever/shards.py), plus the corpus-wide BM25 statistics at the top; its one manifest lists
every file of every shard with its checksum, so a sharded version is published, verified, copied
and pruned exactly like an unsharded one.

The manifest records what built the index (retriever name and weights digest, chunking, index
type) and the sha256 of every other file. Artifacts are written into a staging directory beside
the destination and published with one rename when complete (ragserve/atomic.py), so a reader
never sees half of one and a crash leaves nothing but a staging directory that the next build
removes. The writer is retriever/writer.py; this module reads and verifies.
"""

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ragserve.errors import ArtifactError, IntegrityError

FORMAT_VERSION = 1  # one set of index files
SHARDED_FORMAT = 2  # a set per shard, in shard folders
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
DOCSTORE_FILE = "docstore.sqlite"
SHARD_FOLDER = re.compile(r"shard-\d{3}")  # retriever/shards.py shard_name


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
    # Sharded artifacts: per shard {"name": folder, "chunks": rows, "id_base": first FAISS id}, in
    # shard order, and the corpus-wide BM25 totals (sparse.CorpusStatistics.manifest). Empty: unsharded.
    shards: list[dict[str, Any]] = field(default_factory=list)
    bm25_statistics: dict[str, int] = field(default_factory=dict)

    @property
    def shard_count(self) -> int:
        """1 for an unsharded artifact."""
        return len(self.shards) or 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        data = json.loads(text)
        if data.get("format_version") not in (FORMAT_VERSION, SHARDED_FORMAT):
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
        p.relative_to(staging).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(staging.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    if manifest_fields.get("shards"):
        manifest_fields = {**manifest_fields, "format_version": SHARDED_FORMAT}
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
    for folder in shard_folders(manifest):
        for required in (INDEX_FILE, DOCSTORE_FILE):
            if f"{folder}{required}" not in manifest.files:
                raise ArtifactError(f"{path}: manifest lists no {folder}{required}")
    for name, info in manifest.files.items():
        if name.startswith("/") or ".." in Path(name).parts:
            raise ArtifactError(f"{path}: manifest names a file outside the artifact: {name!r}")
        file = path / name
        if not file.is_file():
            raise IntegrityError(f"{path}: {name} is missing")
        if sha256_file(file) != info["sha256"]:
            raise IntegrityError(f"{path}: {name} does not match its sha256 in the manifest (tampered or corrupt)")
    return manifest


def shard_folders(manifest: Manifest) -> list[str]:
    """The folder prefix of each shard's files ("shard-000/", ...), or [""] for an unsharded artifact."""
    names = [shard.get("name") for shard in manifest.shards]
    if any(not isinstance(n, str) or not SHARD_FOLDER.fullmatch(n) for n in names):
        raise ArtifactError(f"malformed shard names in the manifest: {names!r}")
    return [f"{name}/" for name in names] or [""]
