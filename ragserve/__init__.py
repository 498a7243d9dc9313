"""ragserve's shared core: the vocabulary every component speaks.

Everything here may be imported by every package (`indexer`, `retriever`, `reader`, `service`) and
imports none of them: the domain errors (`errors`), the value types that cross package boundaries
(`types`), number formats (`precision`), the compute-thread runtime (`compute`) and the one atomic
write (`atomic`). Importing it does not import torch: the modules that need torch import it when
they are first used.

It also holds the Python client of a server (`ragserve.client`): `from ragserve import Client,
AsyncClient` imports it (and httpx) on first use, so importing `ragserve` stays light.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ragserve.client import AsyncClient, Client

__all__ = ["AsyncClient", "Client"]


def __getattr__(name: str) -> Any:
    """`ragserve.Client` and `ragserve.AsyncClient`, imported when first asked for."""
    if name in __all__:
        from ragserve import client

        return getattr(client, name)
    raise AttributeError(f"module 'ragserve' has no attribute {name!r}")
