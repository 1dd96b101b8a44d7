"""The interface every encoder-decoder offers the rest of attn: what training, search,
translation and ensembles may call, and nothing else.

Both families (``RNNSeq2Seq``, ``Transformer``) implement it, and so does
``decoding.ensemble.Ensemble``; ``build_model`` returns it, and the searches are typed
against it. It is a Protocol (checked by shape, not by inheritance), so a test's toy model
qualifies by having the same members.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn


@runtime_checkable
class Seq2SeqModel(Protocol):
    tgt_vocab_size: int
    # The longest sequence either side can read (learned positions end), None for any length.
    max_positions: int | None

    def encode(self, src: Tensor) -> Any:
        """src [B,S] (PAD-padded piece ids ending in EOS) -> the encoder's output, run once per batch."""

    def init_state(self, encoded: Any) -> Any:
        """The decoder's state before the first step: nested dicts/lists of tensors, batch on dim 0."""

    def step(self, prev_tokens: Tensor, state: Any) -> tuple[Tensor, Any, Tensor | None]:
        """One target position: prev_tokens [B] -> (logits [B,V], new state, attention [B,S] or None)."""

    def reorder(self, state: Any, indices: Tensor) -> Any:
        """The state of rows ``indices`` [B'] (beam search's survivors); the old one may be overwritten."""

    def forward(self, src: Tensor, tgt_in: Tensor, return_attention: bool = False) -> Any:
        """Teacher forcing: logits [B,T,V] (and attention [B,T,S] when asked)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def parameters(self, recurse: bool = True) -> Any: ...

    def modules(self) -> Any: ...


class TrainableModel(Seq2SeqModel, Protocol):
    """What training adds: the config it was built from, both vocabularies, and the output
    layer the loss projects ``forward(..., features_only=True)`` through. Training also passes
    ``host_lengths``, the source lengths on the CPU, to ``forward``."""

    config: Any
    src_vocab_size: int

    @property
    def output_layer(self) -> nn.Linear: ...
