"""The commands of the `ragserve` command line, one function each (the parser is service/cli/parser.py).

Heavy imports (torch, transformers, faiss) happen inside the commands, so `--help` is instant.
"""

import argparse
import contextlib
import ctypes
import importlib.util
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragserve.errors import InvalidInputError, RagserveError
from ragserve.types import RetrievalMode
from service.settings import Settings

if TYPE_CHECKING:
    from indexer.sources import ReadOptions

log = logging.getLogger("ragserve")


def _settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _check_inputs(paths: list[Path]) -> None:
    """Input files and folders that are not there fail at once, not after the models loaded."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise InvalidInputError(f"no such file or folder: {', '.join(missing)}")


# How many times an idle OpenMP worker thread spins, waiting for the next parallel region, before
# it sleeps; libgomp reads it once, when torch loads. Its default (300,000) keeps the encoder's
# second thread busy-waiting through the Python between forward passes, on the core the event loop
# needs: 20,000 served 548 instead of 437 requests/s at 8 clients (bench/query_load.py, docs/performance.md).
SERVE_SPINCOUNT = "20000"


def cmd_serve(args: argparse.Namespace) -> int:
    os.environ.setdefault("GOMP_SPINCOUNT", SERVE_SPINCOUNT)  # a value already set wins; torch is not loaded yet
    from ragserve.compute import use_compute_thread
    from retriever.artifact import read_manifest
    from service.http.server import serve

    settings = _settings(index_path=args.index, host=args.host, port=args.port, demo=args.demo or None)
    if settings.index_path is not None:
        read_manifest(settings.index_path)  # a path that is no artifact fails now, before the port opens
    if args.replicas < 1:
        raise InvalidInputError(f"--replicas must be at least 1, not {args.replicas}")
    if args.engine == "ray":
        return _serve_on_ray(args, settings)
    if args.shard_groups is not None:
        raise InvalidInputError("--shard-groups needs --engine ray")
    if args.replicas != 1:
        raise InvalidInputError("--replicas needs --engine ray (a uvicorn server is one replica: start more of them)")
    use_compute_thread()  # every model runs on one thread, from the demo index build on (ragserve/compute.py)
    serve(settings, args.log_level)  # the port opens now; models load (and first convert) behind it
    return 0


def _serve_on_ray(args: argparse.Namespace, settings: Settings) -> int:
    """`serve --engine ray`: the replicas load the models, this process only deploys them
    (service/rayserve/engine.py); Ray is imported only here."""
    if importlib.util.find_spec("ray") is None:
        raise InvalidInputError("--engine ray needs Ray Serve: pip install 'ragserve[ray]'")
    from service.rayserve.engine import serve_replicas

    given = {"index_path": args.index.resolve() if args.index else None, "host": args.host, "port": args.port}
    given["demo"] = args.demo or None
    overrides = {k: str(v) if isinstance(v, Path) else v for k, v in given.items() if v is not None}
    try:
        if args.shard_groups is not None:
            from service.rayserve.shards import serve_sharded

            serve_sharded(settings, overrides, args.shard_groups, args.replicas, args.log_level)
            return 0
        serve_replicas(settings, overrides, args.replicas, args.log_level)
    except (RuntimeError, TimeoutError, ValueError) as exc:  # a deploy that failed: Serve's message says why
        raise RagserveError(str(exc)) from None
    return 0


def cmd_index_build(args: argparse.Namespace) -> int:
    _check_inputs(args.input)  # before the imports below (torch, faiss: seconds)
    from indexer.build import build_artifact
    from indexer.sources import Skipped, read_corpus
    from retriever.artifact import read_manifest
    from service.application.loading import build_config, configure_threads, make_encoder, open_registry

    skipped: list[Skipped] = []

    def skip(what: Skipped) -> None:  # each one on stderr as the reading reaches it; counted in the report
        skipped.append(what)
        print(f"skipped {what}", file=sys.stderr)

    settings = _settings(
        chunk_tokens=args.chunk_tokens,
        overlap_tokens=args.overlap_tokens,
        index_factory=args.index_factory,
        index_shards=args.shards,
        encoder_precision=args.precision,
        index_name=args.registry,
    )
    session = _index_engine(args)
    configure_threads(settings)
    encoder = make_encoder(settings)
    started = time.perf_counter()

    def build(out: Path) -> None:
        skipped.clear()
        if args.engine == "ray":
            from indexer.ray_build import RayBuildConfig, build_artifact_ray

            config = RayBuildConfig.of(build_config(settings), settings)
            build_artifact_ray(args.input, out, encoder, config, not args.no_progress, read_options(args), skip)
        else:
            corpus = read_corpus(args.input, read_options(args), skip)
            build_artifact(corpus, out, encoder, build_config(settings), progress=not args.no_progress)

    with session:
        if args.registry:
            registry = open_registry(settings)
            artifact = registry.path_of(registry.add(build))
        else:
            artifact = args.out
            build(artifact)
    manifest = read_manifest(artifact)
    seconds = time.perf_counter() - started
    counts = manifest.counts
    print(
        json.dumps(
            {
                "artifact": str(artifact),
                "version": manifest.version,
                "engine": args.engine,
                "index_factory": manifest.index_factory,
                "counts": counts,
                "skipped": len(skipped),
                "seconds": round(seconds, 2),
                "chunks_per_second": round(counts["chunks"] / seconds, 1),
                "tokens_per_second": round(counts["tokens"] / seconds, 1),
            },
            indent=2,
        )
    )
    return 0


def read_options(args: argparse.Namespace) -> "ReadOptions":
    """How `index build` and `ingest` read CSV files (--csv-*-column)."""
    from indexer.sources import CsvColumns, ReadOptions

    return ReadOptions(CsvColumns(id=args.csv_id_column, title=args.csv_title_column, text=args.csv_text_column))


def _index_engine(args: argparse.Namespace) -> contextlib.AbstractContextManager[None]:
    """What `index build --engine` needs around the build: nothing (local), or one Ray session for
    the whole command, on the cluster at --address (or RAY_ADDRESS) or a local Ray of this
    machine's CPUs (indexer/ray_build.py). Ray is imported only here."""
    if args.engine == "local":
        if args.address:
            raise InvalidInputError("--address needs --engine ray")
        return contextlib.nullcontext()
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("pandas") is None:
        raise InvalidInputError("--engine ray needs Ray Data: pip install 'ragserve[ray]'")
    from indexer.ray_build import ray_session
    from service.rayserve.engine import forwarded_env

    return ray_session(args.address or os.environ.get("RAY_ADDRESS"), forwarded_env())


def cmd_index_verify(args: argparse.Namespace) -> int:
    from retriever.artifact import verify_artifact

    manifest = verify_artifact(args.path)
    print(
        f"ok: {args.path} version {manifest.version}, {manifest.counts['chunks']} chunks, "
        f"{len(manifest.files)} files verified"
    )
    return 0


def cmd_index_reshard(args: argparse.Namespace) -> int:
    from indexer.reshard import reshard_artifact
    from retriever.artifact import read_manifest
    from service.application.loading import build_gpu, configure_threads, make_encoder, open_registry

    settings = _settings(index_shards=args.shards, index_name=args.registry)  # the bound is the setting's
    configure_threads(settings)
    encoder = make_encoder(settings)
    gpu = build_gpu(settings)
    if args.registry:
        registry = open_registry(settings)
        version = registry.add(lambda out: reshard_artifact(args.source, out, settings.index_shards, encoder, gpu))
        artifact = registry.path_of(version)
    else:
        artifact = args.out
        reshard_artifact(args.source, artifact, settings.index_shards, encoder, gpu)
    manifest = read_manifest(artifact)
    print(json.dumps({"artifact": str(artifact), "version": manifest.version, "shards": manifest.shard_count}))
    return 0


def cmd_index_merge(args: argparse.Namespace) -> int:
    from indexer.merge import merge_artifact
    from retriever.artifact import read_manifest
    from service.application.loading import open_registry

    settings = _settings(index_name=args.registry)
    with _native_stdout_to_stderr():
        if args.registry:
            registry = open_registry(settings)
            artifact = registry.path_of(registry.add(lambda out: merge_artifact(args.source, out)))
        else:
            artifact = args.out
            merge_artifact(args.source, artifact)
    manifest = read_manifest(artifact)
    report = {"artifact": str(artifact), "version": manifest.version, "chunks": manifest.counts["chunks"]}
    print(json.dumps({**report, "index_factory": manifest.index_factory, "on_disk": True}))
    return 0


@contextlib.contextmanager
def _native_stdout_to_stderr() -> Iterator[None]:
    """FAISS's on-disk inverted lists print their progress ("resizing ...") with C's printf, on the
    stdout that carries a command's JSON report: sent to stderr while they work."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        ctypes.CDLL(None).fflush(None)  # C's buffered output goes out before stdout comes back
        os.dup2(saved, 1)
        os.close(saved)


def cmd_eval_squad(args: argparse.Namespace) -> int:
    _check_inputs([args.data])
    from service.application.evaluation import run_squad_eval

    settings = _settings()
    if args.retrieval:
        settings = settings.model_copy(update={"retrieval": RetrievalMode(args.retrieval)})
    if args.extractive:
        settings = settings.model_copy(update={"extractive": True})
    report = run_squad_eval(
        settings,
        args.data,
        args.limit,
        args.reader.split(",") if args.reader else [None],
        args.retrieval_only,
        args.top_k or settings.ask_top_k,
        progress=not args.no_progress,
        articles=args.articles,
        passages=args.passages,
        adapter=args.adapter,
    )
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


def cmd_models_prepare(args: argparse.Namespace) -> int:
    from service.application.loading import prepare

    prepare(_settings())
    print("models and demo index are ready")
    return 0


def cmd_token_new(args: argparse.Namespace) -> int:
    from service.http.auth import QUERY_PATHS, WRITE_PATHS, new_token

    scopes = {  # what each opens, as service/http/auth.py decides (`access_of`)
        "read": f"job status (GET /v1/jobs/{{id}}), and {', '.join(sorted(QUERY_PATHS))} once "
        "RAGSERVE_PROTECT_QUERIES=true (else open to every client)",
        "admin": f"what read opens, plus ingestion ({', '.join(sorted(WRITE_PATHS))}: `ragserve ingest`) and /admin/*",
    }
    scope = args.scope or _ask_scope(scopes)
    token, digest = new_token()
    print(f"token:  {token}\nsha256: {digest}\nscope:  {scope}: {scopes[scope]}\n")
    print("Give the token to the client; configure only the digest:")
    print(f"  export RAGSERVE_{scope.upper()}_TOKEN_SHA256={digest}   # comma-separate several")
    return 0


def _ask_scope(scopes: dict[str, str]) -> str:
    """Asked at a terminal; elsewhere --scope must say it (the old default, read, cannot ingest)."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise InvalidInputError("say which token with --scope: " + "; ".join(f"{k}: {v}" for k, v in scopes.items()))
    answer = ""
    while answer not in scopes:
        print("\n".join(f"  {name:<5}  {what}" for name, what in scopes.items()))
        try:
            answer = input("scope of the new token [read/admin]: ").strip().lower()
        except EOFError:
            raise InvalidInputError("no scope given (--scope read or --scope admin)") from None
    return answer


def cmd_ingest(args: argparse.Namespace) -> int:
    from service.cli.ingest_client import ingest_files, talking_to

    _check_inputs(args.paths)
    with talking_to(args.url):
        options = read_options(args)
        wait, progress = not args.no_wait, not args.no_progress
        failed = ingest_files(args.paths, args.url, args.token, args.batch, wait, progress, options)
    return 1 if failed else 0


def cmd_ask(args: argparse.Namespace) -> int:
    from service.cli.ingest_client import ask_question, talking_to

    with talking_to(args.url):
        ask_question(args)
    return 0


def cmd_edits(args: argparse.Namespace) -> int:
    from service.cli.edits_client import edits_command

    return edits_command(args)


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The options of `names` that were given on the command line (the others keep their defaults)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def cmd_train_retro(args: argparse.Namespace) -> int:
    from reader.train_config import RetroTrainConfig
    from service.application.training import run_train_retro

    config = RetroTrainConfig(steps=args.steps, **_given(args, "batch", "seq_tokens", "lr", "holdout", "seed"))
    print(json.dumps(run_train_retro(_settings(index_name=args.index), config, args.out), indent=2))
    return 0


def cmd_train_reader(args: argparse.Namespace) -> int:
    from reader.train_config import AdapterTrainConfig

    _check_inputs([args.data])
    from service.application.training import run_train_reader

    settings = _settings()
    if args.retrieval:
        settings = settings.model_copy(update={"retrieval": RetrievalMode(args.retrieval)})
    names = ("method", "epochs", "batch", "lr", "rank", "alpha", "virtual_tokens", "holdout", "eval_every", "seed")
    config = AdapterTrainConfig(
        max_passage_tokens=settings.max_passage_tokens,
        **_given(args, *names, "checkpoint_every"),
    )
    report = run_train_reader(
        settings,
        args.data,
        args.out,
        config,
        articles=args.articles,
        limit=args.limit,
        top_k=args.top_k,
        index=args.index,
        progress=not args.no_progress,
        stop_after=args.stop_after,
    )
    print(
        json.dumps(
            report if report is not None else {"stopped": True, "resume": f"run again with --out {args.out}"}, indent=2
        )
    )
    return 0
