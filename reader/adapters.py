"""Parameter-efficient adapters of the generator — LoRA, (IA)³ and prompt tuning — served from
peft's own folder format, many at once over one frozen base model.

An adapter folder is what `peft` saves (`adapter_config.json`, `adapter_model.safetensors`) plus
`ragserve.json`: the fixed prompt text the adapter was trained with and what it was trained on.
Adapters trained elsewhere with peft load too (their prompt is then the base model's few-shot one).

Serving does not go through peft: a peft model has one active adapter at a time, while here every
row of a decoding batch may use its own (continuous batching mixes requests). The linear layers an
adapter touches are wrapped once in `AdaptedLinear`; during a forward pass each wrapped layer asks
`rows()` which adapter each batch row uses and applies that adapter's weights to those rows:

    LoRA    y = W x + s · B (A x)          s = alpha / r   (alpha / sqrt(r) with rsLoRA)
    (IA)³   y = l ⊙ (W x)  or  y = W (l ⊙ x)  (feed-forward layers scale their input)
    prompt  n learned embeddings before the prompt: part of the cached prefix (reader/lm.py)

The base weights are never changed, so rows without an adapter get exactly the base model. An
adapter's tensors live in the `Adapter` object, which a batch row holds: replacing or unloading an
adapter never disturbs a request that is already decoding with it.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers import PreTrainedModel

from ragserve.errors import InvalidAdapterError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
RAGSERVE_INFO = "ragserve.json"
_PEFT_PREFIX = "base_model.model."


class ModuleWeights(Protocol):
    """One adapter's weights for one linear layer."""

    def before(self, x: Tensor) -> Tensor:
        """The layer's input for the rows of this adapter, (R, ..., in)."""

    def after(self, x: Tensor, y: Tensor) -> Tensor:
        """The layer's output for these rows, given their input x and the base output y."""

    def tensors(self) -> list[Tensor]: ...

    def to(self, dtype: torch.dtype) -> ModuleWeights: ...


@dataclass(frozen=True, slots=True)
class LoraWeights:
    a: Tensor  # (r, in)
    b: Tensor  # (out, r)
    scale: float

    def before(self, x: Tensor) -> Tensor:
        return x

    def after(self, x: Tensor, y: Tensor) -> Tensor:
        return y + (x @ self.a.T @ self.b.T) * self.scale  # (R, ..., out)

    def tensors(self) -> list[Tensor]:
        return [self.a, self.b]

    def to(self, dtype: torch.dtype) -> LoraWeights:
        return LoraWeights(self.a.to(dtype), self.b.to(dtype), self.scale)


@dataclass(frozen=True, slots=True)
class Ia3Weights:
    scale: Tensor  # (in,) when on_input, else (out,)
    on_input: bool  # feed-forward layers scale what goes in, the others what comes out

    def before(self, x: Tensor) -> Tensor:
        return x * self.scale if self.on_input else x

    def after(self, x: Tensor, y: Tensor) -> Tensor:
        return y if self.on_input else y * self.scale

    def tensors(self) -> list[Tensor]:
        return [self.scale]

    def to(self, dtype: torch.dtype) -> Ia3Weights:
        return Ia3Weights(self.scale.to(dtype), self.on_input)


@dataclass(eq=False)
class Adapter:
    """A loaded adapter. Compared by identity: a reloaded adapter of the same name is another one."""

    name: str
    method: str  # a key of METHODS
    modules: dict[str, ModuleWeights]  # module path in the base model -> its weights
    virtual_tokens: Tensor | None  # (n, D) prompt tuning: embeddings before the prompt
    prefix: str | None  # fixed prompt text it was trained with; None: the base model's prompt
    info: dict[str, Any]
    path: Path
    key: str = field(default_factory=lambda: uuid.uuid4().hex)  # names its cached prefix KV

    @property
    def parameters(self) -> int:
        count = sum(t.numel() for w in self.modules.values() for t in w.tensors())
        return count + (self.virtual_tokens.numel() if self.virtual_tokens is not None else 0)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "method": self.method,
            "parameters": self.parameters,
            "modules": len(self.modules),
            "virtual_tokens": 0 if self.virtual_tokens is None else int(self.virtual_tokens.shape[0]),
            "path": str(self.path),
            "trained": self.info.get("training"),
        }


# --- which adapter each row of the current forward pass uses -----------------------------------------


@dataclass(frozen=True, slots=True)
class _Group:
    adapter: Adapter
    rows: Tensor | None  # (R,) batch rows that use it; None: every row


_active = threading.local()


@contextmanager
def rows(adapters: Sequence[Adapter | None]) -> Iterator[None]:
    """During the block, forward passes apply adapters[b] to batch row b (None: base model)."""
    groups: list[_Group] = []
    distinct = {id(a): a for a in adapters if a is not None}
    for adapter in distinct.values():
        if all(a is adapter for a in adapters):
            groups.append(_Group(adapter, None))
        else:
            groups.append(_Group(adapter, torch.tensor([b for b, a in enumerate(adapters) if a is adapter])))
    previous = getattr(_active, "groups", None), getattr(_active, "batch", None)
    _active.groups, _active.batch = groups, len(adapters)
    try:
        yield
    finally:
        _active.groups, _active.batch = previous


class AdaptedLinear(nn.Module):
    """A frozen linear layer that applies, per batch row, the adapter that row uses."""

    def __init__(self, name: str, base: nn.Linear) -> None:
        super().__init__()
        self.name = name
        self.base = base

    def forward(self, x: Tensor) -> Tensor:
        groups: list[_Group] | None = getattr(_active, "groups", None)
        touched = [(g, w) for g in groups or () if (w := g.adapter.modules.get(self.name)) is not None]
        if not touched:
            out: Tensor = self.base(x)
            return out
        assert x.shape[0] == _active.batch, "the adapters of the rows do not match the batch"
        for group, weights in touched:  # (IA)³ of feed-forward layers scales the input
            if group.rows is None:
                x = weights.before(x)
            else:
                x = x.clone()
                x[group.rows] = weights.before(x[group.rows])
        y: Tensor = self.base(x)  # (B, ..., out)
        for group, weights in touched:
            if group.rows is None:
                y = weights.after(x, y)
            else:
                y = y.clone()
                y[group.rows] = weights.after(x[group.rows], y[group.rows])
        return y


def install(model: nn.Module, names: Sequence[str]) -> None:
    """Wrap the named linear layers of `model` in AdaptedLinear (those already wrapped stay)."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = getattr(parent, child)
        if isinstance(layer, AdaptedLinear):
            continue
        assert isinstance(layer, nn.Linear), f"{name} is not a linear layer"
        setattr(parent, child, AdaptedLinear(name, layer))


def base_linear(model: nn.Module, name: str) -> nn.Linear | None:
    """The (unwrapped) linear layer at `name`, or None if there is none."""
    try:
        layer = model.get_submodule(name)
    except AttributeError:
        return None
    layer = layer.base if isinstance(layer, AdaptedLinear) else layer
    return layer if isinstance(layer, nn.Linear) else None


# --- reading adapter folders ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Parsed:
    modules: dict[str, ModuleWeights]
    virtual_tokens: Tensor | None


Parser = Callable[[Mapping[str, Any], Mapping[str, Tensor], PreTrainedModel], Parsed]


def _module_tensors(tensors: Mapping[str, Tensor], suffixes: Sequence[str]) -> dict[str, dict[str, Tensor]]:
    """{module path: {suffix: tensor}} for keys `base_model.model.<module>.<suffix>`."""
    out: dict[str, dict[str, Tensor]] = {}
    for key, tensor in tensors.items():
        path = key.removeprefix(_PEFT_PREFIX)
        suffix = next((s for s in suffixes if path.endswith("." + s)), None)
        if not key.startswith(_PEFT_PREFIX) or suffix is None:
            raise InvalidAdapterError(f"unexpected tensor {key!r} in {ADAPTER_WEIGHTS}")
        out.setdefault(path.removesuffix("." + suffix), {})[suffix] = tensor
    if not out:
        raise InvalidAdapterError(f"{ADAPTER_WEIGHTS} holds no adapter weights")
    return out


def _linear(model: nn.Module, name: str) -> nn.Linear:
    layer = base_linear(model, name)
    if layer is None:
        raise InvalidAdapterError(f"the adapter targets {name!r}, which is no linear layer of this generator")
    return layer


def _refuse(config: Mapping[str, Any], unsupported: Mapping[str, object]) -> None:
    for option, plain in unsupported.items():
        if config.get(option) not in (plain, None, {}, []):
            raise InvalidAdapterError(f"adapter option {option}={config[option]!r} is not supported")


def _parse_lora(config: Mapping[str, Any], tensors: Mapping[str, Tensor], model: PreTrainedModel) -> Parsed:
    _refuse(
        config,
        {"use_dora": False, "bias": "none", "fan_in_fan_out": False, "modules_to_save": None, "lora_bias": False},
    )
    _refuse(config, {"alpha_pattern": {}, "rank_pattern": {}, "layer_replication": None})
    modules: dict[str, ModuleWeights] = {}
    for name, parts in _module_tensors(tensors, ("lora_A.weight", "lora_B.weight")).items():
        layer = _linear(model, name)
        if set(parts) != {"lora_A.weight", "lora_B.weight"}:
            raise InvalidAdapterError(f"LoRA layer {name!r} lacks lora_A or lora_B")
        a, b = parts["lora_A.weight"], parts["lora_B.weight"]
        r = a.shape[0]
        if a.shape != (r, layer.in_features) or b.shape != (layer.out_features, r):
            raise InvalidAdapterError(f"LoRA shapes {tuple(a.shape)}, {tuple(b.shape)} do not fit {name!r}")
        alpha = float(config.get("lora_alpha", 8))
        scale = alpha / r**0.5 if config.get("use_rslora") else alpha / r
        modules[name] = LoraWeights(a, b, scale)
    return Parsed(modules, None)


def _parse_ia3(config: Mapping[str, Any], tensors: Mapping[str, Tensor], model: PreTrainedModel) -> Parsed:
    _refuse(config, {"fan_in_fan_out": False, "modules_to_save": None})
    modules: dict[str, ModuleWeights] = {}
    for name, parts in _module_tensors(tensors, ("ia3_l",)).items():
        layer, scale = _linear(model, name), parts["ia3_l"]
        # peft stores a feed-forward layer's vector as (1, in), any other layer's as (out, 1)
        if scale.shape == (1, layer.in_features) and scale.shape != (layer.out_features, 1):
            modules[name] = Ia3Weights(scale.flatten(), on_input=True)
        elif scale.shape == (layer.out_features, 1):
            modules[name] = Ia3Weights(scale.flatten(), on_input=False)
        else:
            raise InvalidAdapterError(f"(IA)³ vector of shape {tuple(scale.shape)} does not fit {name!r}")
    return Parsed(modules, None)


def _parse_prompt(config: Mapping[str, Any], tensors: Mapping[str, Tensor], model: PreTrainedModel) -> Parsed:
    if set(tensors) != {"prompt_embeddings"}:
        raise InvalidAdapterError(f"a prompt-tuning adapter holds only prompt_embeddings, not {sorted(tensors)}")
    embeddings = tensors["prompt_embeddings"]
    width = _embedding_weight(model).shape[1]
    if embeddings.ndim != 2 or embeddings.shape[1] != width or embeddings.shape[0] < 1:
        raise InvalidAdapterError(f"prompt embeddings of shape {tuple(embeddings.shape)} do not fit width {width}")
    if int(config.get("num_transformer_submodules") or 1) != 1:
        raise InvalidAdapterError("prompt tuning for encoder-decoder models is not supported")
    return Parsed({}, embeddings)


# peft_type -> (our method name, parser). Training builds peft configs for the same names (reader/adapter_train.py).
METHODS: dict[str, tuple[str, Parser]] = {
    "LORA": ("lora", _parse_lora),
    "IA3": ("ia3", _parse_ia3),
    "PROMPT_TUNING": ("prompt", _parse_prompt),
}


def _embedding_weight(model: PreTrainedModel) -> Tensor:
    weight = model.get_input_embeddings().weight  # (V, D)
    assert isinstance(weight, Tensor)
    return weight


def read_info(folder: Path) -> dict[str, Any]:
    path = folder / RAGSERVE_INFO
    if not path.is_file():
        return {}
    info = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(info, dict):
        raise InvalidAdapterError(f"{path}: expected a JSON object")
    return info


def load_adapter(folder: Path, name: str, model: PreTrainedModel, base_id: str | None = None) -> Adapter:
    """Read and check an adapter folder against `model` (its weights cast to the model's dtype).
    `base_id` (see `Generator.base_id`) must match the base the adapter was trained on, where
    the adapter records one."""
    config_path, weights_path = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not config_path.is_file() or not weights_path.is_file():
        raise InvalidAdapterError(f"{folder}: not an adapter folder (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        tensors = load_file(weights_path, device=str(model.device))  # safetensors: plain tensors, no code
        info = read_info(folder)
    except (OSError, ValueError, SafetensorError) as exc:
        raise InvalidAdapterError(f"{folder}: unreadable adapter ({exc})") from exc
    if not isinstance(config, dict):
        raise InvalidAdapterError(f"{config_path}: expected a JSON object")
    kind = config.get("peft_type")
    if kind not in METHODS:
        raise InvalidAdapterError(f"{folder}: peft_type {kind!r} is not served; one of {', '.join(METHODS)}")
    trained_on = info.get("base_id")
    if base_id is not None and trained_on is not None and trained_on != base_id:
        raise InvalidAdapterError(f"adapter {name!r} was trained on generator {trained_on!r}, not {base_id!r}")
    method, parse = METHODS[kind]
    try:
        parsed = parse(config, tensors, model)
    except (TypeError, ValueError) as exc:  # an option of the wrong type, e.g. "lora_alpha": "x"
        raise InvalidAdapterError(f"{config_path}: bad adapter option ({exc})") from exc
    dtype = _embedding_weight(model).dtype
    modules = {k: w.to(dtype) for k, w in parsed.modules.items()}
    virtual = parsed.virtual_tokens.to(dtype) if parsed.virtual_tokens is not None else None
    prefix = info.get("prefix")
    if prefix is not None and not isinstance(prefix, str):
        raise InvalidAdapterError(f"{folder}/{RAGSERVE_INFO}: prefix must be a string")
    return Adapter(name, method, modules, virtual, prefix, info, folder)
