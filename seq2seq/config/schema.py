"""The run configuration's schema: four sections of typed, documented keys (each key's comment
is its documentation; the README's table of keys is kept in sync by a test)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

RNN_ARCHS = ("rnn", "lstm", "gru")
ARCHS = RNN_ARCHS + ("transformer",)
RNN_ATTENTIONS = ("additive", "dot", "general", "scaled_dot", "local_m", "local_p", "hard", "monotonic", "gmm", "none")
TRANSFORMER_ATTENTIONS = ("scaled_dot", "local", "sparse", "performer", "linformer")
ATTENTIONS = RNN_ATTENTIONS + ("local", "sparse", "performer", "linformer")


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False) -> dict:
    """Field metadata: the allowed numeric range, checked at load time (open ends excluded)."""
    return {"range": (lo, hi, lo_open, hi_open)}


@dataclass
class TokenizerConfig:
    type: Literal["unigram", "bpe"] = "unigram"
    vocab_size: int = field(default=8000, metadata=_range(16))
    # One SentencePiece model for both languages (required by model.share_vocab).
    joint: bool = True
    character_coverage: float = field(default=1.0, metadata=_range(0.9, 1.0))
    # Sentences sampled to train SentencePiece; keeps memory bounded on huge corpora. Training
    # memory grows with it, for a fraction of a percent fewer pieces (README, benchmarks).
    input_sentence_size: int = field(default=300_000, metadata=_range(1000))


@dataclass
class DataConfig:
    # File prefixes: ``{train}.{src_lang}`` and ``{train}.{tgt_lang}``.
    train: str = "data/bible-en-es-sample/train"
    valid: str = "data/bible-en-es-sample/valid"
    test: str | None = "data/bible-en-es-sample/test"
    src_lang: str = "es"
    tgt_lang: str = "en"
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    # Training pairs longer than this (in pieces, either side) are dropped.
    max_len: int = field(default=128, metadata=_range(2))
    # Training pairs whose piece-length ratio exceeds this (either way) are dropped.
    max_len_ratio: float = field(default=3.0, metadata=_range(1.0))
    # Where the tokenizer and the binarised corpus go; defaults to ``{output_dir}/data``.
    # Runs that share a data section can point at one folder and tokenize once.
    prepared_dir: str | None = None


@dataclass
class ModelConfig:
    arch: Literal["rnn", "lstm", "gru", "transformer"] = "gru"
    attention: Literal[
        "additive", "dot", "general", "scaled_dot", "local_m", "local_p", "hard", "monotonic", "gmm", "none",
        "local", "sparse", "performer", "linformer",
    ] = "additive"
    # Embedding size of the RNN models (the Transformer's is hidden_dim).
    embed_dim: int = field(default=256, metadata=_range(1))
    # Shared by both families.
    hidden_dim: int = field(default=256, metadata=_range(1))
    encoder_layers: int = field(default=2, metadata=_range(1))
    decoder_layers: int = field(default=2, metadata=_range(1))
    dropout: float = field(default=0.1, metadata=_range(0.0, 1.0, hi_open=True))
    # Local attention: half-width D of the window (RNN local_m/local_p, Transformer band).
    window: int = field(default=8, metadata=_range(1))
    # Tie the decoder's input embedding to its output projection.
    tie_embeddings: bool = True
    # One embedding table for source and target (needs data.tokenizer.joint).
    share_vocab: bool = True
    # RNN only.
    bidirectional: bool = True
    decoder_style: Literal["bahdanau", "luong"] = "luong"
    input_feeding: bool = True
    # Score function of the mechanisms that are not one: local_m, local_p, hard, monotonic.
    local_score: Literal["dot", "general", "scaled_dot", "additive"] = "general"
    # Scores -> attention weights: softmax, or sparse (exact zeros) sparsemax / 1.5-entmax /
    # alpha-entmax with alpha learned per attention.
    attention_normalizer: Literal["softmax", "sparsemax", "entmax15", "entmax"] = "softmax"
    # Coverage (Tu et al. 2016): the additive score also reads the attention each source
    # position has received so far.
    coverage: bool = False
    # How hard attention learns where to look: sampled positions scored by REINFORCE, the
    # straight-through Gumbel-softmax, or the output summed exactly over every position.
    hard_attention: Literal["reinforce", "gumbel", "exact"] = "reinforce"
    gumbel_temperature: float = field(default=1.0, metadata=_range(0.0, lo_open=True))
    # Monotonic attention: positions per chunk (MoChA); 1 is plain hard monotonic attention.
    chunk_size: int = field(default=1, metadata=_range(1))
    # Gaussian-mixture attention: number of components.
    gmm_components: int = field(default=5, metadata=_range(1))
    bridge: bool = True
    # Transformer only.
    # Sparse attention: the first global_tokens positions attend to all and are attended by
    # all (Longformer); random_blocks random key blocks of window positions per query block
    # in the encoder (BigBird), the same for every sentence of a length.
    global_tokens: int = field(default=0, metadata=_range(0))
    random_blocks: int = field(default=0, metadata=_range(0))
    # Performer: random features per head (FAVOR+), drawn when the model is built (from
    # train.seed) and saved with it.
    features: int = field(default=64, metadata=_range(1))
    # Linformer: the length the encoder's keys and values are projected to.
    rank: int = field(default=64, metadata=_range(1))
    # A learned Gaussian bias around a predicted centre in the lower half of the encoder's
    # self-attention layers (Yang et al. 2018).
    gaussian_bias: bool = False
    # Learned key/value pairs every encoder self- and cross-attention query may attend to.
    memory_slots: int = field(default=0, metadata=_range(0))
    heads: int = field(default=4, metadata=_range(1))
    ffn_dim: int = field(default=1024, metadata=_range(1))
    norm: Literal["pre", "post"] = "pre"
    activation: Literal["relu", "gelu", "silu"] = "relu"
    positions: Literal["sinusoidal", "learned"] = "sinusoidal"
    max_positions: int = field(default=1024, metadata=_range(8))


@dataclass
class TrainConfig:
    # Token budget of one forward pass, counted as sentences x padded max(src, tgt) length.
    batch_tokens: int = field(default=4096, metadata=_range(16))
    # Target size of one optimizer update across all ranks; accumulation makes up the rest.
    # Defaults to batch_tokens (no accumulation on one process).
    update_tokens: int | None = field(default=None, metadata=_range(16))
    max_steps: int = field(default=1000, metadata=_range(1))
    max_epochs: int | None = field(default=None, metadata=_range(1))
    # Wall-clock budget, validation included and summed over resumed runs (fairseq's
    # --stop-time-hours): the run stops after the update that crosses it, with a checkpoint.
    max_minutes: float | None = field(default=None, metadata=_range(0.0, lo_open=True))
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = field(default=5e-4, metadata=_range(0.0, lo_open=True))
    betas: tuple[float, float] = field(default=(0.9, 0.98), metadata=_range(0.0, 1.0))  # each below 1, too
    weight_decay: float = field(default=0.0, metadata=_range(0.0))
    schedule: Literal["inverse_sqrt", "noam", "constant", "cosine", "plateau"] = "inverse_sqrt"
    warmup_steps: int = field(default=1000, metadata=_range(0))
    min_lr: float = field(default=0.0, metadata=_range(0.0))
    plateau_factor: float = field(default=0.5, metadata=_range(0.0, 1.0, lo_open=True, hi_open=True))
    plateau_patience: int = field(default=2, metadata=_range(0))
    clip_norm: float = field(default=0.0, metadata=_range(0.0))
    label_smoothing: float = field(default=0.1, metadata=_range(0.0, 1.0, hi_open=True))
    # Weight of the coverage loss sum_i min(attention_i, coverage_i) (See et al. 2017), per
    # target token; needs model.coverage.
    coverage_loss: float = field(default=0.0, metadata=_range(0.0))
    # Hard attention trained by REINFORCE: weight of the attention's entropy, a bonus that
    # keeps it exploring.
    entropy_bonus: float = field(default=0.01, metadata=_range(0.0))
    seed: int = field(default=42, metadata=_range(0, 2**32 - 1))
    log_every: int = field(default=50, metadata=_range(1))
    valid_every: int = field(default=500, metadata=_range(1))
    # Validation BLEU/chrF comes from greedy (beam 1) or beam translations of the valid set.
    valid_beam_size: int = field(default=1, metadata=_range(1))
    valid_max_sentences: int | None = field(default=None, metadata=_range(1))
    early_stopping_metric: Literal["bleu", "chrf", "loss"] = "bleu"
    # Validations without improvement before stopping; null disables early stopping.
    patience: int | None = field(default=None, metadata=_range(1))
    keep_last: int = field(default=2, metadata=_range(1))
    # Checkpoint interval in steps; defaults to valid_every.
    save_every: int | None = field(default=None, metadata=_range(1))
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False
    # The CPU fast paths of seq2seq.kernels (oneDNN products, packed weights, fast dropout and
    # tanh, DeferredLSTM): auto uses each one its probe finds working; off uses stock PyTorch.
    cpu_kernels: Literal["auto", "off"] = "auto"
    # Deterministic algorithms (and cuBLAS's fixed workspace) for bit-exact resumes on a GPU.
    deterministic: bool = False
    tensorboard: bool = False
    # Consecutive non-finite losses tolerated before training stops.
    max_bad_steps: int = field(default=5, metadata=_range(1))
    # Intra-op CPU threads; null lets torch decide.
    threads: int | None = field(default=None, metadata=_range(1))


@dataclass
class DecodeConfig:
    beam_size: int = field(default=5, metadata=_range(1))
    # GNMT length penalty exponent alpha in ((5 + len) / 6) ** alpha; 0 disables it.
    length_penalty: float = field(default=1.0, metadata=_range(0.0))
    # Output length limit: max_len_a * source_length + max_len_b pieces.
    max_len_a: float = field(default=1.5, metadata=_range(0.0))
    max_len_b: int = field(default=10, metadata=_range(0))
    min_len: int = field(default=1, metadata=_range(0))
    # Decoder rows per batch: sentences x beam size (x nbest when sampling). A step costs about
    # the same for 64 rows as for 320, so greedy search takes 5x more sentences than beam 5.
    batch_size: int = field(default=320, metadata=_range(1))
    # bf16 decodes with a bf16 copy of the weights: for CPUs with AVX512-BF16 or AMX and GPUs
    # (elsewhere emulated, and likely slower); scores still add up in float32.
    precision: Literal["fp32", "bf16"] = "fp32"


@dataclass
class Config:
    output_dir: str = "runs/demo"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    # Filled at load time: why some keys are ignored or mapped (shown in the resolved config).
    notes: list[str] = field(default_factory=list, metadata={"internal": True})

    @property
    def prepared_dir(self) -> Path:
        return Path(self.data.prepared_dir or Path(self.output_dir) / "data")

    @property
    def is_transformer(self) -> bool:
        return self.model.arch == "transformer"

    @property
    def effective_update_tokens(self) -> int:
        return self.train.update_tokens or self.train.batch_tokens

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("notes")
        out["train"]["betas"] = list(self.train.betas)
        return out


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML, with the load-time notes as comments on top."""
    lines = [f"# note: {note}" for note in cfg.notes]
    body = yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)
    return "\n".join(lines + [body])


def schema_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every leaf key path of the schema (used by docs and the docs-sync test)."""
    keys = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            keys += schema_keys(tp, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys
