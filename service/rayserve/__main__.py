"""`python -m service.rayserve set KEY=VALUE ...`: change the live settings (user_config) of the
running `ragserve` application in place, on the Ray cluster RAY_ADDRESS names (default: the one
running on this machine, as `ragserve serve --engine ray` starts it). `show` prints them.

    python -m service.rayserve set default_reader=rag-sequence retrieve_max_queue=64
    python -m service.rayserve set --replace log_level=debug     # the other keys: start values
"""

import argparse
import json
import logging
import os
import sys

from ragserve.errors import RagserveError


def _value(text: str) -> object:
    try:
        return json.loads(text)  # numbers, null
    except ValueError:
        return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m service.rayserve", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="action", required=True)
    change = sub.add_parser("set", help="merge KEY=VALUE pairs into the user_config and deploy it in place")
    change.add_argument("pairs", nargs="+", metavar="KEY=VALUE")
    change.add_argument("--replace", action="store_true", help="the user_config becomes these pairs alone")
    sub.add_parser("show", help="print the deployed user_config")
    args = p.parse_args(argv)

    import ray

    from service.rayserve.engine import APP_NAME, deployed_config, update_user_config

    ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), logging_level=logging.WARNING)
    try:
        if args.action == "show":
            app = next((a for a in deployed_config() if a["name"] == APP_NAME), {})
            configs = [d.get("user_config") for d in app.get("deployments", [])]
            print(json.dumps(configs[0] if configs else None, indent=2))
            return 0
        bad = [pair for pair in args.pairs if "=" not in pair]
        if bad:
            p.error(f"expected KEY=VALUE, got {bad}")
        changes = {key: _value(value) for key, _, value in (pair.partition("=") for pair in args.pairs)}
        print(json.dumps(update_user_config(changes, replace=args.replace), indent=2))
        return 0
    except (RagserveError, RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
