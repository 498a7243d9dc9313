"""The growing KV cache holds exactly what Hugging Face's concatenating one holds."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.cache_utils import DynamicLayer

from reader.kv_cache import GROW_COLUMNS, GrowingLayer, growing_cache


def kv(rows: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 3, length, 4, generator=g), torch.randn(rows, 3, length, 5, generator=g)  # (B, H, S, Dh)


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 2 * GROW_COLUMNS), min_size=1, max_size=12), rows=st.integers(1, 3))
def test_appends_equal_concatenation(lengths: list[int], rows: int) -> None:
    growing, plain = GrowingLayer(), DynamicLayer()
    for i, n in enumerate(lengths):
        keys, values = kv(rows, n, i)
        got = growing.update(keys, values)
        want = plain.update(keys, values)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert torch.equal(growing.keys, plain.keys) and torch.equal(growing.values, plain.values)


def test_a_step_writes_in_place_until_the_room_is_used_up() -> None:
    layer = GrowingLayer()
    layer.update(*kv(2, 10, 0))
    buffer = layer.keys.data_ptr()
    for step in range(GROW_COLUMNS):
        layer.update(*kv(2, 1, step + 1))
        assert layer.keys.data_ptr() == buffer  # no copy of the cache
    layer.update(*kv(2, 1, 99))
    assert layer.keys.data_ptr() != buffer and layer.keys.shape == (2, 3, 10 + GROW_COLUMNS + 1, 4)


def test_a_cropped_layer_goes_on_from_the_cropped_length() -> None:
    growing, plain = GrowingLayer(), DynamicLayer()
    for layer in (growing, plain):
        layer.update(*kv(1, 8, 0))
        layer.crop(-3)
        layer.update(*kv(1, 2, 1))
    assert torch.equal(growing.keys, plain.keys) and torch.equal(growing.values, plain.values)


def test_stacked_rows_are_right_aligned_over_zero_padding() -> None:
    (ka, va), (kb, vb) = kv(2, 3, 0), kv(1, 5, 1)
    layer = GrowingLayer.stacked([(ka, va), (kb, vb)], width=5)
    assert layer.keys.shape == (3, 3, 5, 4) and layer.values.shape == (3, 3, 5, 5)
    assert torch.equal(layer.keys[:2, :, 2:], ka) and torch.equal(layer.keys[2:], kb)
    assert not layer.keys[:2, :, :2].any() and not layer.values[:2, :, :2].any()
    after, _ = layer.update(*kv(3, 1, 2))
    assert after.shape == (3, 3, 6, 4) and torch.equal(after[:2, :, 2:5], ka)


def test_a_cache_holds_its_layers_and_grows_new_ones() -> None:
    cache = growing_cache([kv(1, 4, 0), kv(1, 4, 1)])
    assert len(cache.layers) == 2 and all(isinstance(layer, GrowingLayer) for layer in cache.layers)
    assert cache.get_seq_length() == 4
    cache.update(*kv(1, 1, 2), 2)  # a layer the cache had no data for
    assert isinstance(cache.layers[2], GrowingLayer)
