"""Shared fixtures.

``one_torch_thread``: torch on one intra-op thread for a test module, restored after; on a few
busy shared cores, two spinning OpenMP threads per process make small models many times slower.

``tiny_corpus``: the first lines of the bundled corpus, tokenized once per test session into
one prepared folder that every test shares (so no test re-tokenizes), plus the overrides of a
model small enough to train a few dozen steps in seconds on a busy CPU.
"""

from __future__ import annotations

import itertools
import os

# Every model in the tests is tiny: one thread is fastest, and two spinning OpenMP threads per
# process slow things down many times over whenever a test runs attn in a subprocess beside
# pytest (or anything else shares the cores). Subprocesses inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# As the command line does before any model runs (oneDNN reads its cache caps once).
from seq2seq.kernels import tune_process

tune_process()

from dataclasses import dataclass
from pathlib import Path

import pytest

from seq2seq.config import Config, load_config

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "bible-en-es-sample"
TINY_LINES = {"train": 400, "valid": 30, "test": 30}


@dataclass(frozen=True)
class TinyCorpus:
    prefix: Path  # {prefix}/train.es, train.en, valid.*, test.*
    prepared_dir: Path
    overrides: tuple[str, ...]  # data paths, the shared prepared_dir, a tiny model and budget

    def config(self, output_dir: str | Path, *overrides: str) -> Config:
        """A tiny run writing to ``output_dir``; later overrides win."""
        return load_config(None, [*self.overrides, f"output_dir={output_dir}", *overrides])

    def cli_args(self, output_dir: str | Path, *overrides: str) -> list[str]:
        """The same run as ``--set`` options for ``attn train``/``attn tokenize``."""
        pairs = [*self.overrides, f"output_dir={output_dir}", *overrides]
        return list(itertools.chain.from_iterable(("--set", pair) for pair in pairs))


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> TinyCorpus:
    from seq2seq.data.prepare import prepare_data

    root = tmp_path_factory.mktemp("tiny_corpus")
    for split, n in TINY_LINES.items():
        for lang in ("es", "en"):
            with open(SAMPLE / f"{split}.{lang}", encoding="utf-8") as f:
                head = list(itertools.islice(f, n))
            (root / f"{split}.{lang}").write_text("".join(head), encoding="utf-8")
    prepared_dir = root / "prepared"
    overrides = (
        f"data.train={root / 'train'}",
        f"data.valid={root / 'valid'}",
        f"data.test={root / 'test'}",
        f"data.prepared_dir={prepared_dir}",
        "data.tokenizer.vocab_size=300",
        "model.embed_dim=32",
        "model.hidden_dim=32",
        "model.encoder_layers=1",
        "model.decoder_layers=1",
        "train.batch_tokens=1500",
        "train.valid_max_sentences=20",
        "train.device=cpu",
    )
    corpus = TinyCorpus(root, prepared_dir, overrides)
    prepare_data(corpus.config(root / "unused"), log=lambda message: None)
    return corpus


@pytest.fixture(scope="module")
def one_torch_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
