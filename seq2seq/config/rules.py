"""Rules across keys: combinations a config may not hold, and the notes that let one config
switch architecture freely (keys that do not apply to the chosen one are noted, not refused)."""

from __future__ import annotations

from seq2seq.config.schema import RNN_ARCHS, RNN_ATTENTIONS, TRANSFORMER_ATTENTIONS, Config, ModelConfig
from seq2seq.errors import UserError


def check_combinations(cfg: Config) -> None:
    """Cross-field rules, and the notes that let one config switch architecture freely."""
    m = cfg.model
    if max(cfg.train.betas) >= 1.0:
        raise UserError(f"train.betas: {list(cfg.train.betas)}; Adam's betas must be below 1, e.g. [0.9, 0.98]")
    if m.arch == "transformer":
        if m.attention == "none":
            raise UserError(
                "model.attention: 'none' is not supported with model.arch transformer "
                "(its decoder needs cross-attention); use scaled_dot or local"
            )
        if m.attention in ("additive", "dot", "general", "hard", "monotonic", "gmm"):
            cfg.notes.append(
                f"model.attention {m.attention} applies to RNN decoders; the Transformer uses "
                "multi-head scaled dot-product attention (scaled_dot)"
            )
            m.attention = "scaled_dot"
        elif m.attention in ("local_m", "local_p"):
            cfg.notes.append(
                f"model.attention {m.attention} applies to RNN decoders; the Transformer uses "
                f"sliding-window self-attention (local, window {m.window})"
            )
            m.attention = "local"
        if m.attention == "linformer" and cfg.data.max_len + 1 > m.max_positions:
            raise UserError(
                f"model.max_positions: {m.max_positions} is the longest source Linformer's projection reads, "
                f"shorter than training pairs of data.max_len={cfg.data.max_len} pieces plus EOS; raise "
                "max_positions or lower data.max_len"
            )
        if m.positions == "learned" and cfg.data.max_len + 1 > m.max_positions:
            raise UserError(
                f"model.max_positions: {m.max_positions} learned positions cannot hold training pairs of "
                f"data.max_len={cfg.data.max_len} pieces plus EOS; raise max_positions or lower data.max_len"
            )
        if m.attention == "linformer":
            cfg.notes.append("model.attention linformer projects the encoder's self-attention only (a projection "
                             "along the sequence cannot be causal); the decoder's attention stays full softmax")
        if m.coverage or cfg.train.coverage_loss:
            cfg.notes.append("model.coverage and train.coverage_loss apply to RNN attention; ignored")
            m.coverage, cfg.train.coverage_loss = False, 0.0
        cfg.notes.append(
            "the Transformer uses model.hidden_dim as d_model; RNN-only keys are ignored: "
            "embed_dim, bidirectional, decoder_style, input_feeding, local_score, bridge, hard_attention, "
            "gumbel_temperature, chunk_size, gmm_components"
        )
    else:
        if m.attention in ("local", "sparse"):
            cfg.notes.append(
                f"model.attention {m.attention} is the Transformer's; the RNN decoder uses local_m, its window"
            )
            m.attention = "local_m"
        elif m.attention in ("performer", "linformer"):
            cfg.notes.append(f"model.attention {m.attention} is the Transformer's; the RNN decoder uses scaled_dot")
            m.attention = "scaled_dot"
        ignored = ["heads", "ffn_dim", "norm", "activation", "positions", "max_positions", "global_tokens",
                   "random_blocks", "features", "rank", "gaussian_bias", "memory_slots"]
        if m.decoder_style == "bahdanau":
            ignored.append("input_feeding (Bahdanau's decoder feeds the context itself)")
        if m.attention not in ("local_m", "local_p"):
            ignored.append("window (local_m/local_p only)")
        if m.attention not in ("local_m", "local_p", "hard", "monotonic"):
            ignored.append("local_score (local_m, local_p, hard, monotonic only)")
        cfg.notes.append(f"this RNN model ignores: {', '.join(ignored)}")
    check_architecture(m)
    if cfg.train.coverage_loss and not m.coverage:
        raise UserError(f"train.coverage_loss: {cfg.train.coverage_loss} needs model.coverage: true "
                        "(it penalises attention that returns to covered positions); set both or neither")
    if m.share_vocab and not cfg.data.tokenizer.joint:
        raise UserError(
            "model.share_vocab: true needs data.tokenizer.joint: true (one vocabulary for both "
            "languages); set one of them accordingly"
        )
    if cfg.train.update_tokens is not None and cfg.train.update_tokens < cfg.train.batch_tokens:
        raise UserError(
            f"train.update_tokens: {cfg.train.update_tokens} is smaller than train.batch_tokens "
            f"({cfg.train.batch_tokens}); raise it or lower batch_tokens"
        )
    t, d = cfg.train, cfg.decode
    if t.batch_tokens < cfg.data.max_len + 1:
        raise UserError(
            f"train.batch_tokens: {t.batch_tokens} cannot hold a training pair of data.max_len={cfg.data.max_len} "
            f"pieces plus EOS; raise it to at least {cfg.data.max_len + 1} or lower data.max_len"
        )
    if t.min_lr > t.lr:
        raise UserError(f"train.min_lr: {t.min_lr} is above train.lr ({t.lr}); the floor must be below the peak")
    if d.max_len_a == 0 and d.max_len_b == 0:
        raise UserError("decode.max_len_b: with max_len_a 0 as well, every output would be empty; "
                        "set max_len_b to at least 1")
    if cfg.train.precision == "fp16" and cfg.train.device == "cpu":
        raise UserError("train.precision: fp16 needs a GPU; use bf16 or fp32 on the CPU")
    if cfg.data.src_lang == cfg.data.tgt_lang:
        raise UserError("data.tgt_lang: must differ from data.src_lang")


def check_architecture(m: ModelConfig) -> None:
    """The rules of each architecture, for a model section whose attention has been mapped to
    its family (see check_combinations)."""
    if m.arch in RNN_ARCHS:
        if m.attention not in RNN_ATTENTIONS:
            raise UserError(f"model.attention: {m.attention!r} is not an RNN attention; "
                            f"use one of {', '.join(RNN_ATTENTIONS)}")
        if m.bidirectional and m.hidden_dim % 2:
            raise UserError(f"model.hidden_dim: {m.hidden_dim} must be even with model.bidirectional: true "
                            "(each direction gets half)")
        check_rnn_mechanism(m)
        if m.attention == "none" and not m.bridge:
            raise UserError("model.bridge: false with model.attention: none leaves the decoder blind to the "
                            "source; set model.bridge: true or choose an attention")
    else:
        if m.attention not in TRANSFORMER_ATTENTIONS:
            raise UserError(f"model.attention: {m.attention!r} is not a Transformer attention; use one of "
                            f"{', '.join(TRANSFORMER_ATTENTIONS)}")
        if m.attention in ("performer", "linformer"):
            for key, value, default in (("attention_normalizer", m.attention_normalizer, "softmax"),
                                        ("gaussian_bias", m.gaussian_bias, False)):
                if value != default:
                    raise UserError(f"model.{key}: {value} does not apply to model.attention: {m.attention} (it "
                                    "computes no matrix of scores to normalise or bias); use scaled_dot, local or sparse")
        if m.hidden_dim % m.heads:
            raise UserError(f"model.hidden_dim: {m.hidden_dim} must be divisible by model.heads ({m.heads})")


def check_rnn_mechanism(m: ModelConfig) -> None:
    """Which RNN attention keys go together."""
    if m.coverage and m.attention != "additive":
        raise UserError(f"model.coverage: true needs model.attention: additive, not {m.attention} "
                        "(coverage enters the additive score, Tu et al. 2016)")
    if m.attention in ("hard", "monotonic", "gmm") and m.attention_normalizer != "softmax":
        raise UserError(f"model.attention_normalizer: {m.attention_normalizer} does not apply to model.attention: "
                        f"{m.attention} (its weights come from its own rule, not a normaliser); use softmax")
    if m.attention == "hard" and m.hard_attention == "exact" and m.decoder_style != "luong":
        raise UserError("model.hard_attention: exact needs model.decoder_style: luong (the sum over positions "
                        "is taken at the output; a Bahdanau decoder feeds the one context read into its RNN)")
