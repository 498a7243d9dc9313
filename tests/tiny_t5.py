"""A tiny random-weight T5 and its tokenizer, built in code: seq2seq readers are tested on it
because no real T5 weights can be installed here (no network).

`make_tiny_t5(folder)` writes a folder that AutoModelForSeq2SeqLM / AutoTokenizer load offline
(`local_files_only=True`); the session fixture `tiny_t5` builds one per test session. Use it in a
test module with `from tests.tiny_t5 import tiny_t5  # noqa: F401`.

The tokenizer is word-level (lowercased; words, punctuation runs and single digits), T5's special
ids: <pad> 0 (also the decoder start), </s> 1 (appended to every input), <unk> 2.
"""

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

SPECIAL = ["<pad>", "</s>", "<unk>"]
MARKERS = ["question:", "title:", "context:"]  # FiD's input fields, one token each
WORDS = (  # common words and the facts of the test corpora
    "the a an of in on at to by for from with and or is was were are be been has had have it its this that "
    "who what when where which why how many much did does do year years built born held every spring town "
    "river bridge city village mayor festival lighthouse cheese caves months nine granite grey engineer "
    "lantern parade visitors small inhabitants elected automated point harrow marrow tessel quenmoor zorblat "
    "velt tomas brell ilse varga yes no not answer question title context"
)
PUNCTUATION = [".", ",", "?", "!", ":", ";", "'", '"', "-", "(", ")"]
DIGITS = [str(d) for d in range(10)]
VOCAB = [*SPECIAL, *MARKERS, *dict.fromkeys(WORDS.split()), *PUNCTUATION, *DIGITS]


def make_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(WordLevel({word: i for i, word in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(True)])
    tok.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.add_tokens(MARKERS)  # matched before pre-tokenization, so "question:" stays one token
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def make_tiny_t5(folder: Path, seed: int = 0) -> Path:
    """Write a tiny random T5 (d_model 32, 2+2 layers, 4 heads) and its tokenizer to `folder`;
    the same seed gives the same weights."""
    tokenizer = make_tokenizer()
    config = T5Config(
        vocab_size=len(VOCAB),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        initializer_factor=10.0,  # larger random weights: greedy outputs vary with the input, not one token
        pad_token_id=0,
        eos_token_id=1,
    )
    config.decoder_start_token_id = 0  # T5's convention: decoding starts from <pad>
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    model.generation_config.decoder_start_token_id = 0
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 1
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a tiny random T5 and its tokenizer, built once per test session."""
    return make_tiny_t5(tmp_path_factory.mktemp("tiny-t5"))
