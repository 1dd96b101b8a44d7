"""Decoder state shared by every architecture: nested dicts/lists/tuples of tensors.

The one rule: every tensor in a state keeps the batch on dim 0. Beam search then reorders
(or expands) any model's state the same way, without knowing what is inside.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def reorder_state(state: Any, indices: Tensor) -> Any:
    """Pick rows ``indices`` (dim 0) of every tensor in ``state``; other leaves (ints) are kept."""
    match state:
        case torch.Tensor():
            return state.index_select(0, indices)
        case dict():
            return {key: reorder_state(value, indices) for key, value in state.items()}
        case list() | tuple():
            return type(state)(reorder_state(value, indices) for value in state)
        case _:
            return state
