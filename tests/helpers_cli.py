"""Helpers for tests that run the ``attn`` command line as a user would: a subprocess, real
files, real exit codes.

* ``run_attn(*args, cwd=..., input=...)`` runs ``python -m cli.main ARGS`` and returns the
  ``CompletedProcess`` with ``stdout``/``stderr`` decoded to ``str``.
* ``snapshot(folder)`` records every file under a folder with its bytes, so a test can prove
  that a failed command lost or overwrote nothing (``assert snapshot(d) == before``).
* ``assert_user_error(result, *fragments)`` checks the project rule for bad input: exit code 2,
  exactly one ``error:`` line on stderr that names what is wrong, and no traceback.
  ``run_attn(..., unchanged=folder)`` adds the other half: a failed command left every file
  under ``folder`` as it was and added none.
* ``tiny_run(base)`` trains the one tiny checkpoint a test session shares (cached per process).
"""

from __future__ import annotations

import atexit
import io
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
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
    "train.warmup_steps=1",
    "train.valid_every=2",
    "train.valid_max_sentences=5",
    "train.threads=1",
]


def run_attn(*args: object, cwd: str | Path, input: bytes | str | None = None,
             timeout: float = 300, env: dict[str, str] | None = None,
             fresh: bool = False, unchanged: str | Path | None = None) -> subprocess.CompletedProcess:
    """Run ``attn *args`` in ``cwd`` as its own process; stdout and stderr come back as text.

    By default the process is forked from a server that has already imported attn and torch
    (``_serve``), which saves the 1-3 s of imports per call that would otherwise dominate these
    tests; it gets real file descriptors 0/1/2, a real exit status and a real traceback on
    crashes. ``fresh=True`` (or ATTN_TESTS_FRESH=1) runs ``python -m cli.main`` from scratch
    instead, exactly as a user would.

    ``unchanged``: a folder (usually ``cwd``) whose files must come out of a *failed* command
    byte for byte as they went in, with nothing added.
    """
    before = snapshot(unchanged) if unchanged is not None else None
    if isinstance(input, str):
        input = input.encode("utf-8")
    args = [str(a) for a in args]
    if fresh or os.environ.get("ATTN_TESTS_FRESH") == "1":
        proc = subprocess.run(
            [sys.executable, "-m", "cli.main", *args], cwd=cwd, input=input or b"",
            capture_output=True, timeout=timeout, env={**os.environ, **CHILD_ENV, **(env or {})},
        )
        returncode, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    else:
        returncode, stdout, stderr = _fork_server().run(args, Path(cwd), input or b"", timeout, env or {})
    if before is not None and returncode != 0:
        assert_unchanged(before, snapshot(unchanged))
    return subprocess.CompletedProcess(
        ["attn", *args], returncode,
        stdout.decode("utf-8", errors="replace"), stderr.decode("utf-8", errors="replace"),
    )


# Small models run fastest on one thread, and the test machine's cores are shared.
CHILD_ENV = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


class _ForkServer:
    """A Python process with attn and torch imported that forks one child per command."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from tests.helpers_cli import _serve; _serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO,
            env={**os.environ, **CHILD_ENV}, start_new_session=True,
        )
        ready = self._reply(120)
        if ready.get("ready") is not True:
            raise RuntimeError(f"the attn fork server did not start: {ready}")

    def _reply(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.stop()
            raise subprocess.TimeoutExpired("attn (fork server)", timeout)
        line = self.proc.stdout.readline()
        if not line:
            self.stop()
            raise RuntimeError("the attn fork server died")
        return json.loads(line)

    def run(self, args: list[str], cwd: Path, stdin: bytes, timeout: float,
            env: dict[str, str]) -> tuple[int, bytes, bytes]:
        with tempfile.TemporaryDirectory(prefix="attn-call-") as tmp:
            files = {name: os.path.join(tmp, name) for name in ("stdin", "stdout", "stderr")}
            Path(files["stdin"]).write_bytes(stdin)
            request = {"args": args, "cwd": str(cwd), "env": env, **files}
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
            returncode = self._reply(timeout)["returncode"]
            return returncode, Path(files["stdout"]).read_bytes(), Path(files["stderr"]).read_bytes()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the server and any child it forked
            except ProcessLookupError:
                pass
        self.proc.wait()


_SERVER: _ForkServer | None = None


def _fork_server() -> _ForkServer:
    global _SERVER
    if _SERVER is None or _SERVER.proc.poll() is not None:
        _SERVER = _ForkServer()
        atexit.register(_SERVER.stop)
    return _SERVER


def _serve() -> None:
    """The fork server's loop: one JSON request per line on stdin, one JSON reply on stdout."""
    import importlib
    import traceback

    control_in, control_out = sys.stdin.buffer, sys.stdout.buffer
    encoding = sys.stdout.encoding
    import cli.main  # noqa: F401  (a broken import fails here, loudly)

    # What the commands import lazily; imported here once, never used (forking after torch
    # has started its thread pools would be unsafe, importing is not).
    for name in ("torch", "seq2seq.training.run", "seq2seq.decoding.loading", "seq2seq.decoding.search",
                 "seq2seq.decoding.translator", "seq2seq.decoding.streaming", "seq2seq.evaluation.metrics",
                 "seq2seq.evaluation.report", "seq2seq.evaluation.evaluate", "seq2seq.data.prepare",
                 "seq2seq.plots", "seq2seq.experiment", "matplotlib.pyplot", "sacrebleu",
                 "pydantic", "typer._adapters"):  # typer validates option values with pydantic
        try:
            importlib.import_module(name)
        except Exception:
            pass  # the command that needs it will fail the normal way
    control_out.write(b'{"ready": true}\n')
    control_out.flush()
    for line in control_in:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child: become `attn ARGS` with the given stdin/stdout/stderr
            code = 1
            try:
                os.chdir(request["cwd"])
                os.environ.update(request["env"])
                for fd, path, flags in ((0, request["stdin"], os.O_RDONLY),
                                        (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                        (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
                    new = os.open(path, flags, 0o644)
                    os.dup2(new, fd)
                    os.close(new)
                sys.stdin = sys.__stdin__ = io.TextIOWrapper(open(0, "rb", closefd=False), encoding=encoding)
                sys.stdout = sys.__stdout__ = io.TextIOWrapper(open(1, "wb", closefd=False), encoding=encoding)
                sys.stderr = sys.__stderr__ = io.TextIOWrapper(
                    open(2, "wb", closefd=False), encoding=encoding, errors="backslashreplace", line_buffering=True)
                sys.argv = ["attn", *request["args"]]
                try:
                    cli.main.main()
                    code = 0
                except SystemExit as exc:  # what the interpreter does with it
                    code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
                    if not isinstance(exc.code, (int, type(None))):
                        print(exc.code, file=sys.stderr)
                except BaseException:
                    traceback.print_exc()
                    code = 1
            finally:
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except Exception:
                        pass
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        control_out.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
        control_out.flush()


def snapshot(folder: str | Path) -> dict[str, bytes]:
    """Everything under ``folder`` (recursively, hidden ones too): relative path -> bytes for a
    file, ``path/`` -> b"" for a folder (so that a failed command leaving an empty folder shows)."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    if folder.is_file():
        return {folder.name: folder.read_bytes()}
    return {str(p.relative_to(folder)) + ("/" if p.is_dir() else ""): b"" if p.is_dir() else p.read_bytes()
            for p in sorted(folder.rglob("*"))}


def assert_unchanged(before: dict[str, bytes], after: dict[str, bytes], allow_new: bool = False) -> None:
    """Every file of ``before`` still exists with the same bytes, and (unless ``allow_new``) no
    file was added; the message lists paths only, never contents."""
    lost = sorted(set(before) - set(after))
    changed = sorted(k for k in before if k in after and after[k] != before[k])
    added = [] if allow_new else sorted(set(after) - set(before))
    assert not (lost or changed or added), f"lost: {lost}; changed: {changed}; added: {added}"


def error_line(stderr: str, progress: tuple[str, ...] = (), warning: bool = False) -> str:
    """The one ``error:`` line of a failed command's stderr; fails the test when stderr has any
    other shape. With ``warning``, one ``warning:`` line may precede it; progress lines starting
    with one of ``progress`` may too (for errors that only show once slow work has begun)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert lines, "stderr is empty; a failed command must say why"
    *before, last = lines
    assert last.startswith("error: "), f"the last stderr line is not an 'error:' line:\n{stderr}"
    others = [line for line in before if not (progress and line.startswith(progress))]
    warnings = [line for line in others if line.startswith("warning: ")]
    assert len(others) == len(warnings) <= int(warning), f"more than the error line on stderr:\n{stderr}"
    return last


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str,
                      progress: tuple[str, ...] = (), warning: bool = False) -> str:
    """Exit code 2, one ``error:`` line (no traceback) containing every fragment; returns the line."""
    assert result.returncode == 2, (
        f"exit code {result.returncode}, expected 2\nstderr:\n{result.stderr}\nstdout:\n{result.stdout[:2000]}"
    )
    line = error_line(result.stderr, progress, warning)
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in the error line: {line}"
    return line


def flip_a_weight_byte(checkpoint: Path) -> None:
    """Damage a checkpoint the quiet way (a bad disk sector, a bad copy): one byte in the middle
    of the model's largest weight changes, so the file still loads as a zip and as a pickle."""
    import torch

    weights = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    largest = max(weights.values(), key=lambda t: t.numel()).contiguous().numpy().tobytes()
    data = bytearray(checkpoint.read_bytes())
    start = data.find(largest)
    assert start >= 0, "the weight's bytes are not stored as they are in memory"
    data[start + len(largest) // 2] ^= 0xFF
    checkpoint.write_bytes(bytes(data))


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
