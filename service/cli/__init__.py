"""The `ragserve` command line (service/cli/commands.py), its parser (parser.py) and the ingestion
client (ingest_client.py). `main` is the console script's entry point."""

from service.cli.main import main

__all__ = ["main"]
