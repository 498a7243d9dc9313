"""Importing this module registers every built-in reader."""

from reader import fusion, rag_sequence, rag_token, stuffing

__all__ = ["fusion", "rag_sequence", "rag_token", "stuffing"]
