"""TinyModelConfig: the shape checks and the key/value heads that follow the heads."""

from __future__ import annotations

import pytest

from searchr1.toy.models import TinyModelConfig


def test_key_value_heads_default_to_the_heads() -> None:
    assert TinyModelConfig().num_kv_heads == TinyModelConfig().num_heads == 4
    assert TinyModelConfig(num_heads=2).num_kv_heads == 2
    assert TinyModelConfig(num_heads=4, num_kv_heads=2).num_kv_heads == 2  # GQA kept


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden_size": 100, "num_heads": 3}, "hidden_size must be a multiple of num_heads"),
        ({"num_heads": 4, "num_kv_heads": 3}, "num_heads must be a multiple of num_kv_heads"),
    ],
)
def test_a_shape_that_does_not_divide_is_refused(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TinyModelConfig(**kwargs)
