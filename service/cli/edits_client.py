"""`ragserve edits add|list|show|delete`: the edit memory of a running server, through the Python
client (ragserve/client), with an admin token. Each verb prints JSON: the edit, or one a line."""

import argparse
import dataclasses
import json

from ragserve.client import Client, Edit
from service.cli.ingest_client import talking_to


def as_json(edit: Edit) -> str:
    return json.dumps(dataclasses.asdict(edit), ensure_ascii=False)


def edits_command(args: argparse.Namespace) -> int:
    with talking_to(args.url), Client(args.url, token=args.token) as client:
        if args.action == "add":
            print(as_json(client.create_edit(args.question, args.answer, statement=args.statement, note=args.note)))
        elif args.action == "list":
            for edit in client.edits(include_deleted=args.all):
                print(as_json(edit))
        elif args.action == "show":
            print(as_json(client.edit(args.edit_id)))
        else:
            print(as_json(client.delete_edit(args.edit_id)))
    return 0
