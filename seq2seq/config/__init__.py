"""The run configuration: a typed schema, validated once when the YAML is loaded.

A run is described by one YAML file with four sections (``data``, ``model``, ``train``,
``decode``) and ``output_dir``. ``load_config`` reads it, applies ``--set key.path=value``
overrides, checks every key and value, and returns a ``Config`` of plain dataclasses; the
rest of attn only ever sees those typed objects.

Every error is a ``UserError`` naming the key path and what is allowed, for example
``model.attention: 'bahdanau_x' is not one of additive, dot, ...``.
"""

from seq2seq.config.loading import config_from_dict, load_config, parse_override, read_yaml
from seq2seq.config.rules import check_architecture
from seq2seq.config.schema import (ARCHS, ATTENTIONS, RNN_ARCHS, RNN_ATTENTIONS, Config, DataConfig, DecodeConfig,
                                   ModelConfig, TokenizerConfig, TrainConfig, dump_config, schema_keys)

__all__ = [
    "ARCHS", "ATTENTIONS", "Config", "DataConfig", "DecodeConfig", "ModelConfig", "RNN_ARCHS", "RNN_ATTENTIONS",
    "TokenizerConfig", "TrainConfig", "check_architecture", "config_from_dict", "dump_config", "load_config",
    "parse_override", "read_yaml", "schema_keys",
]
