"""Token-alignment features of the scope classifier (BERTScore-style), from the frozen encoder.

Bag-of-words overlap cannot tell a harmless synonym ("established" for "founded") from a changed
attribute ("largest city" for "capital"): both are a content word the other question lacks. In the
encoder's contextual token space they differ: a synonym lies close to its counterpart, a changed
attribute close to nothing of the other question. So for each content word of one question (stopwords
and punctuation removed, word pieces mean-pooled per word by `Encoder.encode_words`) we take its best
cosine to any word of the other question (stopwords included: "year" in "In what year ...?" aligns
with "When"); the *worst-aligned* content word flags a changed attribute or entity, the mean says how
well the whole question is covered. Both directions, combined symmetrically (the pair order carries no
meaning).

Word vectors cost a forward pass (~10 ms for a lone query on 2 cores), so the classifier runs them in a
cascade (retriever/scope.py): candidates below a cosine floor are out of scope without them, and the
edit questions' word vectors are kept in a bounded LRU cache by question text.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

Words = tuple[list[str], np.ndarray]  # a text's words and (n_words, dim) unit vectors
WordEncoder = Callable[[Sequence[str]], list[Words]]  # Encoder.encode_words

ALIGNMENT_FEATURES = (
    "align_min_low",  # the lower of the two sides' worst-aligned content word cosines
    "align_min_high",  # the higher of the same two
    "align_mean_low",  # the lower of the two sides' mean best-alignment cosines
    "align_mean_high",  # the higher of the same two
    "align_second_low",  # the lower of the two sides' second-worst: one loose word ("call", "name") is common
    "unshared_min_low",  # the worst alignment among content words whose stem the other side lacks, lower side
    "unshared_min_high",  # the same, higher side
    "unshared_mean_low",  # the mean alignment of those words, lower side
    "unaligned_loose",  # content words aligned below LOOSE, the larger count of the two sides (capped)
    "unaligned_tight",  # content words aligned below TIGHT, the same
)
EMPTY_SIDE = 1.0  # a side with no content word (or no unshared one) has nothing unaligned
LOOSE, TIGHT = 0.5, 0.7  # cosines: below LOOSE a word has no counterpart; synonyms mostly align above TIGHT
COUNT_CAP = 3  # unaligned-word counts are capped: beyond this the pair is out of scope anyway
CACHE_SIZE = 1024  # edit questions kept; ~15 KB each (10 words x 384 float32), so ~15 MB at most


def content_mask(words: Sequence[str], stopwords: frozenset[str]) -> np.ndarray:
    """(n_words,) bool: the word has a letter or digit and is not a stopword."""
    return np.array([any(c.isalnum() for c in w) and w.lower() not in stopwords for w in words], dtype=bool)


def _side(best: np.ndarray, unshared: np.ndarray) -> list[float]:
    """[min, mean, second min, unshared min, unshared mean, count < LOOSE, count < TIGHT] of one side's
    (content words,) best cosines, `unshared` (content words,) marking those the other side lacks."""
    if len(best) == 0:
        return [EMPTY_SIDE] * 5 + [0.0, 0.0]
    ordered = np.sort(best)
    rest = best[unshared]
    return [
        float(ordered[0]),
        float(best.mean()),
        float(ordered[1]) if len(best) > 1 else EMPTY_SIDE,
        float(rest.min()) if len(rest) else EMPTY_SIDE,
        float(rest.mean()) if len(rest) else EMPTY_SIDE,
        float(min((best < LOOSE).sum(), COUNT_CAP)),
        float(min((best < TIGHT).sum(), COUNT_CAP)),
    ]


def _best(this: Words, other: Words, stopwords: frozenset[str], stem: Callable[[str], str]) -> list[float]:
    """_side of `this` against `other`: each content word's best cosine to any real word of the other."""
    (words, vectors), (other_words, other_vectors) = this, other
    content = content_mask(words, stopwords)
    real = content_mask(other_words, frozenset())  # (m,): punctuation out
    if not real.any():
        return _side(np.zeros(int(content.sum())), np.ones(int(content.sum()), dtype=bool))
    best = (vectors[content] @ other_vectors[real].T).max(axis=1)  # (content words,)
    other_stems = {stem(w) for w in other_words}
    unshared = np.array([stem(w) not in other_stems for w in np.array(words, dtype=object)[content]], dtype=bool)
    return _side(best, unshared)


def alignment_features(query: Words, edit: Words, stopwords: frozenset[str], stem: Callable[[str], str]) -> list[float]:
    """ALIGNMENT_FEATURES of one pair of word-vector sets (`stem`: the lexical features' stemmer)."""
    q, e = _best(query, edit, stopwords, stem), _best(edit, query, stopwords, stem)
    low, high = np.minimum(q, e), np.maximum(q, e)  # (7,) each
    return [low[0], high[0], low[1], high[1], low[2], low[3], high[3], low[4], high[5], high[6]]


class WordCache:
    """Word vectors of texts by text, least recently used dropped beyond `size` entries."""

    def __init__(self, encode: WordEncoder, size: int = CACHE_SIZE) -> None:
        self.encode = encode
        self.size = size
        self._entries: OrderedDict[str, Words] = OrderedDict()

    def get(self, texts: Sequence[str]) -> list[Words]:
        """Words of each text; the missing ones encoded in one call."""
        missing = sorted({t for t in texts if t not in self._entries})
        if missing:
            for text, words in zip(missing, self.encode(missing), strict=True):
                self._entries[text] = words
        found = []
        for text in texts:
            self._entries.move_to_end(text)
            found.append(self._entries[text])
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return found

    def clear(self) -> None:
        self._entries.clear()
