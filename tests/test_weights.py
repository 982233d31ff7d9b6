"""Update checks: a malformed update (keys, shapes, non-finite, dtype) is refused by name."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import UpdateError
from common.weights import check_update, num_bytes

pytestmark = pytest.mark.unit

REF = {"a": np.zeros((2, 3), np.float32), "b": np.zeros(4, np.int64)}


def test_matching_update_passes_and_bytes_counted() -> None:
    check_update(REF, {"a": np.ones((2, 3), np.float32), "b": np.ones(4, np.int64)}, "site 'x'")
    assert num_bytes(REF) == 2 * 3 * 4 + 4 * 8


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"a": np.zeros((2, 3))}, "lacks tensor 'b'"),
        ({**REF, "c": np.zeros(1)}, "unexpected tensor 'c'"),
        ({"a": np.zeros((3, 2)), "b": REF["b"]}, r"'a' has shape \(3, 2\), expected \(2, 3\)"),
        ({"a": np.full((2, 3), np.nan), "b": REF["b"]}, "'a' has non-finite values.*'train.lr'"),
        ({"a": np.full((2, 3), np.inf), "b": REF["b"]}, "'a' has non-finite values"),
        ({"a": np.array([["x"] * 3] * 2), "b": REF["b"]}, "non-numeric"),
    ],
)
def test_malformed_updates_are_named(update: dict, message: str) -> None:
    with pytest.raises(UpdateError, match=f"site 'x'.*{message}|{message}"):
        check_update(REF, update, "site 'x'")
