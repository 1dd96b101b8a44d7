"""The ``attn`` command line: tokenize, train, translate, evaluate, and the tools around them.

Every command turns a ``UserError`` into one line on stderr and exit code 2 (no traceback);
anything else is a bug and exits 1.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from seq2seq.errors import UserError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="attn: train, run and compare attention-based neural machine translation models.\n\n"
         "Stages: tokenize -> train -> translate -> evaluate.",
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect configs.")
app.add_typer(config_app, name="config")

ConfigArg = Annotated[Path, typer.Argument(help="The run's YAML config.", show_default=False)]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a config key, e.g. --set model.attention=general (repeatable)."),
]


def eprint(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def friendly_errors(command):
    """Exit 2 with one line for user errors; exit 130 on Ctrl-C; let bugs show their traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from seq2seq.training.trainer import TrainingStopped

        try:
            return command(*args, **kwargs)
        except UserError as exc:
            eprint(f"error: {exc}")
            raise typer.Exit(2) from None
        except TrainingStopped as exc:
            eprint(f"error: {exc}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            eprint("interrupted")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            # `attn translate | head` closes our stdout early; that is not an error.
            sys.stderr.close()
            raise typer.Exit(0) from None

    return wrapper


def load(config: Path, overrides: list[str] | None):
    from seq2seq.config import load_config

    return load_config(config, overrides or [])


# ----------------------------------------------------------------------------- config


@config_app.command("show")
@friendly_errors
def config_show(config: ConfigArg, set_: SetOpt = None) -> None:
    """Print the fully resolved config (defaults filled in, overrides applied, notes as comments)."""
    from seq2seq.config import dump_config

    print(dump_config(load(config, set_)), end="")


# ----------------------------------------------------------------------------- tokenize


@app.command()
@friendly_errors
def tokenize(
    config: ConfigArg,
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option(help="Rebuild even when the prepared data is up to date.")] = False,
) -> None:
    """Train SentencePiece on the training data and binarise train/valid/test."""
    from seq2seq.data.prepare import prepare_data

    prepare_data(load(config, set_), log=eprint, force=force)


# ----------------------------------------------------------------------------- train


@app.command()
@friendly_errors
def train(
    config: ConfigArg,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in output_dir.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Start over, deleting the checkpoints in output_dir.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
) -> None:
    """Train a model (tokenizes first when the prepared data is missing or stale)."""
    from seq2seq.training.trainer import train as run_training

    cfg = load(config, set_)
    summary = run_training(cfg, resume=resume, overwrite=overwrite, log=eprint, quiet=quiet)
    best = f"{summary.best_score:.2f}" if summary.best_score is not None else "n/a"
    eprint(f"done: {summary.steps} steps ({summary.stopped_because}); best valid {summary.metric} "
           f"{best} at step {summary.best_step}; outputs in {summary.output_dir}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
