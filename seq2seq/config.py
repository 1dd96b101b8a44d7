"""The run configuration: a typed schema, validated once when the YAML is loaded.

A run is described by one YAML file with four sections (``data``, ``model``, ``train``,
``decode``) and ``output_dir``. ``load_config`` reads it, applies ``--set key.path=value``
overrides, checks every key and value, and returns a ``Config`` of plain dataclasses; the
rest of attn only ever sees those typed objects.

Every error is a ``UserError`` naming the key path and what is allowed, for example
``model.attention: 'bahdanau_x' is not one of additive, dot, ...``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from seq2seq.errors import UserError
from seq2seq.files import not_a_file

RNN_ARCHS = ("rnn", "lstm", "gru")
ARCHS = RNN_ARCHS + ("transformer",)
RNN_ATTENTIONS = ("additive", "dot", "general", "scaled_dot", "local_m", "local_p", "none")
ATTENTIONS = RNN_ATTENTIONS + ("local",)


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
    # memory grows with it (2M pairs: 1.2 GB peak at 300k, 3.1 GB at 1M, for 0.3 % fewer pieces).
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
        "additive", "dot", "general", "scaled_dot", "local_m", "local_p", "none", "local"
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
    # Score function used inside local_m / local_p windows.
    local_score: Literal["dot", "general", "scaled_dot", "additive"] = "general"
    bridge: bool = True
    # Transformer only.
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
    # bf16 decodes with a bf16 copy of the weights: about 1.5-2x faster on CPUs with
    # AVX512-BF16 or AMX and on GPUs; scores still add up in float32.
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


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None), apply overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(Path(path))
        if "base" in raw and ("grid" in raw or "points" in raw):
            raise UserError(f"{path}: a sweep file (base + grid/points), not a run config; run it with "
                            f"`attn experiment {path}` (--dry-run lists its points)")
    for expr in overrides:
        key, value = parse_override(expr)
        _set_path(raw, key, value)
    return config_from_dict(raw, source=str(path) if path else "config")


def read_yaml(path: Path) -> dict[str, Any]:
    """Safe-load a YAML mapping; syntax errors name the line and column."""
    if not path.is_file():
        raise UserError(f"{path}: {not_a_file(path, 'config file')}; check the path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not valid UTF-8 text (byte {exc.start}); is this a YAML file?") from None
    try:
        data = _UniqueKeyLoader.load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = (exc.problem or "syntax error").strip()
        raise UserError(f"{path}: YAML error at {where}: {problem}; fix the YAML syntax there") from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
        raise UserError(f"{path}: YAML error: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of sections (data, model, train, decode)")
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error: plain YAML
    keeps the last one, so a forgotten earlier line would silently lose."""

    @classmethod
    def load(cls, text: str) -> Any:
        """What yaml.safe_load does, with this loader (a SafeLoader: plain data only)."""
        loader = cls(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' appears twice in this mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_override(expr: str) -> tuple[str, Any]:
    """``model.attention=general`` -> ("model.attention", "general"); the value is read as YAML."""
    key, sep, text = expr.partition("=")
    key = key.strip()
    if not sep or not key or any(not part.isidentifier() for part in key.split(".")):
        raise UserError(f"--set {expr!r}: expected key.path=value, for example --set model.attention=general")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        raise UserError(f"--set {expr!r}: the value is not valid YAML; quote it") from None
    return key, value


def _set_path(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"--set {key}: '{part}' is not a section")
        node = child
    leaf = parts[-1]
    if isinstance(value, dict) and isinstance(node.get(leaf), dict):
        # `--set model={hidden_dim: 64}` changes hidden_dim, not the rest of the model section.
        for sub_key, sub_value in value.items():
            _set_path(node[leaf], str(sub_key), sub_value)
        return
    node[leaf] = value


def config_from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    cfg = _build(Config, raw, prefix="")
    _check_combinations(cfg)
    return cfg


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """Turn a mapping into dataclass ``cls``, checking keys, types and ranges."""
    where = prefix.rstrip(".") or "config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a mapping of keys, got {_describe(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            raise UserError(f"{prefix}{key}: unknown key{_suggest(str(key), fields, prefix)}")
    values = {}
    for name, f in fields.items():
        if name in raw:
            values[name] = _coerce(hints[name], raw[name], f"{prefix}{name}", f.metadata)
    return cls(**values)


def _coerce(tp: Any, value: Any, key: str, metadata: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key, metadata)
    if value is None:
        raise UserError(f"{key}: a value is required here (got null)")
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(str(a) for a in args)
            raise UserError(f"{key}: {value!r} is not one of {allowed}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise UserError(f"{key}: expected a list of {len(args)} numbers, got {_describe(value)}")
        return tuple(_coerce(a, v, f"{key}[{i}]", metadata) for i, (a, v) in enumerate(zip(args, value)))
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{key}: expected a list, got {_describe(value)}")
        return [_coerce(args[0], v, f"{key}[{i}]", {}) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{key}: expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)  # 1e5: YAML 1.1 reads it as a string
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{key}: expected an integer, got {_describe(value)}")
        _check_range(key, value, metadata)
        return value
    if tp is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{key}: expected a number, got {_describe(value)}")
        if not math.isfinite(value):  # YAML reads .nan and .inf as floats
            raise UserError(f"{key}: expected a finite number, got {value}")
        _check_range(key, float(value), metadata)
        return float(value)
    if tp is str:
        if isinstance(value, bool):
            raise UserError(f"{key}: expected a string, got {_describe(value)} (YAML reads yes/no/on/off as "
                            f"booleans); quote the value, e.g. {key.rsplit('.', 1)[-1]}: 'no' in a file, "
                            f"--set \"{key}='no'\" on the command line")
        if not isinstance(value, (str, int, float)):
            raise UserError(f"{key}: expected a string, got {_describe(value)}")
        if not str(value).strip():  # an empty output_dir would be the current folder
            raise UserError(f"{key}: is empty; give a value (or null where the key allows it)")
        return str(value)
    raise TypeError(f"unsupported config type {tp} for {key}")


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _check_range(key: str, value: float, metadata: Any) -> None:
    if "range" not in metadata:
        return
    lo, hi, lo_open, hi_open = metadata["range"]
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    too_high = hi is not None and (value >= hi if hi_open else value > hi)
    if too_low or too_high:
        lower = None if lo is None else (f"above {lo}" if lo_open else f"at least {lo}")
        upper = None if hi is None else (f"below {hi}" if hi_open else f"at most {hi}")
        allowed = " and ".join(bound for bound in (lower, upper) if bound)
        raise UserError(f"{key}: {value} is out of range; it must be {allowed}")


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _suggest(word: str, choices: Any, prefix: str = "") -> str:
    """A hint for an unknown key: the same key in another section, else a close one in this section."""
    elsewhere = [key for key in schema_keys() if key.rsplit(".", 1)[-1] == word and not key.startswith(prefix + word)]
    if elsewhere:
        return f"; did you mean '{elsewhere[0]}'?"
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; allowed keys: {', '.join(choices)}"


def _check_combinations(cfg: Config) -> None:
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
        if m.attention in ("additive", "dot", "general"):
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
        if m.positions == "learned" and cfg.data.max_len + 1 > m.max_positions:
            raise UserError(
                f"model.max_positions: {m.max_positions} learned positions cannot hold training pairs of "
                f"data.max_len={cfg.data.max_len} pieces plus EOS; raise max_positions or lower data.max_len"
            )
        cfg.notes.append(
            "the Transformer uses model.hidden_dim as d_model; RNN-only keys are ignored: "
            "embed_dim, bidirectional, decoder_style, input_feeding, local_score, bridge"
        )
    else:
        if m.attention == "local":
            cfg.notes.append(
                "model.attention local is the Transformer's sliding window; the RNN decoder uses local_m"
            )
            m.attention = "local_m"
        ignored = ["heads", "ffn_dim", "norm", "activation", "positions", "max_positions"]
        if m.decoder_style == "bahdanau":
            ignored.append("input_feeding (Bahdanau's decoder feeds the context itself)")
        if m.attention not in ("local_m", "local_p"):
            ignored += ["window", "local_score (local_m/local_p only)"]
        cfg.notes.append(f"this RNN model ignores: {', '.join(ignored)}")
    check_architecture(m)
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
    its family (see _check_combinations)."""
    if m.arch in RNN_ARCHS:
        if m.attention not in RNN_ATTENTIONS:
            raise UserError(f"model.attention: {m.attention!r} is not an RNN attention; "
                            f"use one of {', '.join(RNN_ATTENTIONS)}")
        if m.bidirectional and m.hidden_dim % 2:
            raise UserError(f"model.hidden_dim: {m.hidden_dim} must be even with model.bidirectional: true "
                            "(each direction gets half)")
        if m.attention == "none" and not m.bridge:
            raise UserError("model.bridge: false with model.attention: none leaves the decoder blind to the "
                            "source; set model.bridge: true or choose an attention")
    else:
        if m.attention not in ("scaled_dot", "local"):
            raise UserError(f"model.attention: {m.attention!r} is not a Transformer attention; use scaled_dot or local")
        if m.hidden_dim % m.heads:
            raise UserError(f"model.hidden_dim: {m.hidden_dim} must be divisible by model.heads ({m.heads})")


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
