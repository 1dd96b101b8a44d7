"""Decoding with CTranslate2 (``attn translate --engine ctranslate2``): the same Transformer,
searched by a C++ inference engine.

Why a second engine: at the decoder's small matrices (64 sentences, d = 256) much of
PyTorch's time per step goes to dispatching dozens of small ops from Python. CTranslate2,
OpenNMT's inference engine, runs the whole search in C++, faster than attn's own search
(``make bench``; figures in the README). It knows the standard Transformer, so ``convert`` copies an attn
Transformer's weights into its layout (the layouts already match: fused QKV, fused
cross-attention K/V, tied output); nothing is retrained, and the scores it gives a
translation equal attn's (``tests/test_ctranslate2_engine.py``).

What differs from attn's own search, and why:
- Beam search divides a finished hypothesis's log-prob by (pieces + 1) ** alpha (fairseq's
  and OpenNMT-py's normalisation); attn's divides by GNMT's ((5 + n) / 6) ** alpha, which
  CTranslate2 does not offer. Greedy search picks the same pieces, and its score is divided
  by GNMT's penalty here, as attn's is.
- Log-probs are renormalised over the pieces a step allows (never PAD or BOS, no EOS before
  min_len); attn masks them without renormalising. For a trained model, which gives those
  pieces almost nothing, the two differ in the last digits.
- At the length limit (a * source length + b pieces) attn forces an EOS and scores it;
  CTranslate2 stops without one, so such an output's score lacks EOS's log-prob. Its
  limit is one per call, so sentences of a batch with different limits (max_len_a > 0)
  go in separate calls: smaller batches.
- Results do not depend on how sentences are batched in attn's search; here they may, in
  the last bits of the arithmetic, which can flip a near tie between two pieces.
- No sampling, attention weights, ensembles, bf16 or GPU: it refuses them by name.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from seq2seq.data.special import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from seq2seq.decoding.search_helpers import Hypothesis, gnmt_length_penalty
from seq2seq.errors import UserError
from seq2seq.models.transformer import Transformer, sinusoidal_positions

if TYPE_CHECKING:
    from seq2seq.data.tokenizer import Tokenizer
    from seq2seq.decoding.settings import TranslateSettings

INSTALL_HINT = "install it with: pip install 'attn[ctranslate2]'"
_LAYER_NORM_EPSILON = 1e-5  # torch.nn.LayerNorm's default, which attn's models use


def engine_for(model: nn.Module, tokenizer: Tokenizer, settings: TranslateSettings,
               device: torch.device | str = "cpu") -> CTranslate2Search | None:
    """The search that settings.engine asks for: None for attn's own (the Translator's
    default), else a ``CTranslate2Search``, or a one-line error saying what it cannot do."""
    if settings.engine == "torch":
        return None
    reason = unsupported(model, settings, torch.device(device))
    if reason is not None:
        raise UserError(f"--engine ctranslate2: {reason}; drop --engine to use attn's own search")
    return CTranslate2Search(model, tokenizer, settings)


def unsupported(model: nn.Module, settings: TranslateSettings, device: torch.device) -> str | None:
    """Why this model or these settings cannot decode with CTranslate2 (None: they can), as
    the first half of a one-line error."""
    if hasattr(model, "members"):
        return "it decodes one checkpoint, not an ensemble"
    if not isinstance(model, Transformer):
        return (f"it decodes Transformer models only, not model.arch {model.config.arch!r} with model.attention "
                f"{model.config.attention!r}")
    if model.config.attention != "scaled_dot":
        return f"it has no model.attention {model.config.attention!r} (it runs scaled_dot only)"
    for key, value, default in (("attention_normalizer", model.config.attention_normalizer, "softmax"),
                                ("gaussian_bias", model.config.gaussian_bias, False),
                                ("memory_slots", model.config.memory_slots, 0)):
        if value != default:
            return f"it has no model.{key} {value!r} (its attention is plain softmax)"
    checks = {
        "--sample": settings.sampling,
        "--alignments or --attention-plots": settings.return_attention,
        "bf16 (--precision, or else the checkpoint's decode.precision; pass --precision fp32)": settings.precision != "fp32",
        "--workers (it decodes one batch per CPU thread already)": settings.workers > 1,
        f"--device {device}": device.type != "cpu",
    }
    for option, asked in checks.items():
        if asked:
            return f"{option} is not supported with it"
    return None


def convert(model: Transformer, tokenizer: Tokenizer, max_positions: int) -> object:
    """A CTranslate2 ``TransformerSpec`` holding ``model``'s weights, ready to ``save``.

    ``max_positions``: rows of the position table (sinusoidal positions have no end, but
    CTranslate2 reads them from a table)."""
    from ctranslate2.specs import common_spec, transformer_spec

    cfg = model.config
    activation = {"relu": common_spec.Activation.RELU, "gelu": common_spec.Activation.GELU,
                  "silu": common_spec.Activation.SWISH}[cfg.activation]
    spec = transformer_spec.TransformerSpec.from_config(
        (cfg.encoder_layers, cfg.decoder_layers), cfg.heads, pre_norm=cfg.norm == "pre", activation=activation,
    )  # fmt: skip
    for side_spec, side in ((spec.encoder, model.encoder), (spec.decoder, model.decoder)):
        _set_inputs(side_spec, side.embed, cfg.hidden_dim, max_positions)
        if cfg.norm == "pre":
            _set_layer_norm(side_spec.layer_norm, side.final_norm)
    for layer_spec, layer in zip(spec.encoder.layer, model.encoder.layers):
        _set_self_attention(layer_spec.self_attention, layer)
        _set_feed_forward(layer_spec.ffn, layer)
    for layer_spec, layer in zip(spec.decoder.layer, model.decoder.layers):
        _set_self_attention(layer_spec.self_attention, layer)
        cross = layer.cross_attention
        for linear_spec, linear in zip(layer_spec.attention.linear, (cross.query, cross.key_value, cross.out)):
            _set_linear(linear_spec, linear)
        _set_layer_norm(layer_spec.attention.layer_norm, layer.cross_attention_residual.norm)
        _set_feed_forward(layer_spec.ffn, layer)
    spec.decoder.projection.weight = _numpy(model.decoder.output.weight)

    source, target = vocabularies(tokenizer)
    spec.register_source_vocabulary(source)
    spec.register_target_vocabulary(target)
    spec.config.unk_token, spec.config.bos_token, spec.config.eos_token = (target[i] for i in (UNK_ID, BOS_ID, EOS_ID))
    spec.config.decoder_start_token = target[BOS_ID]
    spec.config.add_source_bos = spec.config.add_source_eos = False  # the translator adds EOS itself
    spec.config.layer_norm_epsilon = _LAYER_NORM_EPSILON
    spec.validate()
    spec.optimize(quantization=None)
    return spec


class CTranslate2Search:
    """Decodes batches of source ids the way ``translator.decode_batch`` does, with CTranslate2.

    It decodes as many batches side by side as torch has threads, one thread each. Two
    threads on one batch would be faster alone, but not in a process where torch has used
    its OpenMP threads (loading the model does): CTranslate2 then shares torch's OpenMP
    runtime, which, seeing more threads than cores, puts them to sleep between every
    parallel region (several times slower; the README's benchmark notes say how much).
    """

    def __init__(self, model: Transformer, tokenizer: Tokenizer, settings: TranslateSettings):
        try:
            import ctranslate2
        except ImportError:
            raise UserError(f"--engine ctranslate2: the ctranslate2 package is not installed; {INSTALL_HINT}") from None
        self.settings = settings
        # Sources: up to max_source_len pieces + EOS, and their length limits count that EOS too
        # (as ``decode`` does); the decoder reads BOS and the pieces before the last.
        longest_source = settings.max_source_len + 1
        longest_output = math.floor(settings.max_len_a * longest_source + settings.max_len_b)
        positions = max(longest_source, longest_output) + 1  # one spare
        spec = convert(model, tokenizer, positions)
        with tempfile.TemporaryDirectory(prefix="attn-ct2-") as folder:
            spec.save(folder)  # then read back into memory: nothing is left on disk
            files = {path.name: path.read_bytes() for path in Path(folder).iterdir()}
        threads = torch.get_num_threads()
        self.translator = ctranslate2.Translator(
            "attn-model", device="cpu", files=files, inter_threads=threads, intra_threads=1)
        # It sets the OpenMP thread count it shares with torch to its intra_threads: give torch
        # its own back, or everything after (a second engine too) runs on one thread.
        torch.set_num_threads(threads)
        self.source_pieces, target_pieces = vocabularies(tokenizer)
        self.target_ids = {piece: i for i, piece in enumerate(target_pieces)}
        # attn's search never emits PAD or BOS (search_helpers.restrict_next_tokens)
        self.never = [[target_pieces[PAD_ID]], [target_pieces[BOS_ID]]]
        self.max_output = model.max_positions - 1 if model.max_positions is not None else None

    def decode(self, batches: list[list[list[int]]]) -> list[list[list[Hypothesis]]]:
        """Hypotheses, best first, for every sentence (source ids ending in EOS) of every batch.

        CTranslate2 takes one length limit per call, so each batch goes as one call per limit
        (with max_len_a = 0, one call). Every call is queued at once so that the parallel
        translators share them."""
        s = self.settings
        pending = []
        for batch in batches:
            limits = [math.floor(s.max_len_a * len(ids) + s.max_len_b) for ids in batch]
            if self.max_output is not None:  # learned positions end (search_helpers.max_output_length)
                limits = [min(limit, self.max_output) for limit in limits]
            by_limit: dict[int, list[int]] = {}
            for i, limit in enumerate(limits):
                by_limit.setdefault(limit, []).append(i)
            calls = []
            for limit, members in by_limit.items():
                sources = [batch[i] for i in members]
                # CTranslate2 refuses a limit of 0; attn's search outputs EOS at once there.
                calls.append((members, self._submit(sources, limit) if limit > 0 else self._only_eos(sources)))
            pending.append(calls)
        decoded = []
        for calls in pending:
            hypotheses: dict[int, list[Hypothesis]] = {}
            for members, results in calls:  # pending translations, or (limit 0) finished hypotheses
                hypotheses.update(zip(members, (r if isinstance(r, list) else self._hypotheses(r) for r in results)))
            decoded.append([hypotheses[i] for i in range(len(hypotheses))])
        return decoded

    def _submit(self, sources: list[list[int]], limit: int) -> list:  # -> AsyncTranslationResult's
        s = self.settings
        return self.translator.translate_batch(
            [[self.source_pieces[i] for i in ids] for ids in sources],
            asynchronous=True,
            beam_size=s.beam_size,
            num_hypotheses=s.nbest,
            # Greedy scores are divided by GNMT's penalty in _hypotheses, as attn's are.
            length_penalty=0.0 if s.beam_size == 1 else s.length_penalty,
            max_input_length=0,  # the translator has truncated sources already
            max_decoding_length=limit,
            min_decoding_length=min(s.min_len, limit),  # attn's search ends at the limit whatever min_len says
            suppress_sequences=self.never,
            return_scores=True,
        )

    def _only_eos(self, sources: list[list[int]]) -> list[list[Hypothesis]]:
        """The empty translation of each source, scored by its EOS as ``_hypotheses`` scores."""
        scored = self.translator.score_batch([[self.source_pieces[i] for i in ids] for ids in sources],
                                             [[] for _ in sources])
        penalty = gnmt_length_penalty(1, self.settings.length_penalty) if self.settings.beam_size == 1 else 1.0
        return [[Hypothesis([], r.log_probs[-1] / penalty, None)] for r in scored]

    def _hypotheses(self, pending: object) -> list[Hypothesis]:
        result = pending.result()
        hypotheses = []
        for pieces, score in zip(result.hypotheses, result.scores):
            tokens = [self.target_ids[piece] for piece in pieces]
            if self.settings.beam_size == 1:
                score /= gnmt_length_penalty(len(tokens) + 1, self.settings.length_penalty)
            hypotheses.append(Hypothesis(tokens, float(score), None))
        return hypotheses

    def close(self) -> None:
        self.translator = None


# --------------------------------------------------------------------------- weight copying


def _numpy(tensor: torch.Tensor):  # -> numpy.ndarray
    return tensor.detach().float().cpu().numpy()


def vocabularies(tokenizer: Tokenizer) -> tuple[list[str], list[str]]:
    """Every source and target piece, by id: CTranslate2 reads and writes piece strings."""
    return tokenizer.src_pieces(range(tokenizer.src_vocab_size)), tokenizer.tgt_pieces(range(tokenizer.tgt_vocab_size))


def _set_linear(spec: object, linear: nn.Linear) -> None:
    spec.weight = _numpy(linear.weight)
    if linear.bias is not None:
        spec.bias = _numpy(linear.bias)


def _set_layer_norm(spec: object, norm: nn.LayerNorm) -> None:
    spec.gamma, spec.beta = _numpy(norm.weight), _numpy(norm.bias)


def _set_inputs(spec: object, embed: nn.Module, dim: int, max_positions: int) -> None:
    embeddings = spec.embeddings[0] if isinstance(spec.embeddings, list) else spec.embeddings
    embeddings.weight = _numpy(embed.tokens.weight)
    spec.scale_embeddings = True  # attn multiplies embeddings by sqrt(d) too
    if embed.learned is not None:
        spec.position_encodings.encodings = _numpy(embed.learned.weight)
    else:
        spec.position_encodings.encodings = _numpy(sinusoidal_positions(torch.arange(max_positions), dim))


def _set_self_attention(spec: object, layer: nn.Module) -> None:
    _set_linear(spec.linear[0], layer.self_attention.qkv)
    _set_linear(spec.linear[1], layer.self_attention.out)
    _set_layer_norm(spec.layer_norm, layer.self_attention_residual.norm)


def _set_feed_forward(spec: object, layer: nn.Module) -> None:
    net = layer.feed_forward.net
    _set_linear(spec.linear_0, net[0])
    _set_linear(spec.linear_1, net[3])
    _set_layer_norm(spec.layer_norm, layer.feed_forward_residual.norm)
