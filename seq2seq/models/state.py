"""Decoder state shared by every architecture: nested dicts/lists/tuples of tensors.

The one rule: every tensor in a state keeps the batch on dim 0. Beam search then reorders
(or expands) any model's state the same way, without knowing what is inside.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def reorder_state(state: Any, indices: Tensor) -> Any:
    """Pick rows ``indices`` (dim 0) of every tensor in ``state``; other leaves (ints) are kept.

    A tensor stored twice (dot attention's keys are its values) is selected once and stays
    shared: beam search reorders the state at every step, so copies would cost twice.
    """
    selected: dict[int, Tensor] = {}

    def reorder(node: Any) -> Any:
        match node:
            case torch.Tensor():
                if id(node) not in selected:
                    selected[id(node)] = node.index_select(0, indices)
                return selected[id(node)]
            case dict():
                return {key: reorder(value) for key, value in node.items()}
            case list() | tuple():
                return type(node)(reorder(value) for value in node)
            case _:
                return node

    return reorder(state)
