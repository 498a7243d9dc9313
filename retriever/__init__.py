"""The frozen dense retriever: query/passage encoder, index artifacts loaded for search."""
