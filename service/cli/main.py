"""`ragserve`: parse the command line, run the command, turn errors into a message and status 2."""

import logging
import sys

from pydantic import ValidationError

from ragserve.errors import RagserveError
from service.cli.parser import parser


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
