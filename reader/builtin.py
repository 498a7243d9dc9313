"""Importing this module registers every built-in reader."""

from reader import fid, fusion, rag_sequence, rag_token, retro, stuffing

__all__ = ["fid", "fusion", "rag_sequence", "rag_token", "retro", "stuffing"]
