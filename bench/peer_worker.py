"""One peer (txtai or Haystack) indexing and searching a corpus; run by `bench/peers.py` inside the
separate peers environment (`.venv-peers`), never imported by ragserve.

    python bench/peer_worker.py txtai|haystack CORPUS.json MODEL_DIR THREADS

CORPUS.json holds {"texts": [...], "queries": [...]}; prints one JSON line: build seconds, p50 and
p95 milliseconds of one query searched alone (top 5), and the top-1 row of every query.
"""

import json
import statistics
import sys
import time
from collections.abc import Callable


def txtai_peer(texts: list[str], model: str) -> tuple[float, Callable[[str], int]]:
    from txtai import Embeddings

    # content=True: txtai keeps the texts and returns them, as ragserve and Haystack do.
    embeddings = Embeddings(path=model, backend="faiss", content=True)
    started = time.perf_counter()
    embeddings.index([(i, text, None) for i, text in enumerate(texts)])
    build = time.perf_counter() - started

    def search(query: str) -> int:
        return int(embeddings.search(query, 5)[0]["id"])

    return build, search


def haystack_peer(texts: list[str], model: str) -> tuple[float, Callable[[str], int]]:
    from haystack import Document
    from haystack.components.retrievers.in_memory import InMemoryEmbeddingRetriever
    from haystack.document_stores.in_memory import InMemoryDocumentStore
    from haystack_integrations.components.embedders.sentence_transformers import (
        SentenceTransformersDocumentEmbedder,
        SentenceTransformersTextEmbedder,
    )

    store = InMemoryDocumentStore(embedding_similarity_function="cosine")
    doc_embedder = SentenceTransformersDocumentEmbedder(model=model, local_files_only=True)
    text_embedder = SentenceTransformersTextEmbedder(model=model, local_files_only=True)
    retriever = InMemoryEmbeddingRetriever(store, top_k=5)
    started = time.perf_counter()
    doc_embedder.warm_up()
    docs = [Document(id=str(i), content=text) for i, text in enumerate(texts)]
    store.write_documents(doc_embedder.run(docs)["documents"])
    build = time.perf_counter() - started
    text_embedder.warm_up()

    def search(query: str) -> int:
        embedding = text_embedder.run(query)["embedding"]
        return int(retriever.run(query_embedding=embedding)["documents"][0].id)

    return build, search


PEERS = {"txtai": txtai_peer, "haystack": haystack_peer}


def main() -> None:
    name, corpus_path, model, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    import torch

    torch.set_num_threads(threads)
    with open(corpus_path, encoding="utf-8") as fh:
        corpus = json.load(fh)
    build, search = PEERS[name](corpus["texts"], model)
    for query in corpus["queries"][:5]:  # warm-up
        search(query)
    times, top = [], []
    for query in corpus["queries"]:
        started = time.perf_counter()
        top.append(search(query))
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    print(json.dumps({"build_s": build, "p50_ms": statistics.median(times), "p95_ms": p95, "top1": top}))


if __name__ == "__main__":
    main()
