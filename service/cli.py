"""The `ragserve` command line: serve, index build/verify, eval squad, models prepare, token new.

Heavy imports (torch, transformers, faiss) happen inside the commands, so `--help` is instant.
"""

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from retriever.errors import RagserveError
from retriever.types import RetrievalMode
from service.settings import Settings
from service.squad import ARTICLE_SPLITS

log = logging.getLogger("ragserve")


def _settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


# How many times an idle OpenMP worker thread spins, waiting for the next parallel region, before
# it sleeps; libgomp reads it once, when torch loads. Its default (300,000) keeps the encoder's
# second thread busy-waiting through the Python between forward passes, on the core the event loop
# needs: 20,000 served 548 instead of 437 requests/s at 8 clients (bench/query_load.py, README).
SERVE_SPINCOUNT = "20000"


def cmd_serve(args: argparse.Namespace) -> int:
    os.environ.setdefault("GOMP_SPINCOUNT", SERVE_SPINCOUNT)  # a value already set wins; torch is not loaded yet
    import uvicorn

    from retriever.compute import use_compute_thread
    from service.app import create_app
    from service.loading import prepare

    settings = _settings(index_path=args.index, host=args.host, port=args.port)
    use_compute_thread()  # every model runs on one thread, from the demo index build on (retriever/compute.py)
    prepare(settings)  # first run: convert the generator, build the demo index (with progress)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=args.log_level)
    return 0


def cmd_index_build(args: argparse.Namespace) -> int:
    from indexer.artifact import read_manifest
    from indexer.build import build_artifact
    from indexer.sources import read_corpus
    from service.loading import build_config, configure_threads, make_encoder, open_registry

    settings = _settings(
        chunk_tokens=args.chunk_tokens,
        overlap_tokens=args.overlap_tokens,
        index_factory=args.index_factory,
        encoder_precision=args.precision,
        index_name=args.registry,
    )
    configure_threads(settings)
    encoder = make_encoder(settings)
    started = time.perf_counter()

    def build(out: Path) -> None:
        build_artifact(read_corpus(args.input), out, encoder, build_config(settings), progress=not args.no_progress)

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
                "index_factory": manifest.index_factory,
                "counts": counts,
                "seconds": round(seconds, 2),
                "chunks_per_second": round(counts["chunks"] / seconds, 1),
                "tokens_per_second": round(counts["tokens"] / seconds, 1),
            },
            indent=2,
        )
    )
    return 0


def cmd_index_verify(args: argparse.Namespace) -> int:
    from indexer.artifact import verify_artifact

    manifest = verify_artifact(args.path)
    print(
        f"ok: {args.path} version {manifest.version}, {manifest.counts['chunks']} chunks, "
        f"{len(manifest.files)} files verified"
    )
    return 0


def cmd_eval_squad(args: argparse.Namespace) -> int:
    from service.evaluation import run_squad_eval

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
    from service.loading import prepare

    prepare(_settings())
    print("models and demo index are ready")
    return 0


def cmd_token_new(args: argparse.Namespace) -> int:
    from service.auth import new_token

    token, digest = new_token()
    variable = "RAGSERVE_ADMIN_TOKEN_SHA256" if args.scope == "admin" else "RAGSERVE_READ_TOKEN_SHA256"
    print(f"token:  {token}\nsha256: {digest}\n\nGive the token to the client; configure only the digest:")
    print(f"  export {variable}={digest}   # comma-separate several")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from service.ingest_client import ingest_files

    failed = ingest_files(
        args.paths, args.url, args.token, args.batch, wait=not args.no_wait, progress=not args.no_progress
    )
    return 1 if failed else 0


def cmd_train_retro(args: argparse.Namespace) -> int:
    from reader.generator import Generator
    from reader.retro import default_weights_path
    from reader.retro_train import TrainConfig, train
    from retriever.errors import UnknownIndexError
    from retriever.version import VersionRetriever
    from service.loading import configure_threads, make_encoder, open_registry

    settings = _settings(index_name=args.index)
    configure_threads(settings)
    registry = open_registry(settings)
    version = registry.serving()
    if version is None:
        raise UnknownIndexError(f"index {args.index!r} has no serving version (build one with `ragserve index build`)")
    out = args.out or settings.retro_weights or default_weights_path(settings.cache_dir, settings.generator_model)
    retriever = VersionRetriever(registry.path_of(version), make_encoder(settings))
    generator = Generator(settings.generator_model, settings.cache_dir)
    config = TrainConfig(
        steps=args.steps, batch=args.batch, seq_tokens=args.seq_tokens, lr=args.lr, holdout=args.holdout, seed=args.seed
    )
    print(json.dumps(train(retriever, generator, out, config), indent=2))
    return 0


def cmd_train_reader(args: argparse.Namespace) -> int:
    from reader.adapter_train import TrainConfig
    from service.training import run_train_reader

    settings = _settings()
    if args.retrieval:
        settings = settings.model_copy(update={"retrieval": RetrievalMode(args.retrieval)})
    config = TrainConfig(
        method=args.method,
        epochs=args.epochs,
        batch=args.batch,
        lr=args.lr,
        rank=args.rank,
        alpha=args.alpha,
        virtual_tokens=args.virtual_tokens,
        holdout=args.holdout,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ragserve", description="Retrieval-augmented question answering service.")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP API (default: 127.0.0.1:8000)")
    serve.add_argument(
        "--index", type=Path, help="artifact to import as a version and serve (default: the registry's serving one)"
    )
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)

    index = sub.add_parser("index", help="build or verify index artifacts").add_subparsers(dest="action", required=True)
    build = index.add_parser("build", help="build an index artifact from JSONL, text/Markdown or Parquet")
    build.add_argument("--input", type=Path, nargs="+", required=True, help="files or folders")
    where = build.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="artifact directory to create (must not exist)")
    where.add_argument(
        "--registry", metavar="NAME", help="add the artifact as a new version of this index (switch with the admin API)"
    )
    build.add_argument("--chunk-tokens", type=int)
    build.add_argument("--overlap-tokens", type=int)
    build.add_argument("--index-factory", help="FAISS factory string, e.g. Flat, HNSW32, IVF1024,Flat")
    build.add_argument(
        "--precision", choices=["fp32", "bf16", "auto"], help="retriever number format (setting encoder_precision)"
    )
    build.add_argument("--no-progress", action="store_true")
    build.set_defaults(func=cmd_index_build)
    verify = index.add_parser("verify", help="check an artifact's checksums")
    verify.add_argument("path", type=Path)
    verify.set_defaults(func=cmd_index_verify)

    ev = sub.add_parser("eval", help="evaluations").add_subparsers(dest="suite", required=True)
    squad = ev.add_parser("squad", help="open-domain SQuAD v1.1: recall@k, exact match, F1")
    squad.add_argument("--data", type=Path, default=Path("../shared/data/squad-v1.1-dev.parquet"))
    squad.add_argument("--limit", type=int, help="evaluate N questions spread evenly over the set")
    squad.add_argument(
        "--reader", help="reader name, or several separated by commas (default: the configured default reader)"
    )
    squad.add_argument("--top-k", type=int, help="passages given to the reader (default: setting ask_top_k)")
    squad.add_argument("--retrieval-only", action="store_true", help="skip the reader")
    squad.add_argument(
        "--extractive", action="store_true", help="answers copied from the passages (default: setting extractive)"
    )
    squad.add_argument(
        "--passages",
        choices=["retrieved", "gold"],
        default="retrieved",
        help="what the readers read: the top --top-k retrieved passages, or each question's own paragraph",
    )
    squad.add_argument(
        "--retrieval", choices=[m.value for m in RetrievalMode], help="dense, sparse or hybrid (default: setting)"
    )
    squad.add_argument(
        "--articles",
        choices=ARTICLE_SPLITS,
        default="all",
        help="questions of the first half of the articles by title (train), the second (heldout), or all; "
        "the whole corpus is searched either way (default: %(default)s)",
    )
    squad.add_argument(
        "--adapter", help="reader adapter: a name, a folder, or 'none' (default: setting adapter, as `serve` answers)"
    )
    squad.add_argument("--out", type=Path, help="also write the report as JSON here")
    squad.add_argument("--no-progress", action="store_true")
    squad.set_defaults(func=cmd_eval_squad)

    models = sub.add_parser("models", help="model preparation").add_subparsers(dest="action", required=True)
    prep = models.add_parser("prepare", help="convert the bundled generator once and build the demo index")
    prep.set_defaults(func=cmd_models_prepare)
    ingest = sub.add_parser("ingest", help="send files to a running server as ingestion jobs")
    ingest.add_argument("paths", type=Path, nargs="+", help="JSONL, text, Markdown or Parquet files and folders")
    ingest.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default: %(default)s)")
    ingest.add_argument("--token", default=os.environ.get("RAGSERVE_TOKEN"), help="admin token (env RAGSERVE_TOKEN)")
    ingest.add_argument("--batch", type=int, default=64, help="documents per job (default: %(default)s)")
    ingest.add_argument("--no-wait", action="store_true", help="return once the jobs are acknowledged")
    ingest.add_argument("--no-progress", action="store_true")
    ingest.set_defaults(func=cmd_ingest)

    train = sub.add_parser("train", help="training of reader adapters and retrofits").add_subparsers(
        dest="model", required=True
    )
    retro = train.add_parser("retro", help="train the RETRO retrofit (base model frozen) on an index's corpus")
    retro.add_argument("--index", required=True, metavar="NAME", help="registry index: corpus and neighbour source")
    retro.add_argument("--steps", type=int, required=True)
    retro.add_argument("--out", type=Path, help="weights file (default: setting retro_weights)")
    retro.add_argument("--batch", type=int, default=2, help="sequences per step (default: %(default)s)")
    retro.add_argument("--seq-tokens", type=int, default=128, help="tokens per sequence (default: %(default)s)")
    retro.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: %(default)s)")
    retro.add_argument("--holdout", type=float, default=0.1, help="documents kept out (default: %(default)s)")
    retro.add_argument("--seed", type=int, default=0)
    retro.set_defaults(func=cmd_train_retro)

    reader = train.add_parser(
        "reader",
        help="train a reader adapter (LoRA, (IA)3 or prompt tuning; base model frozen) on question-answer pairs "
        "with their retrieved passages",
    )
    reader.add_argument("--data", type=Path, required=True, help="QA pairs: JSONL or Parquet (SQuAD's columns work)")
    reader.add_argument("--method", choices=["lora", "ia3", "prompt"], default="lora")
    reader.add_argument("--out", type=Path, required=True, help="adapter folder to write (a checkpoint there resumes)")
    reader.add_argument(
        "--index",
        help="artifact folder or registry index whose passages the examples get (default for SQuAD files: "
        "the index of their paragraphs, as `eval squad` builds it)",
    )
    reader.add_argument("--articles", choices=ARTICLE_SPLITS, default="all", help="split by article title (SQuAD)")
    reader.add_argument("--limit", type=int, help="train on N questions spread evenly over the data")
    reader.add_argument("--top-k", type=int, default=1, help="passages per question (default: %(default)s)")
    reader.add_argument("--retrieval", choices=[m.value for m in RetrievalMode], help="default: setting retrieval")
    reader.add_argument("--epochs", type=float, default=1.0)
    reader.add_argument("--batch", type=int, default=4, help="examples per step (default: %(default)s)")
    reader.add_argument("--lr", type=float, help="peak learning rate (default: lora 3e-4, ia3 3e-3, prompt 3e-2)")
    reader.add_argument("--rank", type=int, default=8, help="LoRA rank (default: %(default)s)")
    reader.add_argument("--alpha", type=int, default=16, help="LoRA alpha (default: %(default)s)")
    reader.add_argument("--virtual-tokens", type=int, default=20, help="prompt tuning (default: %(default)s)")
    reader.add_argument("--holdout", type=float, default=0.05, help="fraction only scored (default: %(default)s)")
    reader.add_argument("--eval-every", type=int, default=100, help="steps between held-out losses")
    reader.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints")
    reader.add_argument("--seed", type=int, default=0)
    reader.add_argument("--stop-after", type=int, help="stop after N steps at a checkpoint (run again to resume)")
    reader.add_argument("--no-progress", action="store_true")
    reader.set_defaults(func=cmd_train_reader)

    token = sub.add_parser("token", help="bearer tokens").add_subparsers(dest="action", required=True)
    new = token.add_parser("new", help="print a fresh random token and the SHA-256 digest to configure")
    new.add_argument("--scope", choices=["read", "admin"], default="read")
    new.set_defaults(func=cmd_token_new)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.func(args)
        return code
    except ValidationError as exc:
        print(f"ragserve: invalid configuration:\n{exc}", file=sys.stderr)
    except RagserveError as exc:
        print(f"ragserve: error: {exc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
