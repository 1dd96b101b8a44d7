"""Build a model from the config; count and describe its parameters."""

from __future__ import annotations

from torch import nn

from seq2seq.config import ModelConfig, check_architecture
from seq2seq.errors import UserError
from seq2seq.models.interface import TrainableModel
from seq2seq.models.rnn import RNNSeq2Seq
from seq2seq.models.transformer import Transformer


def build_model(cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int) -> TrainableModel:
    """A freshly initialised model for ``cfg``; raises UserError for unsupported combinations."""
    check_model_config(cfg, src_vocab_size, tgt_vocab_size)
    match cfg.arch:
        case "rnn" | "lstm" | "gru":
            model = RNNSeq2Seq(cfg, src_vocab_size, tgt_vocab_size)
        case "transformer":
            model = Transformer(cfg, src_vocab_size, tgt_vocab_size)
        case _:
            raise UserError(f"model.arch: {cfg.arch!r} is not one of rnn, lstm, gru, transformer")
    init_parameters(model)
    return model


def check_model_config(cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int) -> None:
    """The architecture's rules (config loading checks them too, but a ModelConfig can be built
    in code), and those that need the vocabulary sizes."""
    if cfg.share_vocab and src_vocab_size != tgt_vocab_size:
        raise UserError(
            f"model.share_vocab: the source and target vocabularies differ ({src_vocab_size} vs "
            f"{tgt_vocab_size} pieces); set data.tokenizer.joint: true or model.share_vocab: false"
        )
    check_architecture(cfg)


def init_parameters(model: nn.Module) -> None:
    """Xavier-uniform projection matrices with zero biases; embeddings N(0, d^-0.5).

    Embeddings go last: a tied output projection shares the embedding's matrix. With the
    Transformer's sqrt(d) scaling, N(0, d^-0.5) gives unit-scale inputs. RNN cells keep
    PyTorch's default uniform(-1/sqrt(H), 1/sqrt(H)) initialisation.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=module.embedding_dim**-0.5)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable parameters: total, embeddings (all tables, counted once), then the rest by part.

    Parts are the model's top-level modules (encoder, decoder); a tied output matrix is an
    embedding and is counted once, under embeddings.
    """
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    counts = {"total": 0, "embeddings": 0}
    for name, parameter in model.named_parameters():  # shared parameters are listed once
        if not parameter.requires_grad:
            continue
        part = "embeddings" if id(parameter) in embedding_ids else name.split(".")[0]
        counts[part] = counts.get(part, 0) + parameter.numel()
        counts["total"] += parameter.numel()
    return counts


def describe_model(model: nn.Module) -> str:
    """One line for logs, for example:

    gru bidirectional encoder, luong decoder, general attention: 1.2M parameters (embeddings ...)
    """
    cfg: ModelConfig = model.config
    if cfg.arch == "transformer":
        kind = f"transformer {cfg.norm}-norm, {cfg.heads} heads, {cfg.attention} self-attention"
    else:
        encoder = "bidirectional " if cfg.bidirectional else ""
        kind = f"{cfg.arch} {encoder}encoder, {cfg.decoder_style} decoder, {cfg.attention} attention"
    counts = count_parameters(model)
    parts = ", ".join(f"{part} {_short(n)}" for part, n in counts.items() if part != "total")
    return f"{kind}: {_short(counts['total'])} parameters ({parts})"


def _short(n: int) -> str:
    """12345678 -> '12.3M', 45600 -> '45.6K'."""
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)
