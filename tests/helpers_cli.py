"""Helpers for tests that run the ``attn`` command line as a user would: a subprocess, real
files, real exit codes.

* ``run_attn(*args, cwd=..., input=...)`` runs ``python -m cli.main ARGS`` and returns the
  ``CompletedProcess`` with ``stdout``/``stderr`` decoded to ``str``.
* ``snapshot(folder)`` records every file under a folder with its bytes, so a test can prove
  that a failed command lost or overwrote nothing (``assert snapshot(d) == before``).
* ``assert_user_error(result, *fragments)`` checks the project rule for bad input: exit code 2,
  exactly one ``error:`` line on stderr that names what is wrong, and no traceback.
* ``tiny_run(base)`` trains the one tiny checkpoint a test session shares (cached per process).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "bible-en-es-sample"

# The smallest model and run that still exercises every stage (seconds on one CPU core).
TINY_SETTINGS = [
    "data.tokenizer.vocab_size=300",
    "data.max_len=48",
    "model.embed_dim=32",
    "model.hidden_dim=32",
    "model.encoder_layers=1",
    "model.decoder_layers=1",
    "train.batch_tokens=1500",
    "train.max_steps=2",
    "train.valid_every=2",
    "train.valid_max_sentences=5",
    "train.threads=1",
]


def run_attn(*args: object, cwd: str | Path, input: bytes | str | None = None,
             timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m cli.main *args`` in ``cwd``; stdout and stderr come back as text."""
    if isinstance(input, str):
        input = input.encode("utf-8")
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "COLUMNS": "200",
                "OMP_NUM_THREADS": "1", **(env or {})}
    # No stdin at all unless given: a command that wrongly waits for input fails fast instead.
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", *map(str, args)],
        cwd=cwd, input=input if input is not None else b"",
        capture_output=True, timeout=timeout, env=full_env,
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode,
        proc.stdout.decode("utf-8", errors="replace"), proc.stderr.decode("utf-8", errors="replace"),
    )


def snapshot(folder: str | Path) -> dict[str, bytes]:
    """Every file under ``folder`` (recursively, hidden ones too): relative path -> bytes."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    if folder.is_file():
        return {folder.name: folder.read_bytes()}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_unchanged(before: dict[str, bytes], after: dict[str, bytes]) -> None:
    """Every file of ``before`` still exists with the same bytes (new files are reported too)."""
    lost = sorted(set(before) - set(after))
    changed = sorted(k for k in before if k in after and after[k] != before[k])
    assert not lost and not changed, f"lost: {lost}; changed: {changed}"


def error_line(stderr: str) -> str:
    """The one ``error:`` line of a failed command's stderr (an optional ``warning:`` line may
    precede it); fails the test when stderr has any other shape."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert lines, "stderr is empty; a failed command must say why"
    *before, last = lines
    assert last.startswith("error: "), f"the last stderr line is not an 'error:' line:\n{stderr}"
    assert all(line.startswith("warning: ") for line in before), f"more than one line on stderr:\n{stderr}"
    assert len(before) <= 1, f"more than one warning before the error:\n{stderr}"
    return last


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit code 2, one ``error:`` line (no traceback) containing every fragment; returns the line."""
    assert result.returncode == 2, (
        f"exit code {result.returncode}, expected 2\nstderr:\n{result.stderr}\nstdout:\n{result.stdout[:2000]}"
    )
    line = error_line(result.stderr)
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in the error line: {line}"
    return line


def write_corpus(folder: Path, sizes: dict[str, int] | None = None) -> Path:
    """A small copy of the bundled corpus: ``{folder}/{split}.{es,en}``."""
    sizes = sizes or {"train": 300, "valid": 20, "test": 20}
    folder.mkdir(parents=True, exist_ok=True)
    for split, size in sizes.items():
        for lang in ("es", "en"):
            with open(SAMPLE / f"{split}.{lang}", encoding="utf-8") as src:
                lines = [next(src) for _ in range(size)]
            (folder / f"{split}.{lang}").write_text("".join(lines), encoding="utf-8")
    return folder


def write_config(path: Path, corpus: Path, output_dir: Path, extra: str = "") -> Path:
    """A tiny run config (``TINY_SETTINGS``) over ``corpus`` (from ``write_corpus``) writing to
    ``output_dir``; ``extra`` is YAML text appended as is."""
    raw: dict = {"output_dir": str(output_dir), "data": {
        "train": str(corpus / "train"), "valid": str(corpus / "valid"), "test": str(corpus / "test")}}
    for item in TINY_SETTINGS:
        key, value = item.split("=")
        *sections, leaf = key.split(".")
        node = raw
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(raw, sort_keys=False) + extra, encoding="utf-8")
    return path


_RUNS: dict[str, Path] = {}


def tiny_run(base: Path) -> Path:
    """Train the session's tiny model once (per process) under ``base``; return its run folder.

    The folder holds ``config.yaml``, ``checkpoints/best.pt`` + a step checkpoint, and the
    prepared data (``data/spm.model`` is its tokenizer). Tests must not modify it.
    """
    key = str(base)
    if key not in _RUNS:
        corpus = write_corpus(base / "corpus")
        config = write_config(base / "tiny.yaml", corpus, base / "run")
        result = run_attn("train", config, "--quiet", cwd=base)
        assert result.returncode == 0, f"training the tiny model failed:\n{result.stderr}"
        assert (base / "run" / "checkpoints" / "best.pt").is_file()
        _RUNS[key] = base / "run"
    return _RUNS[key]
