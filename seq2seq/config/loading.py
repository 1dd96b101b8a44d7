"""Reading a config: YAML (duplicate keys refused), ``--set key.path=value`` overrides, and
each key's type and range checked, with errors that name the key path and what is allowed."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from seq2seq.config.rules import check_combinations
from seq2seq.config.schema import Config, schema_keys
from seq2seq.errors import UserError
from seq2seq.files import not_a_file


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
    check_combinations(cfg)
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
