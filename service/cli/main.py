"""`ragserve`: parse the command line, run the command, turn errors into a message and status 2.

Errors the user can fix are one line each on stderr, never a traceback: a domain error (a bad
input file, a server that refused or could not be reached), or settings that do not validate,
named as the user sets them (the environment variable, and the flag where there is one)."""

import argparse
import logging
import re
import sys

from pydantic import ValidationError

from ragserve.errors import RagserveError
from service.cli.parser import parser
from service.settings import Settings

ENV_PREFIX = Settings.model_config.get("env_prefix", "")
# The flag (its argparse destination) that sets a setting, for the commands that have it.
FLAG_DESTS = {
    "index_path": "index",
    "host": "host",
    "port": "port",
    "chunk_tokens": "chunk_tokens",
    "overlap_tokens": "overlap_tokens",
    "index_factory": "index_factory",
    "index_shards": "shards",
    "encoder_precision": "precision",
    "index_name": "registry",
}
SECRET_FIELDS = frozenset(name for name, f in Settings.model_fields.items() if not f.repr)
# The faiss package logs at INFO that its AVX512 build failed to load, with the exception, at
# every import: it reads like an error and is none (the AVX2 build loads next). Its warnings stay.
QUIET_LOGGERS = ("faiss.loader",)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        code: int = args.func(args)
        return code
    except ValidationError as exc:
        for line in settings_problems(exc, args):
            print(f"ragserve: invalid configuration: {line}", file=sys.stderr)
    except RagserveError as exc:
        print(f"ragserve: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("ragserve: interrupted", file=sys.stderr)
        return 130
    return 2


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "debug":
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def setting_name(field: str, args: argparse.Namespace) -> str:
    """A setting as the user sets it: RAGSERVE_PORT, and its flag where this command has one."""
    dest = FLAG_DESTS.get(field)
    flag = f" (--{dest.replace('_', '-')})" if dest and hasattr(args, dest) else ""
    return f"{ENV_PREFIX}{field}".upper() + flag


def settings_problems(exc: ValidationError, args: argparse.Namespace) -> list[str]:
    """One line per problem; settings named by their environment variable, not their field."""
    if exc.title != Settings.__name__:
        return [str(exc).replace("\n", " ")]
    fields = sorted((f for f in Settings.model_fields if "_" in f), key=len, reverse=True)
    named = re.compile(r"\b(" + "|".join(fields) + r")\b")  # plain words ("host", "port") stay words

    def rename(text: str) -> str:
        return named.sub(lambda m: setting_name(m.group(1), args), text)

    lines = []
    for error in exc.errors(include_url=False):
        message = rename(error["msg"].removeprefix("Value error, "))
        if not error["loc"]:  # a rule between settings: its message names them
            lines.append(message)
            continue
        field = str(error["loc"][0])
        given = error.get("input")
        shown = field not in SECRET_FIELDS and isinstance(given, str | int | float) and len(str(given)) <= 80
        name = setting_name(field, args) if field in Settings.model_fields else field
        lines.append(f"{name}: {message}" + (f" (got {given!r})" if shown else ""))
    return lines
