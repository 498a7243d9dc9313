"""Offline indexing: read corpora, chunk, embed with the frozen retriever, write index artifacts."""
