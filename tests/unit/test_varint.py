"""Varints of the compact wire structures (sdk/varint.py)."""

from __future__ import annotations

import pytest
from discover.sdk import varint
from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**35 - 1), max_size=20))
def test_round_trip_and_length(values):
    out = bytearray()
    for v in values:
        varint.put(out, v)
    assert len(out) == sum(max(1, -(-v.bit_length() // 7)) for v in values)
    pos = 0
    for v in values:
        got, pos = varint.get(out, pos)
        assert got == v
    assert pos == len(out)


def test_small_values_take_one_byte():
    out = bytearray()
    varint.put(out, 127)
    varint.put(out, 128)
    assert bytes(out) == b"\x7f\x80\x01"


@pytest.mark.parametrize("data", [b"", b"\x80", b"\xff\xff", b"\xff" * 6])
def test_truncated_or_endless_varints_raise_value_error(data):
    with pytest.raises(ValueError):
        varint.get(data, 0)


def test_negative_values_are_refused():
    with pytest.raises(ValueError):
        varint.put(bytearray(), -1)
