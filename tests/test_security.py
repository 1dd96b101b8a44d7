"""attn never runs code hidden in its inputs, and writes only where it is told to.

* A checkpoint is a pickle; one whose objects call ``os.system`` when unpickled must be
  refused (``torch.load(weights_only=True)``) by the library and by every command, and the
  command must not have run. Each test first proves its file *would* run the command when
  loaded unsafely, so a refusal is not just a parse error.
* A YAML config or sweep with a ``!!python/object/apply`` tag is refused (safe_load only).
* No ``eval``/``exec``, unsafe YAML loading, bare pickle loading, shell commands, or
  ``torch.load`` without ``weights_only=True`` anywhere in the sources.
* ``--output`` paths are used as given, relative to the working directory.
"""

from __future__ import annotations

import ast
import os
import pickle
import shlex
import shutil
import tokenize
from pathlib import Path

import pytest
import torch

from seq2seq.errors import UserError
from seq2seq.checkpoint import load_checkpoint
from tests.helpers_cli import REPO, assert_user_error, run_attn, snapshot, tiny_run


class RunsShellCommand:
    """Unpickling this runs ``touch MARKER``: what a poisoned checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.getbasetemp() / "attn-shared"
    base.mkdir(exist_ok=True)
    return tiny_run(base)  # the same tiny run test_bad_input.py uses (trained once per session)


def poisoned(kind: str, folder: Path, marker: Path, good: Path) -> Path:
    """A checkpoint-looking file that runs ``touch marker`` when unpickled unsafely."""
    path = folder / f"{kind}.pt"
    if kind == "zip-payload":  # torch.save's format, payload at the top
        torch.save({"format": 1, "model": RunsShellCommand(marker)}, path)
    elif kind == "legacy-pickle":  # a bare pickle, which torch.load also accepts
        with open(path, "wb") as file:
            pickle.dump({"format": 1, "model": {}, "x": RunsShellCommand(marker)}, file)
    elif kind == "real-checkpoint-with-payload":  # a working checkpoint, one value swapped
        payload = torch.load(good, map_location="cpu", weights_only=True)
        payload["run_state"]["step"] = RunsShellCommand(marker)
        torch.save(payload, path)
    return path


KINDS = ["zip-payload", "legacy-pickle", "real-checkpoint-with-payload"]


def assert_would_run_code(kind: str, tmp_path: Path, good: Path) -> None:
    """Control: an unsafe load of the same kind of file does run the command (a harmless touch)."""
    control_marker = tmp_path / "control-marker"
    path = poisoned(kind, tmp_path / "control", control_marker, good)
    try:
        torch.load(path, map_location="cpu", weights_only=False)
    except RuntimeError:
        pass  # a bare pickle runs its code first, then torch finds no magic number
    assert control_marker.exists(), "the poisoned file does not run code even when loaded unsafely"
    shutil.rmtree(tmp_path / "control")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "control").mkdir()
    return tmp_path


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", KINDS)
def test_load_checkpoint_refuses_code(kind: str, workdir: Path, run_dir: Path) -> None:
    good = run_dir / "checkpoints" / "best.pt"
    assert_would_run_code(kind, workdir, good)
    marker = workdir / "pwned"
    path = poisoned(kind, workdir, marker, good)
    with pytest.raises(UserError, match="refused to load"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_translate_refuses_code(kind: str, workdir: Path, run_dir: Path) -> None:
    marker = workdir / "pwned"
    path = poisoned(kind, workdir, marker, run_dir / "checkpoints" / "best.pt")
    result = run_attn("translate", "--checkpoint", path, cwd=workdir, input="hola\n", fresh=kind == "zip-payload")
    assert_user_error(result, str(path), "refused to load")
    assert result.stdout == ""
    assert not marker.exists()


def test_other_commands_refuse_code(workdir: Path, run_dir: Path) -> None:
    """evaluate --checkpoint, and average over a run whose step checkpoint was replaced."""
    marker = workdir / "pwned"
    good = run_dir / "checkpoints" / "best.pt"
    path = poisoned("real-checkpoint-with-payload", workdir, marker, good)
    (workdir / "src.es").write_text("hola\n")
    (workdir / "ref.en").write_text("hello\n")
    result = run_attn("evaluate", "-r", "ref.en", "-c", path, "--src", "src.es", cwd=workdir)
    assert_user_error(result, str(path), "refused to load")

    run = workdir / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(good, run / "checkpoints" / "step_00000001.pt")
    shutil.copy(path, run / "checkpoints" / "step_00000002.pt")
    result = run_attn("average", run, "-o", workdir / "avg.pt", cwd=workdir)
    assert_user_error(result, "step_00000002.pt", "refused to load")
    assert not (workdir / "avg.pt").exists()
    assert not marker.exists()


# ----------------------------------------------------------------------------- YAML


def yaml_payload(marker: Path) -> str:
    return f'!!python/object/apply:os.system ["touch {marker}"]'


@pytest.mark.parametrize("where", ["value", "top-level", "set"])
def test_config_yaml_cannot_run_code(where: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    config = tmp_path / "cfg.yaml"
    args = ["config", "show", config]
    if where == "value":
        config.write_text(f"output_dir: {yaml_payload(marker)}\n")
    elif where == "top-level":
        config.write_text(yaml_payload(marker) + "\n")
    else:
        config.write_text("")
        args += ["--set", f"output_dir={yaml_payload(marker)}"]
    result = run_attn(*args, cwd=tmp_path)
    line = assert_user_error(result)
    assert "cfg.yaml" in line or "--set" in line
    assert not marker.exists()


def test_train_and_sweep_yaml_cannot_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "cfg.yaml").write_text(f"model:\n  arch: {yaml_payload(marker)}\n")
    assert_user_error(run_attn("train", "cfg.yaml", cwd=tmp_path), "cfg.yaml", "line 2")
    (tmp_path / "sweep.yaml").write_text(f"base: cfg.yaml\ngrid:\n  model.arch: [{yaml_payload(marker)}]\n")
    if run_attn("experiment", "--help", cwd=tmp_path).returncode == 0:
        assert_user_error(run_attn("experiment", "sweep.yaml", "--dry-run", cwd=tmp_path), "sweep.yaml")
    assert not marker.exists()


# ----------------------------------------------------------------------------- sources


def source_files() -> list[Path]:
    files = sorted((REPO / "seq2seq").rglob("*.py")) + sorted((REPO / "cli").rglob("*.py"))
    assert len(files) > 10
    return files


def test_no_eval_or_exec() -> None:
    """Real ``eval(``/``exec(`` calls only (tokenized: strings, comments and ``model.eval()`` don't count)."""
    found = []
    for path in source_files():
        with open(path, "rb") as file:
            tokens = [t for t in tokenize.tokenize(file.readline)
                      if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT)]
        for before, name, after in zip(tokens, tokens[1:], tokens[2:]):
            if (name.type == tokenize.NAME and name.string in ("eval", "exec") and after.string == "("
                    and before.string != "."):
                found.append(f"{path.relative_to(REPO)}:{name.start[0]}")
    assert not found, f"eval/exec in: {found}"


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def test_no_unsafe_loading_or_shell() -> None:
    """yaml: safe_load only; pickle: never; torch.load: weights_only=True; no shell commands."""
    unsafe = {"yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load",
              "yaml.full_load_all", "pickle.load", "pickle.loads", "os.system", "os.popen", "marshal.loads"}
    found = []
    for path in source_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name, where = dotted(node.func), f"{path.relative_to(REPO)}:{node.lineno}"
            keywords = {k.arg: k.value for k in node.keywords}
            if name in unsafe:
                found.append(f"{where} {name}")
            if name == "torch.load":
                weights_only = keywords.get("weights_only")
                if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                    found.append(f"{where} torch.load without weights_only=True")
            shell = keywords.get("shell")
            if isinstance(shell, ast.Constant) and shell.value is True:
                found.append(f"{where} {name}(shell=True)")
    assert not found, found


# ----------------------------------------------------------------------------- output paths


def test_relative_output_paths_are_used_as_given(tmp_path: Path, run_dir: Path) -> None:
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    (work / "in.es").write_text("hola\n\nY dijo Dios\n", encoding="utf-8")
    ckpt = run_dir / "checkpoints" / "best.pt"
    for output in ("out.en", "sub/dir/out.en", "../elsewhere/salida ñ.en", "./sub/../flat.en"):
        result = run_attn("translate", "-c", ckpt, "--beam", "1", "-i", "in.es", "-o", output, cwd=work,
                          fresh=output == "out.en")
        assert result.returncode == 0, result.stderr
        assert f"-> {Path(output)}" in result.stderr  # reported as given
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["elsewhere/salida ñ.en", "work/flat.en", "work/in.es", "work/out.en", "work/sub/dir/out.en"]
    for path in ("elsewhere/salida ñ.en", "work/flat.en", "work/out.en", "work/sub/dir/out.en"):
        assert len((tmp_path / path).read_text(encoding="utf-8").split("\n")) == 4  # 3 lines + final ""
    assert snapshot(elsewhere)  # and nothing under a rewritten path such as work/elsewhere
    assert not (work / "elsewhere").exists()
