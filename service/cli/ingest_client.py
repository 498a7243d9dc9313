"""The verbs of the command line that talk to a running server, through the Python client
(ragserve/client): `ragserve ingest` (files → batches → jobs) and `ragserve ask`; and `talking_to`,
which turns what goes wrong with a server into one line that names it and says what to do."""

import argparse
import contextlib
import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from indexer.sources import ReadOptions, read_corpus
from ragserve.client import (
    Answer,
    CitationsEvent,
    Client,
    DoneEvent,
    IngestProgress,
    NetworkError,
    RequestTimeoutError,
    StreamEvent,
    TokenEvent,
    error_response,
)
from ragserve.errors import ForbiddenError, RagserveError, UnauthorizedError


def ingest_files(
    paths: list[Path],
    url: str,
    token: str | None,
    batch: int,
    wait: bool,
    progress: bool,
    options: ReadOptions | None = None,
) -> int:
    """Send every document as upserts; with `wait`, follow the jobs to the end. Returns the number of
    documents that failed (errors are printed; skipped files on stderr, and counted when any)."""
    bar = tqdm(desc="ingesting", unit=" docs", disable=not progress)
    corpus = read_corpus(paths, options, on_skip=lambda s: tqdm.write(f"skipped {s}", file=sys.stderr))
    skipped = corpus.skipped

    def report(p: IngestProgress) -> None:
        bar.n = p.documents_done if wait else p.documents_sent
        bar.set_postfix(sent=p.documents_sent, jobs=f"{p.jobs_done}/{p.jobs_sent}", failed=p.documents_failed)

    with Client(url, token=token) as client:
        result = client.ingest(corpus, batch_size=batch, wait=wait, progress=report)
    bar.close()
    if not wait:
        print(json.dumps({"jobs": list(result.job_ids)} | ({"skipped": len(skipped)} if skipped else {})))
        return 0
    for doc_id, error in result.errors.items():
        print(f"{doc_id}: {error}")
    report_line = {"jobs": len(result.job_ids), "counts": result.counts, "failed_documents": result.failed_documents}
    report_line |= {"skipped": len(skipped)} if skipped else {}
    print(json.dumps(report_line))
    return result.failed_documents


def ask_question(args: argparse.Namespace) -> None:
    """Print the answer (as it is written, with --stream), its citations and the index version;
    with --json the answer object instead (with --stream one event a line)."""
    options: dict[str, Any] = {
        "top_k": args.top_k,
        "reader": args.reader,
        "retrieval": args.retrieval,
        "extractive": args.extractive,
        "adapter": args.adapter,
        "abstain": args.abstain,
        "edits": args.edits,
    }
    with Client(args.url, token=args.token) as client:
        if not args.stream:
            answer = client.ask(args.question, **options)
            print(json.dumps(dataclasses.asdict(answer)) if args.json else render(answer))
            return
        for event in client.ask_stream(args.question, **options):
            if args.json:
                print(json.dumps({"event": event_name(event), **dataclasses.asdict(event)}), flush=True)
            elif isinstance(event, TokenEvent):
                print(event.text, end="", flush=True)
            elif isinstance(event, DoneEvent):
                print("\n" + render(event.answer, text=False), flush=True)


def event_name(event: StreamEvent) -> str:
    """The event's name on the wire (the server's text/event-stream)."""
    return {CitationsEvent: "citations", TokenEvent: "token", DoneEvent: "done"}[type(event)]


def render(answer: Answer, text: bool = True) -> str:
    """The answer (unless it was printed already), its numbered citations, the index version."""
    lines = [answer.answer.strip()] if text else []
    if answer.citations:
        lines.append("")
    for n, c in enumerate(answer.citations, 1):
        page = f", page {c.page}" if c.page is not None else ""
        lines.append(f"[{n}] {c.doc_id}: {c.title or '(untitled)'}{page} (score {c.score:.3f})")
    adapter = f", adapter {answer.adapter}" if answer.adapter else ""
    lines.append(f"\nindex version {answer.index_version} (reader {answer.reader}{adapter})")
    if answer.edit_id:
        lines.append(f"answered from edit {answer.edit_id}")
    if answer.abstained:
        lines.append(f"abstained: the passages do not support an answer (support {answer.support:.2f})")
    return "\n".join(lines)


@contextlib.contextmanager
def talking_to(url: str) -> Iterator[None]:
    """Errors of a verb that talks to the server at `url`, as one line that names it and says what
    to do (main prints it, no traceback); errors raised here (a file that does not read) pass."""
    try:
        yield
    except RequestTimeoutError as exc:
        raise RagserveError(f"{exc}: the server is busy or stuck; retry, or look at its log") from None
    except NetworkError as exc:
        raise RagserveError(
            f"cannot reach a ragserve server at {url} ({exc.reason}): is `ragserve serve` running there? "
            "Give its address with --url (or RAGSERVE_URL)"
        ) from None
    except RagserveError as exc:
        answered = error_response(exc)
        if answered is None:
            raise
        hint = ""
        if isinstance(exc, UnauthorizedError | ForbiddenError):
            hint = "; give a token of the right scope with --token or RAGSERVE_TOKEN (`ragserve token new`)"
        raise RagserveError(f"{answered}: {exc}{hint}") from None
