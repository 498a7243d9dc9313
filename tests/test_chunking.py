import itertools

import pytest

from indexer.chunking import ChunkingConfig, chunk_document
from ragserve.errors import InvalidInputError
from ragserve.types import Document
from retriever.encoder import Encoder


def chunks_of(encoder: Encoder, text: str, size: int, overlap: int) -> list:
    doc = Document("d", "T", text)
    return chunk_document(doc, encoder.tokenize([text])[0], ChunkingConfig(size, overlap))


def test_short_document_is_one_chunk(encoder: Encoder) -> None:
    text = "A short note about rivers."
    (chunk,) = chunks_of(encoder, text, 50, 10)
    assert chunk.text == text
    assert (chunk.start_char, chunk.end_char) == (0, len(text))
    assert chunk.chunk_id == "d#0"


@pytest.mark.parametrize("text", ["", "   ", "\n\t\n"])
def test_empty_documents_give_no_chunks(encoder: Encoder, text: str) -> None:
    assert chunks_of(encoder, text, 50, 10) == []


def test_windows_cover_the_text_with_the_configured_overlap(encoder: Encoder) -> None:
    words = " ".join(f"word{i}" for i in range(300))  # no sentence ends: pure token windows
    size, overlap = 40, 8
    chunks = chunks_of(encoder, words, size, overlap)
    tokens = encoder.tokenize([words])[0].ids
    assert all(len(c.token_ids) <= size for c in chunks)
    assert chunks[0].token_ids == tokens[:size]
    for prev, nxt in itertools.pairwise(chunks):
        shared = words[nxt.start_char : prev.end_char]  # windows overlap by whole words, >= overlap tokens
        assert prev.text.endswith(shared) and nxt.text.startswith(shared)
        assert len(encoder.tokenize([shared])[0].ids) >= overlap
    assert chunks[-1].token_ids[-1] == tokens[-1] and chunks[-1].end_char == len(words)
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))


def test_chunk_text_is_the_exact_source_span(encoder: Encoder) -> None:
    text = "Première phrase avec accents. Zweiter Satz über Straße! 第三句话。 Fourth ≈ sentence here?" * 10
    for chunk in chunks_of(encoder, text, 30, 5):
        assert chunk.text == text[chunk.start_char : chunk.end_char]
        assert chunk.text.strip() == chunk.text


def test_windows_prefer_sentence_ends(encoder: Encoder) -> None:
    sentence = "The lantern parade starts at dusk and crosses the old town square. "
    chunks = chunks_of(encoder, sentence * 20, 40, 5)
    assert all(c.text.endswith(".") for c in chunks)


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (10, 10), (10, 20), (10_000, 0)])
def test_bad_chunking_settings_are_refused(encoder: Encoder, size: int, overlap: int) -> None:
    with pytest.raises(InvalidInputError):
        ChunkingConfig(size, overlap).validate(encoder.max_tokens)


def test_chunks_never_split_a_word_so_their_text_tokenizes_back_to_their_tokens(encoder: Encoder) -> None:
    text = ("Electroencephalography and immunohistochemistry are polysyllabic; tokenizers split them. " * 12).strip()
    for size, overlap in [(17, 5), (23, 7), (40, 13)]:
        for chunk in chunks_of(encoder, text, size, overlap):
            assert encoder.tokenize([chunk.text])[0].ids == chunk.token_ids
            assert len(chunk.token_ids) <= size


def test_one_word_longer_than_the_window_is_still_cut(encoder: Encoder) -> None:
    text = "supercalifragilisticexpialidocious" * 2  # one word of many pieces
    chunks = chunks_of(encoder, text, 8, 2)
    assert len(chunks) > 1 and all(len(c.token_ids) <= 8 for c in chunks)
    assert chunks[-1].end_char == len(text)
