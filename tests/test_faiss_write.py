"""A FAISS index that does not fit on the disk is an OSError (a storage error the job worker
retries), not FAISS's RuntimeError."""

import subprocess
from pathlib import Path

import faiss
import numpy as np
import pytest

from ragserve.storage import is_storage_error
from retriever.faiss_index import write


def test_a_full_disk_during_a_faiss_write_is_an_os_error(tmp_path: Path) -> None:
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tmp_path)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.decode().strip()}")
    try:
        index = faiss.IndexFlatIP(64)
        index.add(np.random.default_rng(0).random((2_000, 64), dtype=np.float32))  # 512 KB > 64 KB
        with pytest.raises(OSError, match="writing the FAISS index") as caught:
            write(index, tmp_path / "dense.faiss")
        assert is_storage_error(caught.value)
    finally:
        subprocess.run(["umount", str(tmp_path)], check=False)
