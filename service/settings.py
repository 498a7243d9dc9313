"""All configuration in one place: environment variables with the prefix RAGSERVE_.

Every limit the API enforces is here, and unsafe or contradictory values are refused at start-up.
"""

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ragserve.types import Precision, RetrievalMode
from retriever.registry import INDEX_NAME
from retriever.shards import MAX_SHARDS
from service.application.adapters import ADAPTER_NAME
from service.settings_answers import AnswerSettings


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


class Settings(BaseSettings, AnswerSettings):
    model_config = SettingsConfigDict(env_prefix="RAGSERVE_", extra="forbid")

    # --- where things live -------------------------------------------------------------------
    home: Path = Field(Path("~/.cache/ragserve"), description="Cache of converted models and built indexes.")
    index_path: Path | None = Field(
        None, description="Artifact to import into the registry and serve; default: the registry's serving version."
    )
    demo: bool = Field(
        False,
        description="Serve the bundled demo index (built on first use) whatever served before (`serve --demo`); "
        "without it a start serves what the registry served last.",
    )
    registry_dir: Path | None = Field(None, description="Where index versions live; default: <home>/registry.")
    index_name: Annotated[str, Field(pattern=INDEX_NAME.pattern)] = "default"
    keep_versions: Annotated[int, Field(ge=1, le=1_000)] = 5
    compact_after_chunks: Annotated[int, Field(ge=0, le=10_000_000)] = Field(
        20_000, description="Queue a refresh (compaction) once the delta index holds this many chunks; 0: never."
    )

    # --- models -------------------------------------------------------------------------------
    retriever_model: str = Field("all-MiniLM-L6-v2", description="Bundled alias or local sentence-transformers folder.")
    generator_model: str = Field(
        "SmolLM2-135M-Instruct", description="Bundled alias, local causal-LM folder, or local .gguf file."
    )
    encoder_precision: Precision = Field(
        Precision.AUTO,
        description="fp32 | bf16 | auto (bf16 where the CPU has AMX): number format of the retriever for "
        "indexing and queries; bf16 embeds ~3x faster, recall loss measured in docs/performance.md.",
    )
    generator_precision: Precision = Field(
        Precision.AUTO,
        description="fp32 | bf16 | fp16 (CUDA only) | auto (bf16 where the CPU has AMX or the GPU has bf16): "
        "number format of the generator when serving.",
    )
    generator_device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda)$",
        description="auto | cpu | cuda: where the generator runs; auto is CUDA when torch sees a GPU.",
    )
    default_reader: str = "stuff"
    adapter: Annotated[str, Field(pattern=ADAPTER_NAME.pattern)] = Field(
        "auto",
        description="Default reader adapter (reader/adapters.py) for requests that name none: a name in "
        "adapters_dir or bundled, 'none', or 'auto' (the bundled SQuAD adapter when it fits the generator).",
    )
    adapters_dir: Path | None = Field(None, description="Where adapter folders live; default: <home>/adapters.")
    extractive: bool = Field(
        False, description="Answers copied from the passages (a span of one, with its offsets) unless a request says."
    )
    torch_threads: Annotated[int, Field(ge=1, le=64)] = 2
    query_batch_max: Annotated[int, Field(ge=1, le=256)] = Field(
        32,
        description="Searches of concurrent requests run together (one embedding pass, one index search), "
        "at most; 1: no batching.",
    )
    query_batch_wait_ms: Annotated[float, Field(ge=0, le=50)] = Field(
        5.0,
        description="The most a search batch waits for as many queries as the previous batch held (a lone "
        "client never waits); 0: only what has queued.",
    )

    # --- indexing -----------------------------------------------------------------------------
    chunk_tokens: Annotated[int, Field(ge=16, le=1024)] = 200
    overlap_tokens: Annotated[int, Field(ge=0, le=512)] = 40
    index_factory: str | None = Field(None, description="FAISS factory string; default chosen by corpus size.")
    exact_search_below: Annotated[int, Field(ge=1)] = 50_000
    index_shards: Annotated[int, Field(ge=1, le=MAX_SHARDS)] = Field(
        1,
        description="Shards a build writes (documents split by a hash of their id; retriever/shards.py); "
        "1: one unsharded index.",
    )
    serve_shards: list[Annotated[int, Field(ge=0, lt=MAX_SHARDS)]] | None = Field(
        None,
        description="The shards of a sharded version this replica serves, e.g. [0, 2] (JSON list); "
        "None: all. A replica serving some shards takes no refresh (it holds only their changes).",
    )
    shard_search_threads: Annotated[int, Field(ge=0, le=MAX_SHARDS)] = Field(
        0,
        description="Threads searching the shards of a sharded version in parallel; 0: one per shard, up to the CPUs.",
    )
    hnsw_ef_search: Annotated[int, Field(ge=1, le=4096)] = 128
    ivf_nprobe: Annotated[int, Field(ge=1, le=65_536)] = 16
    index_keep_vectors: bool = Field(
        True,
        description="Keep the exact float32 vectors beside a compressed (PQ) index, for exact re-ranking and "
        "exact hybrid scores: 4 x dimension bytes per vector on disk (1.5 KB at 384), memory-mapped, so only "
        "the pages of candidates are read (docs/scaling.md).",
    )
    rerank_candidates: Annotated[int, Field(ge=1, le=2_048)] = Field(
        100,
        description="Candidates per query a compressed index returns for exact re-ranking (at least k); "
        "2048 is FAISS's GPU limit on k. Chosen by recall on 2M vectors (docs/scaling.md).",
    )
    faiss_gpu_build: bool = Field(True, description="Train and fill IVF/PQ indexes on the GPUs when faiss has any.")
    faiss_gpu_search: bool = Field(False, description="Search indexes on the GPUs when faiss has any (copied at load).")
    faiss_gpu_shard: bool = Field(
        False, description="With several GPUs: split an index across them (bigger than one holds), not a copy on each."
    )
    retriever_device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda)$",
        description="auto | cpu | cuda: where the retriever embeds; auto is CUDA when torch sees a GPU.",
    )

    # --- distributed build (Ray; `index build --engine ray`, docs/ray_build.md) -----------------
    ray_embed_actors: Annotated[int, Field(ge=0, le=4_096)] = Field(
        0,
        description="Embedding actors (each loads the retriever once); 0: one per GPU of the cluster, "
        "without GPUs cpus // (ray_embed_threads + 1), at least 1.",
    )
    ray_embed_threads: Annotated[int, Field(ge=1, le=64)] = Field(
        2, description="torch threads of each embedding actor (measured on 2 cores: docs/ray_build.md)."
    )
    ray_writer_in_flight: Annotated[int, Field(ge=1, le=64)] = Field(
        2,
        description="Batches the driver has handed to one shard writer and not yet seen written, at most: "
        "what bounds the driver's memory.",
    )
    ray_block_mib: Annotated[int, Field(ge=1, le=1_024)] = Field(
        4, description="Target size of the build's Ray Data blocks (documents, chunks, vectors) in MiB."
    )

    # --- retrieval (see retriever/hybrid.py; defaults fitted on SQuAD's training articles) -----
    retrieval: RetrievalMode = Field(RetrievalMode.HYBRID, description="dense | sparse (BM25) | hybrid (both, fused).")
    bm25_k1: Annotated[float, Field(gt=0, le=10)] = 0.3
    bm25_b: Annotated[float, Field(ge=0, le=1)] = 0.5
    hybrid_sparse_weight: Annotated[float, Field(ge=-10, le=10)] = 0.75
    hybrid_phrase_weight: Annotated[float, Field(ge=-10, le=10)] = 0.19
    hybrid_title_weight: Annotated[float, Field(ge=-10, le=10)] = -0.21
    hybrid_candidates: Annotated[int, Field(ge=1, le=1_000)] = Field(
        50, description="Candidates taken from each of dense and BM25 search before fusion."
    )

    # --- generation ---------------------------------------------------------------------------
    max_new_tokens: Annotated[int, Field(ge=1, le=512)] = 32
    max_passage_tokens: Annotated[int, Field(ge=16, le=2048)] = 384
    rag_temperature: Annotated[float, Field(gt=0, le=100)] = Field(
        0.1, description="τ of the passage prior p(z|x) = softmax(score / τ) of the rag-* readers (cosine scores)."
    )
    ask_batch_max: Annotated[int, Field(ge=1, le=64)] = Field(
        8, description="Concurrent /v1/ask requests (stuff reader) decoded together in shared steps; 1: one at a time."
    )
    ask_batch_wait_ms: Annotated[float, Field(ge=0, le=1_000)] = Field(
        0.0, description="How long an answer batch waits for more requests once it has one; 0: only what has queued."
    )
    num_beams: Annotated[int, Field(ge=1, le=8)] = Field(1, description="Beams of rag-token; 1 = greedy.")
    fid_model: str | None = Field(None, description="Local encoder-decoder (T5) folder for the `fid` reader.")
    retro_weights: Path | None = Field(
        None, description="Trained RETRO retrofit (safetensors); default: <home>/retro/<generator>.safetensors."
    )

    # --- HTTP and its limits ------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65_535)] = 8000
    max_question_chars: Annotated[int, Field(ge=1, le=10_000)] = 1_000
    retrieve_top_k: Annotated[int, Field(ge=1)] = 5
    max_retrieve_top_k: Annotated[int, Field(ge=1, le=1_000)] = 50
    ask_top_k: Annotated[int, Field(ge=1)] = 1
    max_ask_top_k: Annotated[int, Field(ge=1, le=32)] = 8
    max_body_bytes: Annotated[int, Field(ge=1_024, le=64 * 1024 * 1024)] = 64 * 1024
    max_ingest_body_bytes: Annotated[int, Field(ge=1_024, le=256 * 1024 * 1024)] = 16 * 1024 * 1024
    max_batch_documents: Annotated[int, Field(ge=1, le=10_000)] = 256
    max_document_chars: Annotated[int, Field(ge=1, le=10_000_000)] = 200_000
    max_metadata_bytes: Annotated[int, Field(ge=2, le=1_048_576)] = 4_096
    max_upload_bytes: Annotated[int, Field(ge=1_024, le=1024 * 1024 * 1024)] = Field(
        64 * 1024 * 1024, description="Body of one POST /v1/documents/files (all its files together); 413 beyond."
    )
    max_upload_files: Annotated[int, Field(ge=1, le=1_000)] = Field(
        32, description="Files in one POST /v1/documents/files; 422 beyond."
    )

    # --- streamed answers and the OpenAI-compatible API (docs/api.md) ---------------------------
    stream_keepalive_s: Annotated[float, Field(ge=0.05, le=300)] = Field(
        15.0, description="A streamed answer with nothing to send for this long sends a keep-alive comment."
    )
    max_chat_messages: Annotated[int, Field(ge=1, le=1_000)] = Field(
        64, description="Messages in one /v1/chat/completions request at most."
    )
    max_chat_message_chars: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        16_000, description="Characters of one chat message at most (the question itself: max_question_chars)."
    )
    chat_history_turns: Annotated[int, Field(ge=0, le=16)] = Field(
        1,
        description="Earlier user messages of a chat searched for together with its last one (a follow-up such "
        "as 'and when was it built?' finds its passages); 0: the last message alone. The reader sees the last one.",
    )
    chat_sources_in_text: bool = Field(
        True, description="Chat completions end with numbered sources ([1] title, document id) in their text."
    )

    # --- admission, deadlines and shutdown (defaults measured on 2 cores: docs/reliability.md) ---
    ask_max_in_service: Annotated[int, Field(ge=1, le=256)] = Field(
        8, description="/v1/ask requests answered at once (retrieving or decoding); more wait in the queue."
    )
    ask_max_queue: Annotated[int, Field(ge=0, le=4_096)] = Field(
        4, description="/v1/ask requests waiting for a place in service; beyond them: 429 at once."
    )
    retrieve_max_in_service: Annotated[int, Field(ge=1, le=1_024)] = Field(
        64, description="/v1/retrieve requests searched at once (they share embedding batches)."
    )
    retrieve_max_queue: Annotated[int, Field(ge=0, le=16_384)] = Field(
        128, description="/v1/retrieve requests waiting for a place in service; beyond them: 429 at once."
    )
    refusal_delay_ms: Annotated[float, Field(ge=0, le=1_000)] = Field(
        30.0,
        description="How long a 429/503 refusal of a model route is held before it is sent (no CPU spent): "
        "clients that retry at once then cannot spend the server's time on refusals.",
    )
    request_deadline_s: Annotated[float, Field(gt=0, le=600)] = Field(
        30.0, description="A model-backed request not answered this long after it arrived ends 504 (its work dropped)."
    )
    shutdown_grace_s: Annotated[float, Field(ge=0, le=300)] = Field(
        20.0,
        description="On SIGTERM: how long requests in flight and a job batch in progress get before the process "
        "exits (keep it below the orchestrator's grace period, Kubernetes' default is 30 s).",
    )

    # --- jobs ---------------------------------------------------------------------------------
    max_pending_jobs: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        1_000, description="Jobs queued or running at most; one more is refused with 429."
    )
    job_retention_s: Annotated[float, Field(ge=0, le=365 * 86_400)] = Field(
        7 * 86_400, description="Finished jobs (and what they carried) are deleted this long after they finished."
    )
    job_max_attempts: Annotated[int, Field(ge=1, le=100)] = Field(
        3, description="Tries of a job that fails on a storage error (disk full, I/O) before it ends `failed`."
    )
    worker_backoff_max_s: Annotated[float, Field(gt=0, le=3_600)] = Field(
        30.0, description="Longest wait of a job worker before it retries after a storage error (doubles from 0.5 s)."
    )

    # --- replicas: shared state (docs/replicas.md) ---------------------------------------------
    database_url: str | None = Field(
        None,
        repr=False,  # it may carry a password
        pattern=r"^postgres(ql)?://\S+$",
        description="postgresql://user:password@host:port/database: documents, jobs, the serving pointer and "
        "the replica list live there, shared by every replica (artifacts stay under registry_dir, a volume "
        "they all mount); default: SQLite in the registry, for the processes of one machine.",
    )
    database_pool_max: Annotated[int, Field(ge=2, le=64)] = Field(
        8, description="PostgreSQL connections per replica at most."
    )
    follow_poll_s: Annotated[float, Field(ge=0.02, le=60)] = Field(
        0.25,
        description="How often a replica looks for a new serving version and new document changes when no "
        "notification came (PostgreSQL notifies at once; SQLite is polled only).",
    )
    heartbeat_s: Annotated[float, Field(ge=0.05, le=60)] = Field(
        1.0, description="How often a replica writes its state to the replica list and renews its job leases."
    )
    replica_timeout_s: Annotated[float, Field(ge=0.5, le=3_600)] = Field(
        10.0,
        description="A replica not heard from this long is dead: it leaves the list, and the jobs it ran (a "
        "refresh build included) are taken over by another replica. At least 3 heartbeats.",
    )

    # --- authentication (bearer tokens; only their SHA-256 digests are configured) -----------------
    admin_token_sha256: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated SHA-256 hex digests of admin tokens."
    )
    read_token_sha256: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated SHA-256 hex digests of read-only tokens."
    )
    protect_queries: bool = Field(False, description="Require a read (or admin) token on /v1/ask and /v1/retrieve.")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1", "::1"],
        description="Comma-separated Host names that open (token-less) admin and write routes answer, besides "
        "loopback addresses, and only for clients on a loopback address; add a local proxy's public name here.",
    )

    # --- shard router ---
    # The router in front of shard groups (retriever/router.py, service/rayserve/shards.py; docs/shard_router.md).
    router_timeout_s: Annotated[float, Field(gt=0, le=600)] = Field(
        10.0,
        description="How long the shard router waits for each shard group's answer; a group slower than this "
        "has failed (503 shard_unavailable, or a partial answer with router_allow_partial).",
    )
    router_threads: Annotated[int, Field(ge=1, le=1_024)] = Field(
        16, description="Threads the shard router fans out on to in-process (synchronous) shard groups."
    )
    router_max_in_flight: Annotated[int, Field(ge=1, le=16_384)] = Field(
        256,
        description="Searches the shard router fans out at once; one more waits for a place (synchronous "
        "callers, up to router_timeout_s) or is refused at once (the event loop): 429 overloaded.",
    )
    router_version_wait_ms: Annotated[float, Field(ge=0, le=10_000)] = Field(
        250.0,
        description="Shard groups that answer from different index versions (a roll in progress) are asked "
        "once more after this wait; if they still differ the search fails 503 shards_disagree.",
    )
    router_allow_partial: bool = Field(
        False,
        description="Answer from the shard groups that answered when others failed, naming the missing ones "
        "(`missing_shards` in the body, header X-Ragserve-Missing-Shards); default: the search fails 503.",
    )

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _host_list(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            bad = [v for v in value if not (isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9.:_-]{1,253}", v))]
            if bad:
                raise ValueError(f"allowed_hosts: {bad!r} are not host names (no ports, schemes or wildcards)")
            return [v.lower() for v in value]
        return value

    @field_validator("admin_token_sha256", "read_token_sha256", mode="before")
    @classmethod
    def _digest_list(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            bad = [v for v in value if not (isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v))]
            if bad:
                raise ValueError("token digests must be 64 lowercase hex characters (see `ragserve token new`)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "Settings":
        if self.overlap_tokens >= self.chunk_tokens:
            raise ValueError("overlap_tokens must be smaller than chunk_tokens")
        if self.demo and self.index_path is not None:
            raise ValueError("demo and index_path both name what to serve: give one")
        if self.retrieve_top_k > self.max_retrieve_top_k:
            raise ValueError("retrieve_top_k must not exceed max_retrieve_top_k")
        if self.ask_top_k > self.max_ask_top_k:
            raise ValueError("ask_top_k must not exceed max_ask_top_k")
        if not self.admin_token_sha256 and not _is_loopback(self.host):
            raise ValueError(
                f"host {self.host!r} is not a loopback address: configure admin_token_sha256 "
                "(see `ragserve token new --scope admin`) before exposing the admin endpoints"
            )
        if self.protect_queries and not (self.read_token_sha256 or self.admin_token_sha256):
            raise ValueError("protect_queries is on but no read or admin token digest is configured")
        if self.replica_timeout_s < 3 * self.heartbeat_s:
            raise ValueError(
                f"replica_timeout_s={self.replica_timeout_s} must be at least 3 heartbeats "
                f"(heartbeat_s={self.heartbeat_s}): a replica that misses one beat is not dead"
            )
        if self.torch_threads > (os.cpu_count() or 1) * 2:
            raise ValueError(f"torch_threads={self.torch_threads} oversubscribes this machine's {os.cpu_count()} cores")
        return self

    @property
    def cache_dir(self) -> Path:
        return self.home.expanduser()

    @property
    def adapters_root(self) -> Path:
        return (self.adapters_dir or self.home / "adapters").expanduser()

    @property
    def registry_root(self) -> Path:
        return (self.registry_dir or self.home / "registry").expanduser()
