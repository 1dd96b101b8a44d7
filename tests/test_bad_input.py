"""Bad input, end to end: every command run as a user runs it, fed what users get wrong.

The project rule: bad input gets ONE line on stderr, ``error: ...``, naming the file, line or
config key and what to do; exit code 2; no Python traceback; and nothing already written is
lost or overwritten. Every case below checks all four (``assert_user_error`` + a snapshot of
the output location taken before the command and compared after).

One tiny model is trained per test session (``tiny_run``) and shared, read-only. Commands run
through ``tests.helpers_cli.run_attn``: one process per command, forked from a server that has
torch imported already; ``ATTN_TESTS_FRESH=1`` runs ``python -m cli.main`` from scratch instead
(same results, about 10x slower).
"""

from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path

import pytest

from tests.helpers_cli import (
    SAMPLE,
    assert_unchanged,
    assert_user_error,
    error_line,
    flip_a_weight_byte,
    run_attn,
    snapshot,
    tiny_run,
    write_config,
    write_corpus,
)

# Something no text file contains: the start of a zip (what torch.save writes), NUL bytes included.
BINARY = b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(range(256)) * 4


def attn(*args: object, cwd: Path, input: bytes | str | None = None, fresh: bool = False):
    """``run_attn`` that also checks a failed command changed nothing under ``cwd`` and added
    nothing there (every test below works in its own folder)."""
    return run_attn(*args, cwd=cwd, input=input, fresh=fresh, unchanged=cwd)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "attn-shared"


@pytest.fixture(scope="session")
def run_dir(session_dir: Path) -> Path:
    """The session's tiny trained run (do not modify it)."""
    session_dir.mkdir(exist_ok=True)
    return tiny_run(session_dir)


@pytest.fixture(scope="session")
def ckpt(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "best.pt"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A private corpus copy a test may break."""
    return write_corpus(tmp_path / "corpus", {"train": 200, "valid": 10, "test": 10})


@pytest.fixture
def config(tmp_path: Path, corpus: Path) -> Path:
    """A tiny config over ``corpus`` with output_dir ``tmp/run``."""
    return write_config(tmp_path / "run.yaml", corpus, tmp_path / "run")


def copy_run(run_dir: Path, dest: Path) -> Path:
    """A copy of the trained run without its (large-ish) prepared data."""
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("data"))
    return dest


# ============================================================================ config


CONFIG_CASES = {
    # id: (YAML text, --set overrides, fragments the error line must contain)
    "yaml-syntax-error": (
        "model:\n  arch: gru\n  attention: [additive\ntrain:\n  lr: 0.1\n", [],
        ["cfg.yaml", "YAML error at line 4, column 6", "fix the YAML syntax"],
    ),
    "yaml-tab-indent": ("model:\n\tarch: gru\n", [], ["cfg.yaml", "line 2, column 1"]),
    "unknown-key-suggests": ("model:\n  atention: dot\n", [], ["model.atention", "unknown key", "did you mean 'attention'"]),
    "unknown-section-suggests": ("modle:\n  arch: gru\n", [], ["modle", "did you mean 'model'"]),
    "unknown-key-no-close-match": ("train:\n  zzz: 1\n", [], ["train.zzz", "allowed keys", "batch_tokens"]),
    "wrong-type-int": ("model:\n  hidden_dim: big\n", [], ["model.hidden_dim", "expected an integer", "'big'"]),
    "wrong-type-float-for-int": ("model:\n  hidden_dim: 32.5\n", [], ["model.hidden_dim", "expected an integer"]),
    "wrong-type-bool": ("model:\n  tie_embeddings: 3\n", [], ["model.tie_embeddings", "true or false"]),
    "wrong-type-list": ("train:\n  betas: 0.9\n", [], ["train.betas", "list of 2 numbers"]),
    "bad-choice": ("model:\n  attention: bahdanau_x\n", [], ["model.attention", "'bahdanau_x'", "additive"]),
    "section-not-mapping": ("model: 5\n", [], ["model", "expected a mapping"]),
    "null-value": ("model:\n  hidden_dim:\n", [], ["model.hidden_dim", "required"]),
    "negative-dropout": ("", ["model.dropout=-0.1"], ["model.dropout", "-0.1", "at least 0.0 and below 1.0"]),
    "dropout-of-1": ("", ["model.dropout=1"], ["model.dropout", "below 1.0"]),
    "label-smoothing-of-1": ("", ["train.label_smoothing=1.0"], ["train.label_smoothing", "below 1.0"]),
    "negative-seed": ("", ["train.seed=-1"], ["train.seed", "at least 0"]),
    "min-lr-above-lr": ("", ["train.min_lr=0.1"], ["train.min_lr", "above train.lr"]),
    "no-room-for-any-output": ("", ["decode.max_len_a=0", "decode.max_len_b=0"], ["decode.max_len_b", "at least 1"]),
    "empty-output-dir": ("output_dir: ''\n", [], ["output_dir", "empty"]),
    "batch-smaller-than-a-pair": ("", ["train.batch_tokens=64"], ["train.batch_tokens", "data.max_len=128"]),
    "odd-hidden-for-two-directions": ("", ["model.hidden_dim=33"], ["model.hidden_dim", "even"]),
    "key-of-another-section": ("", ["train.beam_size=3"], ["train.beam_size", "did you mean 'decode.beam_size'"]),
    "beam-size-0": ("decode:\n  beam_size: 0\n", [], ["decode.beam_size", "at least 1"]),
    "beam-size-0-set": ("", ["decode.beam_size=0"], ["decode.beam_size", "at least 1"]),
    "window-0": ("", ["model.window=0"], ["model.window", "at least 1"]),
    "lr-0": ("", ["train.lr=0"], ["train.lr", "above 0"]),
    "lr-nan": ("", ["train.lr=.nan"], ["train.lr", "finite number"]),
    "length-penalty-inf": ("decode:\n  length_penalty: .inf\n", [], ["decode.length_penalty", "finite number"]),
    "beta-of-1": ("", ["train.betas=[0.9, 1.0]"], ["train.betas", "below 1"]),
    "beta-above-1": ("", ["train.betas=[0.9, 1.5]"], ["train.betas[1]", "at most 1.0"]),
    "transformer-without-attention": (
        "model:\n  arch: transformer\n  attention: none\n", [], ["model.attention", "'none'", "transformer"],
    ),
    "share-vocab-needs-joint": (
        "model:\n  share_vocab: true\ndata:\n  tokenizer:\n    joint: false\n", [],
        ["model.share_vocab", "data.tokenizer.joint"],
    ),
    "heads-divide-hidden": (
        "model:\n  arch: transformer\n  hidden_dim: 30\n  heads: 4\n", [], ["model.hidden_dim", "model.heads"],
    ),
    "learned-positions-too-few": (
        "model:\n  arch: transformer\n  positions: learned\n  max_positions: 100\n", [],
        ["model.max_positions", "100", "data.max_len=128"],
    ),
    "coverage-needs-additive": ("", ["model.attention=dot", "model.coverage=true"],
                                ["model.coverage", "model.attention: additive", "dot"]),
    "coverage-loss-needs-coverage": ("", ["train.coverage_loss=1"], ["train.coverage_loss", "model.coverage: true"]),
    "hard-with-sparsemax": ("", ["model.attention=hard", "model.attention_normalizer=sparsemax"],
                            ["model.attention_normalizer", "sparsemax", "model.attention: hard"]),
    "exact-hard-needs-luong": ("", ["model.attention=hard", "model.hard_attention=exact", "model.decoder_style=bahdanau"],
                               ["model.hard_attention: exact", "model.decoder_style: luong"]),
    "linformer-too-short": ("", ["model.arch=transformer", "model.attention=linformer", "model.max_positions=64"],
                            ["model.max_positions", "64", "Linformer", "data.max_len=128"]),
    "performer-with-sparsemax": ("", ["model.arch=transformer", "model.attention=performer",
                                      "model.attention_normalizer=sparsemax"],
                                 ["model.attention_normalizer", "sparsemax", "model.attention: performer"]),
    "linformer-with-gaussian-bias": ("", ["model.arch=transformer", "model.attention=linformer", "model.gaussian_bias=true"],
                                     ["model.gaussian_bias", "model.attention: linformer"]),
    "gumbel-temperature-0": ("", ["model.gumbel_temperature=0"], ["model.gumbel_temperature", "above 0"]),
    "chunk-size-0": ("", ["model.chunk_size=0"], ["model.chunk_size", "at least 1"]),
    "string-read-as-a-boolean": ("data:\n  tgt_lang: no\n", [], ["data.tgt_lang", "bool", "quote"]),
    "same-languages": ("data:\n  src_lang: en\n  tgt_lang: en\n", [], ["data.tgt_lang"]),
    "set-without-equals": ("", ["foo"], ["--set 'foo'", "key.path=value"]),
    "set-empty-path-part": ("", ["model..x=1"], ["model..x=1", "key.path=value"]),
    "set-unknown-key": ("", ["model.atention=dot"], ["model.atention", "did you mean 'attention'"]),
    "set-into-a-value": ("model:\n  arch: gru\n", ["model.arch.x=1"], ["--set model.arch.x", "not a section"]),
    "set-bad-yaml-value": ("", ["model.arch=[gru"], ["model.arch=[gru", "not valid YAML"]),
    "duplicate-key": ("model:\n  arch: gru\n  hidden_dim: 32\n  arch: lstm\n", [],
                      ["cfg.yaml", "line 4", "'arch' appears twice"]),
    "sweep-file": ("base: configs/demo.yaml\ngrid:\n  model.arch: [gru]\n", [], ["cfg.yaml", "sweep file", "attn experiment"]),
    "top-level-list": ("- model\n- train\n", [], ["cfg.yaml", "top level must be a mapping"]),
    "top-level-scalar": ("just some text\n", [], ["cfg.yaml", "top level must be a mapping"]),
}


def test_whole_numbers_in_exponent_form_are_integers(tmp_path: Path) -> None:
    (tmp_path / "cfg.yaml").write_text("train:\n  max_steps: 1e5\n", encoding="utf-8")
    result = attn("config", "show", "cfg.yaml", "--set", "train.valid_every=2000.0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "max_steps: 100000\n" in result.stdout and "valid_every: 2000\n" in result.stdout


@pytest.mark.parametrize("case", CONFIG_CASES, ids=list(CONFIG_CASES))
def test_config_errors(case: str, tmp_path: Path) -> None:
    text, overrides, fragments = CONFIG_CASES[case]
    (tmp_path / "cfg.yaml").write_text(text, encoding="utf-8")
    args = [arg for expr in overrides for arg in ("--set", expr)]
    result = attn("config", "show", "cfg.yaml", *args, cwd=tmp_path)
    assert_user_error(result, *fragments)
    assert result.stdout == ""


def test_config_file_missing(tmp_path: Path) -> None:
    result = attn("config", "show", "nope.yaml", cwd=tmp_path)
    assert_user_error(result, "nope.yaml", "not found")


def test_config_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "cfg.yaml").write_bytes(b"output_dir: caf\xe9\n")
    assert_user_error(attn("config", "show", "cfg.yaml", cwd=tmp_path), "cfg.yaml", "UTF-8")


def test_config_is_binary(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(BINARY)
    assert_user_error(attn("config", "show", "model.pt", cwd=tmp_path), "model.pt")


def test_bad_config_leaves_existing_run_untouched(tmp_path: Path, run_dir: Path) -> None:
    """`attn train` with a broken config fails before touching the output_dir it names."""
    out = copy_run(run_dir, tmp_path / "run")
    (tmp_path / "cfg.yaml").write_text(f"output_dir: {out}\nmodel:\n  dropout: 2\n", encoding="utf-8")
    before = snapshot(out)
    assert_user_error(attn("train", "cfg.yaml", cwd=tmp_path), "model.dropout", "below 1.0")
    assert_unchanged(before, snapshot(out))


# ============================================================================ data (attn tokenize)


def tokenize(config: Path, *sets: str):
    args = [arg for expr in sets for arg in ("--set", expr)]
    return attn("tokenize", config, *args, cwd=config.parent)


def test_missing_corpus_file(config: Path, corpus: Path) -> None:
    (corpus / "train.en").unlink()
    assert_user_error(tokenize(config), str(corpus / "train.en"), "not found", "data.train")


def test_missing_valid_prefix(config: Path, corpus: Path) -> None:
    assert_user_error(tokenize(config, f"data.valid={corpus / 'dev'}"), str(corpus / "dev.es"), "not found")


def test_line_count_mismatch_names_both_files(config: Path, corpus: Path) -> None:
    lines = (corpus / "train.en").read_text(encoding="utf-8").splitlines(keepends=True)
    (corpus / "train.en").write_text("".join(lines[:-3]), encoding="utf-8")
    assert_user_error(
        tokenize(config), f"{corpus / 'train.es'} has 200 lines", f"{corpus / 'train.en'} has 197",
    )


def test_empty_corpus(config: Path, corpus: Path) -> None:
    (corpus / "train.es").write_bytes(b"")
    (corpus / "train.en").write_bytes(b"")
    assert_user_error(tokenize(config), str(corpus / "train.es"), "empty")


def test_everything_filtered_keeps_previous_prepared_data(tmp_path: Path, config: Path) -> None:
    """data.max_len so small no pair survives: a clear error, and the earlier prepared folder
    (built by a good run) is still there, byte for byte."""
    assert tokenize(config).returncode == 0
    prepared = tmp_path / "run" / "data"
    before = snapshot(tmp_path / "run")
    assert (prepared / "stamp.json").is_file()
    # Filtering happens while building, so the "tokenize: building ..." progress line precedes the error.
    assert_user_error(tokenize(config, "data.max_len=2"), "data.max_len", "filtered out", "raise",
                      progress=("tokenize: building",))
    assert_unchanged(before, snapshot(tmp_path / "run"))  # no staging folder left behind either


def test_invalid_utf8_in_corpus_names_file_and_line(config: Path, corpus: Path) -> None:
    lines = (corpus / "train.es").read_bytes().split(b"\n")
    lines[6] = b"Jes\xfas dijo: caf\xe9"  # Latin-1, not UTF-8
    (corpus / "train.es").write_bytes(b"\n".join(lines))
    assert_user_error(tokenize(config), str(corpus / "train.es"), "line 7", "UTF-8")


def test_binary_file_as_corpus(config: Path, corpus: Path) -> None:
    (corpus / "valid.en").write_bytes(BINARY)
    assert_user_error(tokenize(config), str(corpus / "valid.en"), "line 1", "binary")


def test_a_vocabulary_too_small_names_the_config_keys(config: Path) -> None:
    result = tokenize(config, "data.tokenizer.vocab_size=16")
    line = assert_user_error(result, "data.tokenizer", "data.tokenizer.character_coverage", progress=("tokenize:",))
    assert "--character_coverage" not in line  # SentencePiece's own flag, which attn does not have


def test_prepared_dir_is_a_file(tmp_path: Path, config: Path) -> None:
    (tmp_path / "prepared").write_text("keep me\n")
    assert_user_error(tokenize(config, f"data.prepared_dir={tmp_path / 'prepared'}"),
                      str(tmp_path / "prepared"), "not a folder")
    assert (tmp_path / "prepared").read_text() == "keep me\n"


def test_prepared_dir_holds_something_else(tmp_path: Path, config: Path) -> None:
    other = tmp_path / "thesis"
    other.mkdir()
    (other / "chapter1.tex").write_text("\\section{Intro}\n")
    before = snapshot(other)
    assert_user_error(tokenize(config, f"data.prepared_dir={other}"), str(other), "not empty")
    assert_unchanged(before, snapshot(other))


# ============================================================================ train


def test_train_refuses_a_different_run(tmp_path: Path, run_dir: Path, config: Path) -> None:
    out = copy_run(run_dir, tmp_path / "run")
    before = snapshot(out)
    assert {"config.yaml", "checkpoints/best.pt"} <= set(before)
    result = attn("train", config, "--set", "model.hidden_dim=48", cwd=tmp_path)
    assert_user_error(result, str(out), "already holds a run", "--resume", "--overwrite")
    assert_unchanged(before, snapshot(out))


def test_resume_and_overwrite_together(tmp_path: Path, run_dir: Path, config: Path) -> None:
    copy_run(run_dir, tmp_path / "run")
    assert_user_error(attn("train", config, "--resume", "--overwrite", cwd=tmp_path), "--resume", "--overwrite")


def test_fp16_training_without_a_gpu(tmp_path: Path, config: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = attn("train", config, "--set", "train.precision=fp16", "--set", "train.device=auto", cwd=tmp_path)
    assert_user_error(result, "train.precision", "fp16 needs a GPU")
    assert not (tmp_path / "run").exists()


def test_resume_with_nothing_to_resume(tmp_path: Path, config: Path) -> None:
    result = attn("train", config, "--resume", cwd=tmp_path)
    assert_user_error(result, "output_dir", str(tmp_path / "run"), "no checkpoint to resume")
    assert not (tmp_path / "run").exists()


def test_output_dir_is_a_file(tmp_path: Path, config: Path) -> None:
    (tmp_path / "run").write_text("notes\n")
    assert_user_error(attn("train", config, cwd=tmp_path), "output_dir", "exists and is a file")
    assert (tmp_path / "run").read_text() == "notes\n"


def test_train_with_missing_data(tmp_path: Path, config: Path, corpus: Path) -> None:
    (corpus / "valid.es").unlink()
    assert_user_error(run_attn("train", config, cwd=tmp_path), str(corpus / "valid.es"), "not found")


def test_failed_train_does_not_block_the_next_one(tmp_path: Path, config: Path, corpus: Path) -> None:
    (corpus / "valid.es").rename(corpus / "valid.es.bak")
    assert run_attn("train", config, cwd=tmp_path).returncode == 2
    (corpus / "valid.es.bak").rename(corpus / "valid.es")
    result = run_attn("train", config, "--set", "train.max_steps=1", "--quiet", cwd=tmp_path)
    assert "already holds a run" not in result.stderr


def test_overwrite_with_bad_input_keeps_the_earlier_run(tmp_path: Path, run_dir: Path, config: Path,
                                                         corpus: Path) -> None:
    copy_run(run_dir, tmp_path / "run")
    with open(corpus / "train.en", "a", encoding="utf-8") as f:
        f.write("one line too many\n")
    result = attn("train", config, "--overwrite", cwd=tmp_path)  # attn() checks nothing changed
    assert_user_error(result, "train.es", "train.en", "lines")


def test_overwrite_deletes_what_described_the_earlier_model(tmp_path: Path, run_dir: Path) -> None:
    config, here = own_run(run_dir, tmp_path / "run")
    (tmp_path / "run" / "eval").mkdir()
    (tmp_path / "run" / "eval" / "report.json").write_text('{"bleu": 31.4}\n')
    (tmp_path / "run" / "results.csv").write_text("bleu\n31.4\n")
    result = run_attn("train", config, "--overwrite", *here, "--set", "train.max_steps=1", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    left = {p.name for p in (tmp_path / "run").iterdir()}
    assert "eval" not in left and "results.csv" not in left
    assert {"checkpoints", "config.yaml", "metrics.jsonl", "data"} <= left


def own_run(run_dir: Path, dest: Path) -> tuple[Path, list[str]]:
    """A full copy of the tiny run (prepared data too), and the --set that points its own
    config at the copy."""
    shutil.copytree(run_dir, dest)
    return dest / "config.yaml", ["--set", f"output_dir={dest}"]


def test_refused_resume_changes_nothing(tmp_path: Path, run_dir: Path) -> None:
    config, here = own_run(run_dir, tmp_path / "run")
    result = attn("train", config, "--resume", *here, "--set", "model.hidden_dim=48", cwd=tmp_path)
    assert_user_error(result, "step_", "does not match this config", progress=("tokenize:",))


def test_resume_with_another_tokenizer_does_not_rebuild_the_data(tmp_path: Path, run_dir: Path) -> None:
    config, here = own_run(run_dir, tmp_path / "run")
    result = attn("train", config, "--resume", *here, "--set", "data.tokenizer.vocab_size=200", cwd=tmp_path)
    assert_user_error(result, str(tmp_path / "run" / "data"), "data section of the config changed", "--overwrite")


def test_resume_skips_a_checkpoint_without_optimizer_state(tmp_path: Path, run_dir: Path) -> None:
    import torch

    from seq2seq import checkpoint as ckpt

    from seq2seq import run_folder

    config, here = own_run(run_dir, tmp_path / "run")
    newest = run_folder.step_checkpoints(tmp_path / "run")[-1]
    averaged = ckpt.load_checkpoint(newest)
    averaged.pop("optimizer")
    torch.save(averaged, run_folder.step_checkpoint_path(tmp_path / "run", 9999))
    result = run_attn("train", config, "--resume", *here, "--set", "train.max_steps=3", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "skipping" in result.stderr and "no optimizer state" in result.stderr
    assert f"resumed from {newest}" in result.stderr


# ============================================================================ translate


def translate(ckpt: Path, *args: object, cwd: Path, input: bytes | str | None = None):
    return attn("translate", "--checkpoint", ckpt, "--beam", "1", *args, cwd=cwd, input=input)


def test_beam_0_option(tmp_path: Path, ckpt: Path) -> None:
    result = attn("translate", "--checkpoint", ckpt, "--beam", "0", cwd=tmp_path, input="hola\n")
    assert_user_error(result, "--beam")


def test_missing_required_option(tmp_path: Path) -> None:
    assert_user_error(attn("translate", cwd=tmp_path), "--checkpoint")


def test_unknown_command(tmp_path: Path) -> None:
    assert_user_error(attn("tranlsate", cwd=tmp_path, fresh=True), "tranlsate", "translate")


def test_invalid_utf8_on_stdin(tmp_path: Path, ckpt: Path) -> None:
    result = attn("translate", "-c", ckpt, "--beam", "1", cwd=tmp_path, input=b"hola\ncaf\xe9 con leche\n",
                      fresh=True)  # a real pipe on stdin
    assert_user_error(result, "stdin line 2", "UTF-8")


def test_invalid_utf8_in_input_file(tmp_path: Path, ckpt: Path) -> None:
    (tmp_path / "in.es").write_bytes(b"hola\n\nadi\xf3s\n")
    assert_user_error(translate(ckpt, "--input", "in.es", cwd=tmp_path), "in.es line 3", "UTF-8")


def test_binary_input_file(tmp_path: Path, ckpt: Path) -> None:
    """A checkpoint given as the text to translate (an easy slip with -c/-i)."""
    assert_user_error(translate(ckpt, "--input", ckpt, cwd=tmp_path), str(ckpt), "line ")


def test_input_file_missing(tmp_path: Path, ckpt: Path) -> None:
    assert_user_error(translate(ckpt, "--input", "nope.es", cwd=tmp_path), "--input", "nope.es", "not found")


def test_output_is_a_directory(tmp_path: Path, ckpt: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old\n")
    before = snapshot(tmp_path / "out")
    assert_user_error(translate(ckpt, "--output", "out", cwd=tmp_path, input="hola\n"),
                      "--output", "is a directory")
    assert_unchanged(before, snapshot(tmp_path / "out"))


def test_failed_translate_keeps_the_previous_output(tmp_path: Path, ckpt: Path) -> None:
    (tmp_path / "out.en").write_text("last week's translations\n")
    (tmp_path / "in.es").write_bytes(b"hola\nbuenos d\xedas\n")
    before = snapshot(tmp_path)
    assert_user_error(translate(ckpt, "-i", "in.es", "-o", "out.en", cwd=tmp_path), "in.es line 2")
    assert_unchanged(before, snapshot(tmp_path))  # the old output, and no temp file left


def test_failed_commands_leave_no_new_folders(tmp_path: Path, ckpt: Path, config: Path) -> None:
    """Outputs aimed at folders that do not exist yet, by commands that fail after creating them:
    the folders go again (``attn`` checks that nothing at all was added under ``tmp_path``)."""
    (tmp_path / "in.es").write_bytes(b"hola\nbuenos d\xedas\n")  # fails on line 2, mid-run
    (tmp_path / "ref.en").write_text("hello\ngood day\n")
    assert_user_error(translate(ckpt, "-i", "in.es", "-o", "new/dir/out.en", "--attention-plots", "plots/a",
                                cwd=tmp_path), "in.es line 2")
    assert_user_error(attn("evaluate", "-r", "ref.en", "-c", ckpt, "--src", "in.es", "--report-dir", "reports/a",
                           cwd=tmp_path), "in.es", "line 2")
    (tmp_path / "run0" / "checkpoints").mkdir(parents=True)
    bad_checkpoint("format-999", ckpt, tmp_path / "run0" / "checkpoints").rename(
        tmp_path / "run0" / "checkpoints" / "step_00000001.pt")
    assert_user_error(attn("average", "run0", "-o", "avg/x.pt", cwd=tmp_path), "format 999")
    small_vocabulary = ("--set", "data.tokenizer.vocab_size=16")  # fails inside SentencePiece
    for command in ("tokenize", "train"):
        assert_user_error(attn(command, config, "--set", f"output_dir={tmp_path / 'runs' / 'new'}", *small_vocabulary,
                               cwd=tmp_path), "data.tokenizer", progress=("tokenize:",))


def test_output_that_is_an_input_is_refused(tmp_path: Path, ckpt: Path) -> None:
    mine = tmp_path / "model.pt"
    shutil.copy(ckpt, mine)
    shutil.copy(ckpt, tmp_path / "other.pt")
    (tmp_path / "in.es").write_text("Hola.\n")
    assert_user_error(translate(mine, "-i", "in.es", "-o", "in.es", cwd=tmp_path), "--output in.es", "an input")
    assert_user_error(translate(mine, "-i", "in.es", "-o", "model.pt", cwd=tmp_path), "--output model.pt", "an input")
    assert_user_error(translate(mine, "-i", "in.es", "-o", "other.pt", cwd=tmp_path), "other.pt", "is a checkpoint")


@pytest.mark.parametrize("option", [["--top-k", "5"], ["--temperature", "0.5"], ["--seed", "1"]])
def test_sampling_settings_without_sample(tmp_path: Path, ckpt: Path, option: list[str]) -> None:
    """They would change nothing: beam search does not sample."""
    assert_user_error(translate(ckpt, *option, cwd=tmp_path, input="Hola.\n"), option[0], "add --sample")


def test_output_limits_that_allow_nothing(tmp_path: Path, ckpt: Path) -> None:
    result = translate(ckpt, "--max-len-a", "0", "--max-len-b", "0", cwd=tmp_path, input="Hola.\n")
    assert_user_error(result, "--max-len-b 0", "every translation would be empty")


def test_translating_options_with_hypotheses_to_score(tmp_path: Path) -> None:
    (tmp_path / "hyp.en").write_text("Hello.\n")
    result = attn("evaluate", "--hyp", "hyp.en", "--ref", "hyp.en", "--beam", "5", cwd=tmp_path)
    assert_user_error(result, "--beam", "applies to --checkpoint")


def test_attention_layer_and_head_must_exist() -> None:
    from cli.main import check_attention_choice
    from seq2seq.config import ModelConfig
    from seq2seq.errors import UserError

    model = ModelConfig(arch="transformer", attention="scaled_dot", heads=2, decoder_layers=3)
    for layer, head in [(0, 0), (2, 1), (-1, None), (-3, None)]:
        check_attention_choice(layer, head, model)
    for layer, head, option in [(3, None, "--attention-layer 3"), (-4, None, "--attention-layer -4"),
                                (0, 2, "--attention-head 2"), (0, -1, "--attention-head -1")]:
        with pytest.raises(UserError, match=option):
            check_attention_choice(layer, head, model)


def test_version(tmp_path: Path) -> None:
    from seq2seq import __version__

    result = attn("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith(f"attn {__version__} ")


@pytest.mark.parametrize("option", [["--temperature", "0"], ["--top-p", "0"]])
def test_sampling_settings_that_cannot_sample(tmp_path: Path, ckpt: Path, option: list[str]) -> None:
    result = translate(ckpt, "--sample", *option, cwd=tmp_path, input="Hola.\n")
    assert_user_error(result, f"{option[0]} 0", "must be above 0")


@pytest.mark.parametrize("command", ["translate", "evaluate"])
def test_a_device_this_machine_lacks(tmp_path: Path, ckpt: Path, command: str) -> None:
    import torch

    (tmp_path / "in.es").write_text("Hola.\n")
    args = (["translate", "-c", ckpt, "-i", "in.es"] if command == "translate"
            else ["evaluate", "-c", ckpt, "--src", "in.es", "--ref", "in.es"])
    assert_user_error(attn(*args, "--device", "tpu", cwd=tmp_path), "--device tpu", "use cpu or cuda")
    if not torch.cuda.is_available():
        assert_user_error(attn(*args, "--device", "cuda", cwd=tmp_path), "--device cuda", "no GPU")


def test_attention_plots_is_a_file(tmp_path: Path, ckpt: Path) -> None:
    (tmp_path / "plots").write_text("x\n")
    result = translate(ckpt, "--attention-plots", "plots", cwd=tmp_path, input="hola\n")
    assert_user_error(result, "--attention-plots", "plots", "is a file")
    assert (tmp_path / "plots").read_text() == "x\n"


def test_nbest_larger_than_beam(tmp_path: Path, ckpt: Path) -> None:
    result = attn("translate", "-c", ckpt, "--beam", "2", "--nbest", "3", cwd=tmp_path, input="hola\n")
    assert_user_error(result, "nbest 3", "2")


def test_alignments_of_a_model_without_attention(tmp_path: Path, config: Path) -> None:
    result = attn("train", config, "--quiet", "--set", "model.attention=none", "--set", "train.max_steps=1",
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    none = tmp_path / "run" / "checkpoints" / "best.pt"
    assert_user_error(translate(none, "--alignments", cwd=tmp_path, input="hola\n"), "--alignments", "no attention")
    assert_user_error(translate(none, "--attention-plots", "plots", cwd=tmp_path, input="hola\n"),
                      "--attention-plots", "no attention")


def test_tokenizer_folder_missing(tmp_path: Path, ckpt: Path) -> None:
    result = translate(ckpt, "--tokenizer", "no-such-dir", cwd=tmp_path, input="hola\n")
    assert_user_error(result, "--tokenizer no-such-dir", "not found")


@pytest.fixture(scope="session")
def other_tokenizer(session_dir: Path) -> Path:
    """A tokenizer trained on the same text with another vocabulary size."""
    from seq2seq.config import load_config
    from seq2seq.data.tokenizer import train_tokenizer

    corpus = write_corpus(session_dir / "other-corpus", {"train": 100})
    folder = session_dir / "other-tokenizer"
    folder.mkdir(exist_ok=True)
    cfg = load_config(None, [f"data.train={corpus / 'train'}", "data.tokenizer.vocab_size=120"])
    train_tokenizer(cfg.data, folder)
    return folder


def test_tokenizer_from_another_vocabulary(tmp_path: Path, ckpt: Path, other_tokenizer: Path) -> None:
    result = translate(ckpt, "--tokenizer", other_tokenizer, cwd=tmp_path, input="hola\n")
    assert_user_error(result, str(other_tokenizer), "not the one", "drop --tokenizer")
    assert result.stdout == ""


def test_ensemble_of_checkpoints_with_other_tokenizers_says_so(ckpt: Path, other_tokenizer: Path) -> None:
    from seq2seq.data.tokenizer import Tokenizer
    from seq2seq.decoding.loading import check_same_vocabulary, load_model
    from seq2seq.errors import UserError

    fix = "an ensemble needs checkpoints trained with the same tokenizer"
    with pytest.raises(UserError, match=f"other.pt: this tokenizer is not the one .*; {fix}$"):
        check_same_vocabulary(load_model(ckpt), Tokenizer.load(other_tokenizer), "other.pt", fix=fix)


def test_tokenizer_of_the_checkpoint_is_accepted(tmp_path: Path, ckpt: Path, run_dir: Path) -> None:
    result = translate(ckpt, "--tokenizer", run_dir / "data", cwd=tmp_path, input="hola\n")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1


def bad_checkpoint(kind: str, good: Path, folder: Path) -> Path:
    path = folder / f"{kind}.pt"
    if kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "random-bytes":
        path.write_bytes(bytes((i * 7919 + 13) % 251 for i in range(4096)))
    elif kind == "text-file":
        path.write_text("model: gru\nthis is a config, not a checkpoint\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "format-999":
        import torch

        payload = torch.load(good, map_location="cpu", weights_only=True)
        payload["format"] = 999
        torch.save(payload, path)
    elif kind == "one-byte-changed":
        shutil.copy(good, path)
        flip_a_weight_byte(path)
    elif kind == "plain-dict":
        import torch

        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "damaged-tokenizer":
        import torch

        payload = torch.load(good, map_location="cpu", weights_only=True)
        payload["tokenizer"]["src"] = payload["tokenizer"]["src"][:100]  # SentencePiece bytes cut short
        torch.save(payload, path)
    return path


# What the error says; "refused to load" is what torch's weights-only unpickler gives for any
# file that is not a pickle of plain data (see test_garbage_checkpoint_is_not_called_code).
BAD_CHECKPOINTS = {
    "truncated": ("truncated or corrupt",),
    "random-bytes": ("not a readable attn checkpoint", "refused to load"),
    "text-file": ("not a readable attn checkpoint", "refused to load"),
    "empty": ("not a readable attn checkpoint",),
    "format-999": ("checkpoint format 999", "not supported"),
    "plain-dict": ("not an attn checkpoint",),
    "one-byte-changed": ("damaged", "does not match the checksum", "another checkpoint"),
    "damaged-tokenizer": ("tokenizer stored in this checkpoint is damaged", "another checkpoint"),
}


@pytest.mark.parametrize("kind", BAD_CHECKPOINTS)
def test_bad_checkpoint(kind: str, tmp_path: Path, ckpt: Path) -> None:
    path = bad_checkpoint(kind, ckpt, tmp_path)
    before = snapshot(tmp_path)
    result = translate(path, cwd=tmp_path, input="hola\n")
    line = assert_user_error(result, str(path))
    assert any(expected in line for expected in BAD_CHECKPOINTS[kind]), line
    assert_unchanged(before, snapshot(tmp_path))


@pytest.mark.parametrize("kind", ["random-bytes", "text-file"])
def test_garbage_checkpoint_is_not_called_code(kind: str, tmp_path: Path, ckpt: Path) -> None:
    path = bad_checkpoint(kind, ckpt, tmp_path)
    line = assert_user_error(translate(path, cwd=tmp_path, input="hola\n"), str(path))
    assert "possibly code" not in line and "not a readable attn checkpoint" in line, line


def test_checkpoint_missing(tmp_path: Path) -> None:
    result = attn("translate", "-c", "model.pt", cwd=tmp_path, input="hola\n")
    assert_user_error(result, "model.pt", "not found")


def test_run_dir_without_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    result = attn("translate", "-c", "run", cwd=tmp_path, input="hola\n")
    assert_user_error(result, "run", "no checkpoints")


def test_bad_checkpoint_in_evaluate(tmp_path: Path, ckpt: Path) -> None:
    path = bad_checkpoint("format-999", ckpt, tmp_path)
    (tmp_path / "src.es").write_text("hola\n")
    (tmp_path / "ref.en").write_text("hello\n")
    result = attn("evaluate", "-r", "ref.en", "-c", path, "--src", "src.es", cwd=tmp_path)
    assert_user_error(result, str(path), "format 999")


# ============================================================================ evaluate


@pytest.fixture
def texts(tmp_path: Path) -> Path:
    (tmp_path / "hyp.en").write_text("in the beginning\nand god said\nlet there be light\n")
    (tmp_path / "ref.en").write_text("In the beginning\nAnd God said\nLet there be light\n")
    return tmp_path


def test_evaluate_needs_hyp_or_checkpoint(texts: Path) -> None:
    assert_user_error(attn("evaluate", "-r", "ref.en", cwd=texts), "--hyp", "--checkpoint")


def test_evaluate_compare_of_the_wrong_length_names_the_file(texts: Path) -> None:
    (texts / "other.en").write_text("in the beginning\n")
    result = attn("evaluate", "-r", "ref.en", "--hyp", "hyp.en", "--compare", "other.en", cwd=texts)
    assert_user_error(result, "ref.en has 3 lines", "other.en has 1")


def test_a_folder_where_a_file_belongs(tmp_path: Path, ckpt: Path, config: Path, texts: Path) -> None:
    (tmp_path / "folder.es").mkdir()
    (tmp_path / "folder.en").mkdir()
    assert_user_error(attn("train", "folder.es", cwd=tmp_path), "folder.es", "is a folder")
    assert_user_error(translate(ckpt, "-i", "folder.es", cwd=tmp_path), "--input folder.es", "is a folder")
    assert_user_error(attn("evaluate", "-r", "ref.en", "--hyp", "folder.en", cwd=tmp_path), "--hyp folder.en", "is a folder")
    result = attn("train", config, "--set", f"data.train={tmp_path / 'folder'}", cwd=tmp_path)
    assert_user_error(result, "folder.es", "is a folder", "data.train")


def test_evaluate_reference_of_the_wrong_length(texts: Path) -> None:
    (texts / "ref.en").write_text("In the beginning\nAnd God said\n")
    (texts / "eval").mkdir()
    (texts / "eval" / "report.json").write_text('{"bleu": 31.4}\n')
    (texts / "results.csv").write_text("bleu\n31.4\n")
    before = snapshot(texts)
    result = attn("evaluate", "-r", "ref.en", "--hyp", "hyp.en", cwd=texts)
    assert_user_error(result, "ref.en has 2 lines", "hyp.en has 3")
    assert_unchanged(before, snapshot(texts))


def test_evaluate_reference_is_binary(texts: Path) -> None:
    (texts / "ref.en").write_bytes(BINARY)
    assert_user_error(attn("evaluate", "-r", "ref.en", "--hyp", "hyp.en", cwd=texts), "ref.en", "line 1")


def test_evaluate_reference_missing(texts: Path) -> None:
    assert_user_error(attn("evaluate", "-r", "nope.en", "--hyp", "hyp.en", cwd=texts), "--ref", "nope.en")


def test_evaluate_hypotheses_not_utf8(texts: Path) -> None:
    (texts / "hyp.en").write_bytes(b"in the beginning\nand god said\nlet there be l\xefght\n")
    assert_user_error(attn("evaluate", "-r", "ref.en", "--hyp", "hyp.en", cwd=texts), "hyp.en", "line 3", "UTF-8")


def test_evaluate_checkpoint_without_src(texts: Path, ckpt: Path) -> None:
    assert_user_error(attn("evaluate", "-r", "ref.en", "-c", ckpt, cwd=texts), "--src")


def test_evaluate_report_dir_is_a_file(texts: Path) -> None:
    (texts / "report").write_text("keep\n")
    result = attn("evaluate", "-r", "ref.en", "--hyp", "hyp.en", "--report-dir", "report", cwd=texts)
    assert_user_error(result, "--report-dir", "report", "is a file")
    assert (texts / "report").read_text() == "keep\n"


def test_evaluate_checkpoint_wrong_length_keeps_previous_hypotheses(tmp_path: Path, ckpt: Path) -> None:
    """--checkpoint/--src with a reference of the wrong length: refused before translating,
    and the hypotheses.txt of an earlier evaluation in --report-dir is not overwritten."""
    (tmp_path / "src.es").write_text("hola\nadiós\n")
    (tmp_path / "ref.en").write_text("hello\n")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "hypotheses.txt").write_text("earlier hypotheses\n")
    before = snapshot(tmp_path)
    result = attn("evaluate", "-r", "ref.en", "-c", ckpt, "--src", "src.es", "--report-dir", "eval",
                      cwd=tmp_path)
    assert_user_error(result, "--ref ref.en has 1 lines", "--src src.es has 2")
    assert_unchanged(before, snapshot(tmp_path))


# ============================================================================ average


def test_average_without_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    assert_user_error(attn("average", "run", "-o", "avg.pt", cwd=tmp_path), "run", "no step checkpoints")


def test_average_output_is_a_directory(tmp_path: Path, run_dir: Path) -> None:
    out = copy_run(run_dir, tmp_path / "run")
    (tmp_path / "avg").mkdir()
    before = snapshot(tmp_path)
    result = attn("average", "run", "-o", "avg", cwd=tmp_path)
    assert_user_error(result, "avg")
    assert_unchanged(before, snapshot(tmp_path))
    assert out.is_dir()


def test_average_into_the_checkpoint_folder_is_refused(tmp_path: Path, run_dir: Path) -> None:
    copy_run(run_dir, tmp_path / "run")
    for name in ("best.pt", "step_00099999.pt"):
        result = attn("average", "run", "-o", f"run/checkpoints/{name}", cwd=tmp_path)
        assert_user_error(result, name, "checkpoint folder", "averaged.pt")


# ============================================================================ experiment


def test_sweep_with_an_empty_grid(tmp_path: Path, config: Path) -> None:
    if run_attn("experiment", "--help", cwd=tmp_path).returncode != 0:
        pytest.skip("attn experiment is not available yet")
    (tmp_path / "sweep.yaml").write_text(f"base: {config}\noutput_dir: {tmp_path / 'sweep'}\ngrid: {{}}\n")
    result = attn("experiment", "sweep.yaml", "--dry-run", cwd=tmp_path)
    assert_user_error(result, "sweep.yaml", "grid")
    assert not (tmp_path / "sweep").exists()


def test_a_run_config_given_to_experiment(tmp_path: Path, config: Path) -> None:
    assert_user_error(attn("experiment", config, "--dry-run", cwd=tmp_path), "run.yaml", "a run config", "attn train")


# ============================================================================ read-only locations


class ReadOnly:
    """Make every write under ``root`` fail with EROFS, as on a read-only mount (tests run as
    root, so chmod cannot make a folder unwritable). Reads still work."""

    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = str(root.resolve())
        real_open, real_os_open = io.open, os.open

        def inside(path) -> bool:
            try:
                absolute = os.path.abspath(os.fspath(path))
                return absolute == self.root or absolute.startswith(self.root + os.sep)
            except TypeError:  # a file descriptor
                return False

        def refuse(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

        def fake_open(file, mode="r", *args, **kwargs):
            if inside(file) and any(c in mode for c in "wax+"):
                refuse(file)
            return real_open(file, mode, *args, **kwargs)

        def fake_os_open(path, flags, *args, **kwargs):
            if inside(path) and flags & self.WRITE_FLAGS:
                refuse(path)
            return real_os_open(path, flags, *args, **kwargs)

        def guard(real):
            def wrapper(path, *args, **kwargs):
                if inside(path):
                    refuse(path)
                return real(path, *args, **kwargs)
            return wrapper

        real_mkdir = os.mkdir

        def fake_mkdir(path, *args, **kwargs):
            if inside(path):
                if os.path.exists(path):  # what Linux reports first on a read-only mount
                    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(path))
                refuse(path)
            return real_mkdir(path, *args, **kwargs)

        def guard_two(real):
            def wrapper(src, dst, *args, **kwargs):
                if inside(src) or inside(dst):
                    refuse(dst)
                return real(src, dst, *args, **kwargs)
            return wrapper

        monkeypatch.setattr(io, "open", fake_open)
        monkeypatch.setattr("builtins.open", fake_open)
        monkeypatch.setattr(os, "open", fake_os_open)
        monkeypatch.setattr(os, "mkdir", fake_mkdir)
        for name in ("unlink", "remove", "rmdir"):
            monkeypatch.setattr(os, name, guard(getattr(os, name)))
        for name in ("replace", "rename"):
            monkeypatch.setattr(os, name, guard_two(getattr(os, name)))


def invoke(args: list[str], stdin: str = "") :
    """Run the CLI in this process (so the ReadOnly patches apply); stderr kept separate."""
    from typer.testing import CliRunner

    from cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args], input=stdin)


def assert_in_process_user_error(result, *fragments: str) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    line = error_line(result.stderr)
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in the error line: {line}"


@pytest.fixture
def read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "existing.txt").write_text("already here\n")
    ReadOnly(ro, monkeypatch)
    return ro


def test_read_only_translate_output(read_only: Path, ckpt: Path) -> None:
    before = snapshot(read_only)
    (read_only.parent / "in.es").write_text("hola\n")
    result = invoke(["translate", "-c", ckpt, "--beam", "1", "-i", read_only.parent / "in.es",
                     "-o", read_only / "out.en"])
    assert_in_process_user_error(result, "--output", str(read_only / "out.en"), "Read-only file system")
    assert_unchanged(before, snapshot(read_only))


def test_read_only_train_output_dir(read_only: Path, config: Path) -> None:
    before = snapshot(read_only)
    result = invoke(["train", config, "--set", f"output_dir={read_only / 'run'}"])
    assert_in_process_user_error(result, "output_dir", str(read_only / "run"), "Read-only file system")
    assert_unchanged(before, snapshot(read_only))


def test_read_only_prepared_dir(read_only: Path, config: Path) -> None:
    before = snapshot(read_only)
    result = invoke(["tokenize", config, "--set", f"data.prepared_dir={read_only / 'data'}"])
    assert_in_process_user_error(result, str(read_only / "data"), "Read-only file system")
    assert_unchanged(before, snapshot(read_only))


def test_read_only_report_dir(read_only: Path, texts: Path) -> None:
    before = snapshot(read_only)
    result = invoke(["evaluate", "-r", texts / "ref.en", "--hyp", texts / "hyp.en",
                     "--report-dir", read_only / "eval"])
    assert_in_process_user_error(result, "--report-dir", "Read-only file system")
    assert_unchanged(before, snapshot(read_only))


def test_read_only_average_output(read_only: Path, tmp_path: Path, run_dir: Path) -> None:
    copy_run(run_dir, tmp_path / "run")
    before = snapshot(read_only)
    result = invoke(["average", tmp_path / "run", "-o", read_only / "models" / "avg.pt"])
    assert_in_process_user_error(result, str(read_only / "models"), "Read-only file system")
    assert_unchanged(before, snapshot(read_only))


# ============================================================================ awkward but valid input


def test_empty_and_blank_lines_translate_to_empty_lines(tmp_path: Path, ckpt: Path) -> None:
    result = attn("translate", "-c", ckpt, "--beam", "1", cwd=tmp_path, fresh=True,
                      input="\n      \nEn el principio.\n\n\t\n")
    assert result.returncode == 0, result.stderr
    out = result.stdout.split("\n")
    assert out[-1] == "" and len(out) - 1 == 5, result.stdout
    assert out[0] == out[1] == out[3] == out[4] == ""


def test_input_without_final_newline(tmp_path: Path, ckpt: Path) -> None:
    result = translate(ckpt, cwd=tmp_path, input="hola\r\nadiós")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2


@pytest.mark.slow
def test_very_long_lines(tmp_path: Path, ckpt: Path) -> None:
    """A 1,000-character line, a line far over the model's source limit (truncated with a
    warning) and a line of only spaces: no crash, one output line per input line."""
    words = (SAMPLE / "train.es").read_text(encoding="utf-8").split()
    thousand = " ".join(words)[:1000]
    huge = " ".join(words)[:30_000]
    lines = [thousand, " " * 1000, huge, "Y dijo Dios."]
    (tmp_path / "in.es").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = translate(ckpt, "-i", "in.es", "-o", "out.en", "--max-len-a", "0.2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    out = (tmp_path / "out.en").read_text(encoding="utf-8").split("\n")
    assert len(out) == len(lines) + 1 and out[-1] == ""
    assert out[1] == ""
