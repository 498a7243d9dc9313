"""The `ragserve` argument parser, one function per command group. Options left out are None, so
the defaults stay where they are defined: the settings (service/settings.py) and the training
configurations (reader/adapter_train.py, reader/retro_train.py)."""

import argparse
import os
from pathlib import Path
from typing import TypeAlias

from ragserve.client import DEFAULT_BATCH_SIZE
from ragserve.types import RetrievalMode
from reader.train_config import AdapterTrainConfig as ReaderTrainConfig
from reader.train_config import RetroTrainConfig
from service.application.squad import ARTICLE_SPLITS
from service.cli import commands
from service.settings import Settings

Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
MODES = [m.value for m in RetrievalMode]
FORMATS = "JSONL, Parquet, CSV, text, Markdown, PDF, HTML or DOCX"  # what indexer/sources.py reads
# Where the verbs that talk to a server find it by default: where `ragserve serve` listens by default.
LOCAL_URL = f"http://{Settings.model_fields['host'].default}:{Settings.model_fields['port'].default}"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ragserve", description="Retrieval-augmented question answering service.")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_serve, _index, _eval, _models, _ingest, _ask, _edits, _train, _token):
        add(sub)
    return p


def _serve(sub: Sub) -> None:
    serve = sub.add_parser("serve", help="run the HTTP API (default: 127.0.0.1:8000)")
    which = serve.add_mutually_exclusive_group()
    which.add_argument(
        "--index", type=Path, help="artifact to import as a version and serve (default: the registry's serving one)"
    )
    which.add_argument(
        "--demo", action="store_true", help="serve the bundled demo index (again: the registry keeps serving the last)"
    )
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument(
        "--engine",
        choices=["uvicorn", "ray"],
        default="uvicorn",
        help="uvicorn: this process serves (default); ray: --replicas replicas on Ray Serve behind its proxy "
        "(pip install 'ragserve[ray]'; deploy/ray/README.md)",
    )
    serve.add_argument("--replicas", type=int, default=1, help="with --engine ray: how many (default: %(default)s)")
    serve.add_argument(
        "--shard-groups",
        type=int,
        help="with --engine ray and a sharded --index: split its shards into this many groups of --replicas "
        "replicas each, behind a router serving /v1/retrieve (docs/shard_router.md)",
    )
    serve.set_defaults(func=commands.cmd_serve)


def _index(sub: Sub) -> None:
    index = sub.add_parser("index", help="build or verify index artifacts").add_subparsers(dest="action", required=True)
    build = index.add_parser("build", help=f"build an index artifact from {FORMATS} files")
    build.add_argument("--input", type=Path, nargs="+", required=True, help="files or folders")
    _csv_options(build)
    where = build.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="artifact directory to create (must not exist)")
    where.add_argument(
        "--registry", metavar="NAME", help="add the artifact as a new version of this index (switch with the admin API)"
    )
    build.add_argument("--chunk-tokens", type=int)
    build.add_argument("--overlap-tokens", type=int)
    build.add_argument("--index-factory", help="FAISS factory string, e.g. Flat, HNSW32, IVF1024,Flat")
    build.add_argument(
        "--shards", type=int, help="shards to write (setting index_shards; default: one unsharded index)"
    )
    build.add_argument(
        "--precision", choices=["fp32", "bf16", "auto"], help="retriever number format (setting encoder_precision)"
    )
    build.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process builds (default); ray: a Ray Data pipeline, the same artifact "
        "(pip install 'ragserve[ray]'; docs/ray_build.md)",
    )
    build.add_argument(
        "--address", help="with --engine ray: the Ray cluster, HOST:PORT or auto (default: RAY_ADDRESS, else local)"
    )
    build.add_argument("--no-progress", action="store_true")
    build.set_defaults(func=commands.cmd_index_build)
    verify = index.add_parser("verify", help="check an artifact's checksums")
    verify.add_argument("path", type=Path)
    verify.set_defaults(func=commands.cmd_index_verify)
    reshard = index.add_parser("reshard", help="write an artifact again as N shards (1: unsharded), no re-embedding")
    reshard.add_argument("source", type=Path, help="the artifact folder to reshard")
    reshard.add_argument("--shards", type=int, required=True)
    into = reshard.add_mutually_exclusive_group(required=True)
    into.add_argument("--out", type=Path, help="artifact directory to create (must not exist)")
    into.add_argument("--registry", metavar="NAME", help="add the result as a new version of this index")
    reshard.set_defaults(func=commands.cmd_index_reshard)
    merge = index.add_parser(
        "merge", help="write the IVF shards of an artifact as one index whose inverted lists stay on disk"
    )
    merge.add_argument("source", type=Path, help="the sharded artifact folder (IVF shards over one quantizer)")
    onto = merge.add_mutually_exclusive_group(required=True)
    onto.add_argument("--out", type=Path, help="artifact directory to create (must not exist)")
    onto.add_argument("--registry", metavar="NAME", help="add the result as a new version of this index")
    merge.set_defaults(func=commands.cmd_index_merge)


def _eval(sub: Sub) -> None:
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
    squad.add_argument("--retrieval", choices=MODES, help="dense, sparse or hybrid (default: setting)")
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
    squad.set_defaults(func=commands.cmd_eval_squad)


def _models(sub: Sub) -> None:
    models = sub.add_parser("models", help="model preparation").add_subparsers(dest="action", required=True)
    prep = models.add_parser("prepare", help="convert the bundled generator once and build the demo index")
    prep.set_defaults(func=commands.cmd_models_prepare)


def _csv_options(command: argparse.ArgumentParser) -> None:
    """How CSV files map to documents (indexer/formats_csv.py): a row each."""
    command.add_argument("--csv-text-column", help="CSV files: the text column (default: the one named text)")
    command.add_argument("--csv-title-column", help="CSV files: the title column (default: title, if any)")
    command.add_argument("--csv-id-column", help="CSV files: the id column (default: id; none: <file>#<row>)")


def _ingest(sub: Sub) -> None:
    ingest = sub.add_parser("ingest", help="send files to a running server as ingestion jobs")
    ingest.add_argument("paths", type=Path, nargs="+", help=f"{FORMATS} files and folders")
    _csv_options(ingest)
    _server_options(ingest, "admin token")
    ingest.add_argument(
        "--batch", type=int, default=DEFAULT_BATCH_SIZE, help="documents per job (default: %(default)s)"
    )
    ingest.add_argument("--no-wait", action="store_true", help="return once the jobs are acknowledged")
    ingest.add_argument("--no-progress", action="store_true")
    ingest.set_defaults(func=commands.cmd_ingest)


def _ask(sub: Sub) -> None:
    ask = sub.add_parser("ask", help="ask a running server a question; prints the answer and its citations")
    ask.add_argument("question")
    _server_options(ask, "read token, where queries need one")
    ask.add_argument("--stream", action="store_true", help="print the answer as it is written")
    ask.add_argument("--top-k", type=int, help="passages read and cited (default: the server's)")
    ask.add_argument("--reader", help="reader name (default: the server's)")
    ask.add_argument("--retrieval", choices=MODES, help="default: the server's")
    ask.add_argument("--extractive", action="store_true", default=None, help="copy the answer from a passage")
    ask.add_argument("--adapter", help="reader adapter, or 'none' (default: the server's)")
    ask.add_argument("--json", action="store_true", help="the answer as JSON (with --stream: one event a line)")
    ask.add_argument(
        "--abstain",
        action=argparse.BooleanOptionalAction,
        help="refuse when the passages do not support an answer (default: the server's)",
    )
    ask.add_argument("--no-edits", dest="edits", action="store_false", default=None, help="ignore the edit memory")
    ask.set_defaults(func=commands.cmd_ask)


def _edits(sub: Sub) -> None:
    edits = sub.add_parser("edits", help="the edit memory of a running server (admin token)")
    verbs = edits.add_subparsers(dest="action", required=True)
    add = verbs.add_parser("add", help="correct one fact: QUESTION is answered ANSWER from now on")
    add.add_argument("question")
    add.add_argument("answer")
    add.add_argument("--statement", help="the corrected fact as a sentence, cited (default: question + answer)")
    add.add_argument("--note", help="why: a ticket, a source")
    listing = verbs.add_parser("list", help="the live edits, one JSON object a line")
    listing.add_argument("--all", action="store_true", help="deleted ones too (the audit trail)")
    for verb, help_text in (("show", "one edit"), ("delete", "undo an edit")):
        verbs.add_parser(verb, help=help_text).add_argument("edit_id")
    for p in (add, listing, *(verbs.choices[v] for v in ("show", "delete"))):
        _server_options(p, "admin token")
        p.set_defaults(func=commands.cmd_edits)


def _server_options(p: argparse.ArgumentParser, token: str) -> None:
    url = os.environ.get("RAGSERVE_URL", LOCAL_URL)
    p.add_argument("--url", default=url, help=f"the server (env RAGSERVE_URL; default: {url})")
    p.add_argument("--token", default=os.environ.get("RAGSERVE_TOKEN"), help=f"{token} (env RAGSERVE_TOKEN)")


def _train(sub: Sub) -> None:
    train = sub.add_parser("train", help="training of reader adapters and retrofits").add_subparsers(
        dest="model", required=True
    )
    _train_retro(train)
    _train_reader(train)


def _train_retro(train: Sub) -> None:
    d = RetroTrainConfig.__dataclass_fields__
    retro = train.add_parser("retro", help="train the RETRO retrofit (base model frozen) on an index's corpus")
    retro.add_argument("--index", required=True, metavar="NAME", help="registry index: corpus and neighbour source")
    retro.add_argument("--steps", type=int, required=True)
    retro.add_argument("--out", type=Path, help="weights file (default: setting retro_weights)")
    retro.add_argument("--batch", type=int, help=f"sequences per step (default: {d['batch'].default})")
    retro.add_argument("--seq-tokens", type=int, help=f"tokens per sequence (default: {d['seq_tokens'].default})")
    retro.add_argument("--lr", type=float, help=f"peak learning rate (default: {d['lr'].default})")
    retro.add_argument("--holdout", type=float, help=f"documents kept out (default: {d['holdout'].default})")
    retro.add_argument("--seed", type=int)
    retro.set_defaults(func=commands.cmd_train_retro)


def _train_reader(train: Sub) -> None:
    d = ReaderTrainConfig.__dataclass_fields__
    reader = train.add_parser(
        "reader",
        help="train a reader adapter (LoRA, (IA)3 or prompt tuning; base model frozen) on question-answer pairs "
        "with their retrieved passages",
    )
    reader.add_argument("--data", type=Path, required=True, help="QA pairs: JSONL or Parquet (SQuAD's columns work)")
    reader.add_argument("--method", choices=["lora", "ia3", "prompt"], help=f"default: {d['method'].default}")
    reader.add_argument("--out", type=Path, required=True, help="adapter folder to write (a checkpoint there resumes)")
    reader.add_argument(
        "--index",
        help="artifact folder or registry index whose passages the examples get (default for SQuAD files: "
        "the index of their paragraphs, as `eval squad` builds it)",
    )
    reader.add_argument("--articles", choices=ARTICLE_SPLITS, default="all", help="split by article title (SQuAD)")
    reader.add_argument("--limit", type=int, help="train on N questions spread evenly over the data")
    reader.add_argument("--top-k", type=int, default=1, help="passages per question (default: %(default)s)")
    reader.add_argument("--retrieval", choices=MODES, help="default: setting retrieval")
    reader.add_argument("--epochs", type=float, help=f"default: {d['epochs'].default}")
    reader.add_argument("--batch", type=int, help=f"examples per step (default: {d['batch'].default})")
    reader.add_argument("--lr", type=float, help="peak learning rate (default: lora 3e-4, ia3 3e-3, prompt 3e-2)")
    reader.add_argument("--rank", type=int, help=f"LoRA rank (default: {d['rank'].default})")
    reader.add_argument("--alpha", type=int, help=f"LoRA alpha (default: {d['alpha'].default})")
    reader.add_argument("--virtual-tokens", type=int, help=f"prompt tuning (default: {d['virtual_tokens'].default})")
    reader.add_argument("--holdout", type=float, help=f"fraction only scored (default: {d['holdout'].default})")
    reader.add_argument("--eval-every", type=int, help=f"steps between held-out losses ({d['eval_every'].default})")
    every = d["checkpoint_every"].default
    reader.add_argument("--checkpoint-every", type=int, help=f"steps between checkpoints (default: {every})")
    reader.add_argument("--seed", type=int)
    reader.add_argument("--stop-after", type=int, help="stop after N steps at a checkpoint (run again to resume)")
    reader.add_argument("--no-progress", action="store_true")
    reader.set_defaults(func=commands.cmd_train_reader)


def _token(sub: Sub) -> None:
    token = sub.add_parser("token", help="bearer tokens").add_subparsers(dest="action", required=True)
    new = token.add_parser("new", help="print a fresh random token and the SHA-256 digest to configure")
    new.add_argument(
        "--scope",
        choices=["read", "admin"],
        help="read: questions and job status; admin: also ingestion and /admin/* (asked when not given)",
    )
    new.set_defaults(func=commands.cmd_token_new)
