"""Importing this module registers every built-in reader."""

from reader import stuffing

__all__ = ["stuffing"]
