"""attn's library: data, attention models, training, search and evaluation for seq2seq NMT."""

__version__ = "0.1.0"

# Checkpoints record this; a checkpoint with another format version is refused with a clear error.
CHECKPOINT_FORMAT = 1
