"""How a corpus is split into shards: by a stable hash of the document id.

A document always lands in the same shard of an N-shard index, whichever process builds or
updates it, so an upsert replaces its chunks where they are and a compaction rewrites only the
shards that changed. The hash is sha256 (Python's own `hash` differs between processes).
"""

import hashlib

MAX_SHARDS = 256  # the `index_shards` bound: a shard per replica of a large cluster, not per document


def shard_of(doc_id: str, shards: int) -> int:
    """The shard (0 .. shards - 1) that holds document `doc_id`."""
    assert 1 <= shards <= MAX_SHARDS, "a shard count is in 1..MAX_SHARDS"
    digest = hashlib.sha256(doc_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % shards


def shard_name(shard: int) -> str:
    """The folder of shard `shard` inside a sharded artifact."""
    return f"shard-{shard:03d}"
