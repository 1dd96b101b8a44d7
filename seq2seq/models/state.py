"""Decoder state shared by every architecture: nested dicts/lists/tuples of tensors.

The one rule: every tensor in a state keeps the batch on dim 0. Beam search then reorders
(or expands) any model's state the same way, without knowing what is inside.

One exception keeps beam search from copying what never changes: ``SharedRows`` holds
tensors with one entry per *group* of consecutive rows (the encoder memory of a sentence,
which all its beams share). Reordering it only re-maps rows to entries; the entries are
copied only when sentences leave the batch (or for a reorder that breaks the grouping).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class SharedRows:
    """Tensors ``entries`` (nested, each [E, ...]) standing for ``entries[e]`` repeated for
    ``group`` consecutive rows: row r reads entry r // group, and the state has E * group rows.

    ``reorder_rows(indices)`` keeps this form whenever the new rows are again whole groups of one
    entry each (beam search: each sentence's beams stay together, in sentence order), copying
    the entries only if their set or order changes; otherwise it falls back to one entry per
    row (``group`` 1), which is what plain index_select would give.
    """

    __slots__ = ("entries", "group")

    def __init__(self, entries: Any, group: int = 1):
        self.entries = entries
        self.group = group

    @property
    def num_entries(self) -> int:
        return _first_tensor(self.entries).size(0)

    def expanded(self) -> Any:
        """The entries with one row per state row (a copy when ``group`` > 1)."""
        if self.group == 1:
            return self.entries
        return _map(self.entries, lambda t: t.repeat_interleave(self.group, dim=0))

    def reorder_rows(self, indices: Tensor) -> SharedRows:
        num_entries = self.num_entries
        rows = indices.numel()
        entry_of_row = indices // self.group  # which entry each new row reads
        if rows % num_entries == 0:
            group = rows // num_entries
            canonical = torch.arange(num_entries, device=indices.device).repeat_interleave(group)
            if torch.equal(entry_of_row, canonical):  # same entries, (new) group size
                return SharedRows(self.entries, group)
        if rows % self.group == 0:
            groups = entry_of_row.view(-1, self.group)
            if torch.equal(groups, groups[:, :1].expand_as(groups)):  # whole groups: pick entries
                return SharedRows(reorder_state(self.entries, groups[:, 0]), self.group)
        return SharedRows(reorder_state(self.entries, entry_of_row), 1)


def _first_tensor(node: Any) -> Tensor:
    if isinstance(node, Tensor):
        return node
    for value in node.values() if isinstance(node, dict) else node:
        found = _first_tensor(value)
        if found is not None:
            return found
    return None


def _map(node: Any, fn) -> Any:
    match node:
        case torch.Tensor():
            return fn(node)
        case dict():
            return {key: _map(value, fn) for key, value in node.items()}
        case list() | tuple():
            return type(node)(_map(value, fn) for value in node)
        case _:
            return node


def reorder_state(state: Any, indices: Tensor) -> Any:
    """Pick rows ``indices`` (dim 0) of every tensor in ``state``; other leaves (ints) are kept.

    A tensor stored twice (dot attention's keys are its values) is selected once and stays
    shared: beam search reorders the state at every step, so copies would cost twice.
    Objects with a ``reorder_rows(indices)`` method (``SharedRows``, the Transformer's key/value
    cache) reorder themselves.
    """
    selected: dict[int, Tensor] = {}

    def reorder(node: Any) -> Any:
        match node:
            case torch.Tensor():
                if id(node) not in selected:
                    selected[id(node)] = node.index_select(0, indices)
                return selected[id(node)]
            case _ if hasattr(node, "reorder_rows"):
                return node.reorder_rows(indices)
            case dict():
                return {key: reorder(value) for key, value in node.items()}
            case list() | tuple():
                return type(node)(reorder(value) for value in node)
            case _:
                return node

    return reorder(state)
