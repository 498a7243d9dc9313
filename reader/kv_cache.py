"""A KV cache that appends into spare room instead of concatenating.

Hugging Face's `DynamicLayer` grows by `torch.cat`, so every decoding step copies the whole cache
of every row: with 8 rows of ~520 positions of SmolLM2-135M a step cost 61 ms against 37 ms for one
row (exploratory probe, docs/performance.md). `GrowingLayer` keeps keys and values in buffers with
room for `GROW_COLUMNS` more positions, writes only the new columns, and reallocates (one copy)
when the room is used up. Its `keys` and `values` are views of those buffers, so everything that
reads a `DynamicLayer` reads it the same way.
"""

from collections.abc import Sequence

from torch import Tensor
from transformers.cache_utils import DynamicCache, DynamicLayer

GROW_COLUMNS = 64  # room added on each reallocation: one answer of up to 64 tokens never copies


class GrowingLayer(DynamicLayer):
    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._room: tuple[Tensor, Tensor] | None = None  # (B, H, capacity, Dh) buffers
        self._made: Tensor | None = None  # the `keys` view this layer last handed out
        self._held = 0  # positions written

    @classmethod
    def stacked(cls, parts: Sequence[tuple[Tensor, Tensor]], width: int) -> "GrowingLayer":
        """The rows of several (b, H, s, Dh) (keys, values) pairs one after another, each
        right-aligned in `width` positions; columns to their left are zeros (padding to mask out)."""
        (keys0, values0), rows = parts[0], sum(k.shape[0] for k, _ in parts)
        layer = cls()
        layer.lazy_initialization(keys0, values0)
        layer._allocate(rows, width, keys0, values0)
        keys, values = layer._expose(width)
        keys.zero_()
        values.zero_()
        at = 0
        for k, v in parts:
            assert k.shape[2] <= width and v.shape[2] <= width, "a part is wider than the stack"
            keys[at : at + k.shape[0], :, width - k.shape[2] :] = k
            values[at : at + v.shape[0], :, width - v.shape[2] :] = v
            at += k.shape[0]
        return layer

    def update(
        self, key_states: Tensor, value_states: Tensor, *args: object, **kwargs: object
    ) -> tuple[Tensor, Tensor]:
        """Append (B, H, n, Dh) keys and values -> all keys and values so far, (B, H, S+n, Dh) each."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        # Still the view handed out last time? (DynamicLayer methods such as crop replace `keys`.)
        ours = self._room is not None and self.keys is self._made
        held = self._held if ours else _positions(self.keys)
        needed = held + key_states.shape[2]
        if not (ours and self._capacity(key_states.shape[0]) >= needed):
            old_keys, old_values = self.keys, self.values
            self._allocate(key_states.shape[0], needed, key_states, value_states)
            if held:
                assert old_keys is not None and old_values is not None
                keys, values = self._expose(held)
                keys.copy_(old_keys)
                values.copy_(old_values)
        keys, values = self._expose(needed)
        keys[:, :, held:] = key_states
        values[:, :, held:] = value_states
        return keys, values

    def _capacity(self, rows: int) -> int:
        if self._room is None or self._room[0].shape[0] != rows:
            return 0
        return int(self._room[0].shape[2])

    def _allocate(self, rows: int, needed: int, like_keys: Tensor, like_values: Tensor) -> None:
        """New, unfilled buffers of `rows` rows with room for `needed` + GROW_COLUMNS positions."""
        capacity = needed + GROW_COLUMNS
        keys = like_keys.new_empty((rows, like_keys.shape[1], capacity, like_keys.shape[3]))
        values = like_values.new_empty((rows, like_values.shape[1], capacity, like_values.shape[3]))
        self._room = (keys, values)

    def _expose(self, width: int) -> tuple[Tensor, Tensor]:
        """Make the first `width` positions of the buffers this layer's keys and values."""
        assert self._room is not None
        keys, values = self._room[0][:, :, :width], self._room[1][:, :, :width]
        self.keys, self.values, self._made, self._held = keys, values, keys, width
        return keys, values


def _positions(keys: Tensor | None) -> int:
    return int(keys.shape[2]) if keys is not None and keys.dim() == 4 else 0


def growing_cache(kv: Sequence[tuple[Tensor, Tensor]] = ()) -> DynamicCache:
    """A `DynamicCache` of `GrowingLayer`s, holding per layer (keys, values) (B, H, S, Dh) if given."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowingLayer  # layers the model adds on its first update
    for index, (keys, values) in enumerate(kv):
        cache.update(keys, values, index)
    return cache


def of_layers(layers: Sequence[GrowingLayer]) -> DynamicCache:
    """A `DynamicCache` made of ready layers (e.g. from `GrowingLayer.stacked`)."""
    cache = growing_cache()
    cache.layers = list(layers)
    return cache
