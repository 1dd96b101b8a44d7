"""The ``attn`` command line: tokenize, train, translate, evaluate, and the tools around them.

Every command turns a ``UserError`` into one line on stderr and exit code 2 (no traceback);
anything else is a bug and exits 1.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import signal
import sys
import threading
import warnings
import zipfile
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from seq2seq.errors import MainRankFailed, TrainingStopped, UserError
from seq2seq.files import AtomicOutput, make_output_folder, not_a_file, remove_empty_folders, removed_if_failed

if TYPE_CHECKING:
    from seq2seq.config import ModelConfig


class Precision(str, Enum):
    """Number format for decoding (the config key decode.precision)."""

    fp32 = "fp32"
    bf16 = "bf16"


class CpuKernels(str, Enum):
    """The CPU fast paths (the config key train.cpu_kernels)."""

    auto = "auto"
    off = "off"


CpuKernelsOpt = Annotated[Optional[CpuKernels], typer.Option(
    help="auto: the CPU fast paths that a probe finds working here (see `attn kernels`); off: stock PyTorch "
    "throughout. Default: the checkpoint's train.cpu_kernels.")]


class Which(str, Enum):
    """Which checkpoint of a run folder: the best validated one, or the newest."""

    best = "best"
    last = "last"


WhichOpt = Annotated[Which, typer.Option(
    help="For a run folder: best (best.pt, the best validated model; a warning says when a newer checkpoint "
    "was never validated) or last (the newest step checkpoint).")]


class Engine(str, Enum):
    """Who runs the search: attn's own (PyTorch), or CTranslate2 (decoding.ctranslate2_engine)."""

    torch = "torch"
    ctranslate2 = "ctranslate2"


class Launcher(str, Enum):
    """Who runs a sweep's points: this process one by one, or Ray (seq2seq.ray_launcher)."""

    local = "local"
    ray = "ray"


class OneLineUsageErrors(typer.core.TyperGroup):
    """Usage errors (a bad option value, a missing option, an unknown command) as one
    ``error:`` line and exit code 2, like every other bad input, instead of click's boxed
    multi-line message."""

    def make_context(self, *args, **kwargs):
        with _usage_errors_as_one_line():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _usage_errors_as_one_line():
            return super().invoke(ctx)


class _usage_errors_as_one_line:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:  # recent typer vendors its own copy of click
            from typer._click import exceptions
        except ImportError:
            from click import exceptions

        if exc_type is None or not issubclass(exc_type, exceptions.UsageError):
            return False
        if isinstance(exc, getattr(exceptions, "NoArgsIsHelpError", ())):
            return False  # `attn` alone: click shows the help, as it should
        message = " ".join(exc.format_message().split()).rstrip(".")
        eprint(f"error: {message}; see `{exc.ctx.command_path if exc.ctx else 'attn'} --help`")
        raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    cls=OneLineUsageErrors,
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect configs.")


def show_version(value: bool) -> None:
    if value:
        from seq2seq import __version__

        print(f"attn {__version__} (torch {importlib.metadata.version('torch')})")
        raise typer.Exit()


@app.callback()
def options(
    version: Annotated[bool, typer.Option("--version", callback=show_version, is_eager=True,
                                          help="Print attn's version and exit.")] = False,
) -> None:
    """attn: train, run and compare attention-based neural machine translation models.

    Stages: tokenize -> train -> translate -> evaluate.
    """
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
        try:
            with warnings.catch_warnings(), sigterm_as_interrupt():
                # torch's note on the pickle protocol of a file attn did not write; load_checkpoint
                # refuses such a file with its own one-line error.
                warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
                return command(*args, **kwargs)
        except UserError as exc:
            eprint(f"error: {exc}")
            raise typer.Exit(2) from None
        except MainRankFailed:  # rank 0 said why
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


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (`timeout`, a CI job cancelled) takes Ctrl-C's way out, so a command that is
    stopped cleans up the same: no half-written output, worker processes stopped. (Training
    sets its own handler, which saves a checkpoint first.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
    overwrite: Annotated[bool, typer.Option(help="Start over: delete the earlier run in output_dir (checkpoints, metrics, its evaluations; "
                                                   "not the prepared data) once the new one is ready to start.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
) -> None:
    """Train a model (tokenizes first when the prepared data is missing or stale)."""
    from seq2seq.training.run import train as run_training

    cfg = load(config, set_)
    summary = run_training(cfg, resume=resume, overwrite=overwrite, log=eprint, quiet=quiet)
    if summary.is_main:  # (under torchrun only rank 0 validates, so only it can say)
        best = (f"best valid {summary.metric} {summary.best_score:.2f} at step {summary.best_step}"
                if summary.best_score is not None else "no validation ran")
        eprint(f"done: {summary.steps} steps ({summary.stopped_because}); {best}; outputs in {summary.output_dir}")
        if summary.unvalidated is not None:
            from seq2seq.data.corpus import corpus_paths

            src, ref = corpus_paths(cfg.data.valid, cfg.data.src_lang, cfg.data.tgt_lang)
            report = summary.output_dir / f"eval_valid_step_{summary.steps}"  # not the test set's eval/
            eprint(f"note: the final model was never validated (best.pt is the best validated one); score it with "
                   f"`attn evaluate --checkpoint {summary.unvalidated} --src {src} --ref {ref} --report-dir {report}`")
    if summary.interrupted:  # so that `attn train ... && attn evaluate ...` stops here
        raise typer.Exit(130)


# ----------------------------------------------------------------------------- translate


def open_model(checkpoints: list[Path], tokenizer: Path | None, device: str, which: str = "best"):
    """One checkpoint, or an ensemble of several trained with the same tokenizer."""
    from seq2seq.data.tokenizer import Tokenizer
    from seq2seq.decoding.loading import check_same_vocabulary, load_model
    from seq2seq.decoding.ensemble import Ensemble

    loaded = [load_model(path, device, which, warn=lambda m: eprint(f"warning: {m}")) for path in checkpoints]
    for other in loaded[1:]:
        check_same_vocabulary(loaded[0], other.tokenizer, str(other.path),
                              fix="an ensemble needs checkpoints trained with the same tokenizer")
    if tokenizer is not None:
        if not tokenizer.is_dir():
            raise UserError(f"--tokenizer {tokenizer}: folder not found; pass the prepared-data folder that "
                            "holds spm.model (<output_dir>/data), or drop --tokenizer")
        check_same_vocabulary(loaded[0], Tokenizer.load(tokenizer), str(tokenizer))
    model = loaded[0].model if len(loaded) == 1 else Ensemble([m.model for m in loaded])
    return model, loaded[0]


WorkersOpt = Annotated[int, typer.Option(
    min=1, help="Processes decoding side by side on the CPU, sharing its threads (2 on 2 cores: beam 5 "
    "~1.2x faster; not for greedy at the default batch).")]

EngineOpt = Annotated[Engine, typer.Option(
    help="torch: attn's own search. ctranslate2: the same Transformer searched by CTranslate2 on the CPU, "
    "1.5-1.8x attn's own speed (pip install 'attn\\[ctranslate2]'; greedy or beam, fp32; beam normalises by length ** alpha).")]

CheckpointOpt = Annotated[
    list[Path],
    typer.Option("--checkpoint", "-c", help="A checkpoint .pt or a run's output_dir (its best checkpoint); "
                 "repeat to ensemble several.", show_default=False),
]


def refuse_options(given: dict[str, bool], reason: str) -> None:
    """One error naming the options of ``given`` that were set (True), if any; ``reason`` says why
    they do not apply here."""
    names = [name for name, is_set in given.items() if is_set]
    if names:
        raise UserError(f"{'/'.join(names)}: {reason}")


def check_attention_choice(layer: int, head: int | None, model: ModelConfig, stack: str = "decoder") -> None:
    """--attention-layer and --attention-head must name a layer (of the ``stack`` whose
    attention is drawn) and a head the model has."""
    layers = model.decoder_layers if stack == "decoder" else model.encoder_layers
    if not -layers <= layer < layers:
        raise UserError(f"--attention-layer {layer}: the model has {layers} {stack} layers; "
                        f"choose 0 to {layers - 1} (or -1 for the last)")
    if head is not None and not 0 <= head < model.heads:
        raise UserError(f"--attention-head {head}: the model has {model.heads} heads; choose 0 to {model.heads - 1}, "
                        "or leave it out for their mean")


def check_self_attention_plots(model: object, plots: Path | None, layer: int, head: int | None) -> None:
    """--self-attention needs --attention-plots and one Transformer whose weights are over positions."""
    from seq2seq.models.self_attention_map import has_self_attention_map

    if plots is None:
        raise UserError("--self-attention: draws into --attention-plots DIR; add it")
    if hasattr(model, "members"):
        raise UserError("--self-attention: draws one model's encoder; give one --checkpoint")
    why = has_self_attention_map(model)
    if why is not None:
        raise UserError(f"--self-attention: {why}; drop --self-attention")
    check_attention_choice(layer, head, model.config, stack="encoder")


def self_attention_plotter(model: object, layer: int, head: int | None):
    """Source ids -> the encoder self-attention [S,S] that --self-attention draws."""
    import torch

    from seq2seq.models.self_attention_map import encoder_self_attention

    device = next(model.parameters()).device
    return lambda ids: encoder_self_attention(model, torch.tensor([ids], device=device), layer, head)[0]


@app.command()
@friendly_errors
def translate(
    checkpoint: CheckpointOpt,
    input: Annotated[Optional[Path], typer.Option("--input", "-i", help="Source text, one sentence per line (default: stdin).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Where translations go (default: stdout).")] = None,
    beam: Annotated[Optional[int], typer.Option(min=1, help="Beam size (default: the checkpoint's decode.beam_size).")] = None,
    nbest: Annotated[int, typer.Option(min=1, help="Translations per input line (prefixed with the line number when > 1).")] = 1,
    scores: Annotated[bool, typer.Option(help="Prefix each translation with its score: the log-probability of its "
                                              "pieces and EOS, divided by the length penalty (--sample: not divided).")] = False,
    alignments: Annotated[bool, typer.Option(help="Append hard alignments (source-target piece pairs, Pharaoh i-j).")] = False,
    length_penalty: Annotated[Optional[float], typer.Option(min=0.0, help="GNMT length penalty alpha (default: the checkpoint's decode.length_penalty).")] = None,
    max_len_a: Annotated[Optional[float], typer.Option(min=0.0, help="Max output length = a * source length + b (default: the checkpoint's decode.max_len_a).")] = None,
    max_len_b: Annotated[Optional[int], typer.Option(min=0, help="See --max-len-a (default: the checkpoint's decode.max_len_b).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Decoder rows per batch: sentences x beam size (default: the checkpoint's decode.batch_size).")] = None,
    precision: Annotated[Optional[Precision], typer.Option(help="fp32, or bf16 (faster on CPUs with AVX512-BF16/AMX and on GPUs; default: the checkpoint's decode.precision).")] = None,
    workers: WorkersOpt = 1,
    engine: EngineOpt = Engine.torch,
    sample: Annotated[bool, typer.Option("--sample", help="Sample translations instead of beam search.")] = False,
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature.")] = 1.0,
    top_k: Annotated[int, typer.Option(min=0, help="Sample from the k most likely pieces (0: all).")] = 0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="Nucleus sampling mass.")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(help="Seed for sampling.")] = None,
    attention_plots: Annotated[Optional[Path], typer.Option(help="Write one attention heatmap PNG per sentence here.")] = None,
    max_plots: Annotated[int, typer.Option(min=0, help="At most this many heatmaps (PNGs, or sentences of --attention-html).")] = 50,
    attention_html: Annotated[Optional[Path], typer.Option(help="Write the translations with their attention maps "
                                                                "as one self-contained HTML page here (hover a target "
                                                                "piece to see the source pieces it attends to).")] = None,
    self_attention: Annotated[bool, typer.Option("--self-attention", help="With --attention-plots, draw the encoder's "
                                                 "self-attention over each source (Transformer, one checkpoint) instead of "
                                                 "the cross-attention: local and sparse attention show their pattern.")] = False,
    attention_layer: Annotated[int, typer.Option(help="Transformer: the layer to plot, of the decoder (cross-attention) "
                                                      "or with --self-attention the encoder (-1: last).")] = -1,
    attention_head: Annotated[Optional[int], typer.Option(help="Transformer: head to plot (default: mean of heads).")] = None,
    tokenizer: Annotated[Optional[Path], typer.Option(help="Check this tokenizer folder against the checkpoint's.")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    which: WhichOpt = Which.best,
    cpu_kernels: CpuKernelsOpt = None,
) -> None:
    """Translate text with a trained model (streams stdin to stdout line by line)."""
    import dataclasses
    import os

    from seq2seq.decoding.ensemble import has_attention
    from seq2seq.decoding.loading import use_cpu_kernels
    from seq2seq.decoding.output import AttentionPage, AttentionPlots, write_translations
    from seq2seq.decoding.settings import TranslateSettings
    from seq2seq.decoding.translator import make_translator

    if not sample:
        refuse_options({"--temperature": temperature != 1.0, "--top-k": top_k != 0, "--top-p": top_p != 1.0,
                        "--seed": seed is not None}, "applies to sampling; add --sample, or drop it for beam search")
    if sample and temperature <= 0:
        raise UserError(f"--temperature {temperature}: must be above 0 (lower means closer to greedy)")
    if sample and top_p <= 0:
        raise UserError(f"--top-p {top_p}: must be above 0 (1 keeps every piece)")
    model, loaded = open_model(checkpoint, tokenizer, device, which.value)
    use_cpu_kernels(loaded.config, cpu_kernels and cpu_kernels.value, device)
    if output is not None and output.is_file():  # translations must not replace what is being read
        from seq2seq.run_folder import resolve_checkpoint

        for path in [*([input] if input else []), *(resolve_checkpoint(c, which.value) for c in checkpoint)]:
            if path.exists() and output.samefile(path):
                raise UserError(f"--output {output}: is an input of this command ({path}); choose another file")
        if zipfile.is_zipfile(output):  # how torch saves a checkpoint
            raise UserError(f"--output {output}: is a checkpoint (or another zip archive); choose another file")
    if attention_html is not None and (attention_html.is_dir() or not attention_html.parent.is_dir()):
        raise UserError(f"--attention-html {attention_html}: " + ("is a folder; name a file" if attention_html.is_dir()
                        else f"its folder {attention_html.parent} does not exist; create it or choose another"))
    if self_attention:
        refuse_options({"--alignments": alignments, "--attention-html": attention_html is not None},
                       "comes from the cross-attention, while --self-attention makes --attention-layer name an "
                       "encoder layer; run the two apart")
        check_self_attention_plots(model, attention_plots, attention_layer, attention_head)
    elif (alignments or attention_plots or attention_html) and not has_attention(model):
        option = "--alignments" if alignments else "--attention-plots" if attention_plots else "--attention-html"
        raise UserError(f"{option}: the model has no attention (model.attention: none), so there are no weights to "
                        f"{'align with' if alignments else 'plot'}; drop {option}")
    cross_attention = bool(attention_plots and not self_attention or alignments or attention_html)
    for m in getattr(model, "members", [model]):
        if cross_attention and m.config.arch == "transformer":
            check_attention_choice(attention_layer, attention_head, m.config)
    decode = loaded.config.decode
    overrides = {"beam_size": beam, "length_penalty": length_penalty, "max_len_a": max_len_a,
                 "max_len_b": max_len_b, "batch_size": batch_size, "precision": precision and precision.value}
    settings = TranslateSettings.from_config(dataclasses.replace(
        decode, **{k: v for k, v in overrides.items() if v is not None}),
        nbest=nbest, sampling=sample, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
        return_attention=cross_attention, attention_layer=attention_layer,
        attention_head=attention_head, workers=workers, engine=engine.value)
    if settings.max_len_a == 0 and settings.max_len_b == 0:  # config.rules refuses it in a config
        raise UserError("--max-len-b 0: with --max-len-a 0 as well (given, or the checkpoint's decode.max_len_a), "
                        "every translation would be empty; set --max-len-b to at least 1")
    if input is not None and not input.is_file():
        raise UserError(f"--input {input}: {not_a_file(input)}")
    # Last of the set-up: --engine ctranslate2 converts the model here (about a second).
    translator = make_translator(model, loaded.tokenizer, settings, warn=lambda m: eprint(f"warning: {m}"), device=device)
    plot_folders = make_output_folder(attention_plots, "--attention-plots") if attention_plots is not None else []
    source_fd = os.open(input, os.O_RDONLY) if input else sys.stdin.fileno()
    sink = AtomicOutput(output) if output else None
    drawings: list[AttentionPlots | AttentionPage] = []
    if attention_plots is not None:
        drawings.append(AttentionPlots(attention_plots, max_plots, loaded.tokenizer, self_attention_plotter(
            model, attention_layer, attention_head) if self_attention else None))
    if attention_html is not None:
        drawings.append(AttentionPage(attention_html, max_plots, loaded.tokenizer))
    try:
        line_no = write_translations(translator, source_fd, str(input or "stdin"), sink.file if sink else sys.stdout,
                                     nbest=nbest, scores=scores, alignments=alignments, drawings=drawings)
        for drawing in drawings:
            if isinstance(drawing, AttentionPage):
                drawing.write(str(input or "stdin"))
    except BaseException:
        if sink:
            sink.discard()
        remove_empty_folders(plot_folders)
        raise
    finally:
        translator.close()
        if input:
            os.close(source_fd)
    if sink:
        sink.commit()
    if output:
        eprint(f"translated {line_no} lines -> {output}")


# ----------------------------------------------------------------------------- evaluate


@app.command()
@friendly_errors
def evaluate(
    ref: Annotated[list[Path], typer.Option("--ref", "-r", help="Reference translations (repeat for several).", show_default=False)],
    hyp: Annotated[Optional[Path], typer.Option("--hyp", help="Hypotheses to score (one per line).")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", "-c", help="Translate --src with this checkpoint or run dir, then score.")] = None,
    src: Annotated[Optional[Path], typer.Option("--src", help="Source text for --checkpoint.")] = None,
    beam: Annotated[Optional[int], typer.Option(min=1, help="Beam size for --checkpoint.")] = None,
    precision: Annotated[Optional[Precision], typer.Option(help="fp32 or bf16 for --checkpoint.")] = None,
    workers: WorkersOpt = 1,
    engine: EngineOpt = Engine.torch,
    compare: Annotated[Optional[Path], typer.Option(help="Another system's hypotheses: paired bootstrap test against --hyp.")] = None,
    report_dir: Annotated[Optional[Path], typer.Option(help="Where report.json/report.md go (default: <run>/eval or beside --hyp).")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda (for --checkpoint).")] = "cpu",
    which: WhichOpt = Which.best,
    cpu_kernels: CpuKernelsOpt = None,
) -> None:
    """Score translations with sacrebleu (BLEU, chrF, TER + signatures) and write a report."""
    from seq2seq.evaluation.evaluate import score_hypotheses, translate_and_score

    created = make_output_folder(report_dir, "--report-dir") if report_dir is not None else []
    with removed_if_failed(created):
        if checkpoint is not None:
            if src is None or hyp is not None:
                raise UserError("--checkpoint needs --src (the source text to translate) and no --hyp")
            if compare is not None:
                raise UserError("--compare works with --hyp; translate both systems first")
            report, report_dir = translate_and_score(checkpoint, src, ref, beam, report_dir, device,
                                                     warn=lambda m: eprint(f"warning: {m}"),
                                                     precision=precision and precision.value, workers=workers,
                                                     engine=engine.value, cpu_kernels=cpu_kernels and cpu_kernels.value,
                                                     which=which.value)
        elif hyp is not None:
            refuse_options({"--src": src is not None, "--beam": beam is not None, "--precision": precision is not None,
                            "--workers": workers != 1, "--device": device != "cpu", "--engine": engine != Engine.torch,
                            "--cpu-kernels": cpu_kernels is not None, "--which": which != Which.best},
                           "applies to --checkpoint (translating first); --hyp is scored as it is")
            report, report_dir = score_hypotheses(hyp, ref, compare, report_dir)
        else:
            raise UserError("nothing to score: pass --hyp FILE, or --checkpoint PATH with --src FILE")
    for name in ("bleu", "chrf", "ter"):
        print(f"{name.upper():5} {report[name]:6.2f}  {report['signature'][name]}")
    for name, r in report.get("paired_bootstrap", {}).items():
        if isinstance(r, dict):
            print(f"paired bootstrap {name}: {compare} {r['a']:.2f} vs {hyp} {r['b']:.2f} (p = {r['p_value']:.4f})")
    eprint(f"report: {report_dir / 'report.md'}")


# ----------------------------------------------------------------------------- kernels


@app.command(name="kernels")
@friendly_errors
def show_kernels(cpu_kernels: CpuKernelsOpt = None) -> None:
    """Show which CPU fast paths this machine uses, each decided by running it on a tiny input."""
    import torch

    from seq2seq import kernels
    from seq2seq.kernels.precision import bf16_rnn_runs, bf16_runs
    from seq2seq.kernels.probe import processor_name

    kernels.configure(cpu_kernels.value if cpu_kernels else "auto")
    print(f"processor: {processor_name()}; torch {torch.__version__}; mode {kernels.mode()}")
    for name, decision in kernels.decisions().items():
        print(f"{name:20} {'on ' if decision else 'off'}  {decision.reason}")
    bf16 = bf16_runs()
    how = ("natively" if kernels.native_bf16(torch.device("cpu")) else "emulated (likely slower than fp32)") if bf16 else ""
    print(f"{'bf16':20} {'on ' if bf16 else 'off'}  {bf16.reason}{', ' + how if how else ''}")
    rnn = bf16_rnn_runs()
    print(f"{'bf16_rnn':20} {'on ' if rnn else 'off'}  " + ("LSTMs run under bf16 autocast" if rnn else
          "no bf16 RNN kernel here: under bf16 autocast the RNN calls run in float32"))


# ----------------------------------------------------------------------------- average


@app.command()
@friendly_errors
def average(
    run_dir: Annotated[Path, typer.Argument(help="A run's output_dir.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where the averaged checkpoint goes.", show_default=False)],
    last: Annotated[int, typer.Option(min=1, help="Average the last N step checkpoints.")] = 2,
) -> None:
    """Average the weights of a run's last N checkpoints into one (often +0.5 BLEU for free)."""
    from seq2seq.checkpoint import average_checkpoints
    from seq2seq import checkpoint as ckpt
    from seq2seq import run_folder

    if output.is_dir():
        raise UserError(f"--output {output}: is a directory; give a file path for the averaged checkpoint")
    folder = run_folder.checkpoint_dir(run_dir)
    if folder.is_dir() and output.parent.exists() and output.parent.samefile(folder):
        raise UserError(f"--output {output}: is in the run's checkpoint folder, where it would replace or pass "
                        f"for a training checkpoint; write it elsewhere, e.g. {run_dir / 'averaged.pt'}")
    paths = run_folder.step_checkpoints(run_dir)[-last:]
    if not paths:
        raise UserError(f"{run_dir}: no step checkpoints to average; train first")
    with removed_if_failed(make_output_folder(output.parent, "--output")):
        payloads = [ckpt.load_checkpoint(p) for p in paths]
        averaged = dict(payloads[-1])
        averaged["model"] = average_checkpoints([p["model"] for p in payloads])
        averaged.pop("optimizer", None)  # an average is for translating, not for resuming
        ckpt.save_atomic(averaged, output)
    eprint(f"averaged {len(paths)} checkpoints ({', '.join(p.name for p in paths)}) -> {output}")


# ----------------------------------------------------------------------------- experiment


@app.command()
@friendly_errors
def experiment(
    sweep: Annotated[Path, typer.Argument(help="The sweep YAML (base config + grid of overrides).", show_default=False)],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the points and stop.")] = False,
    shard: Annotated[Optional[str], typer.Option(help="I/N: run only shard I of N (every N-th point, by their "
                                                      "order in the file), e.g. one CI job of a matrix of N.")] = None,
    merge: Annotated[Optional[list[Path]], typer.Option(help="Instead of running: copy the points the shards "
                                                             "finished from their output folders (repeat the option "
                                                             "for each) and write the whole sweep's leaderboard.")] = None,
    launcher: Annotated[Launcher, typer.Option(help="local: one point after another; ray: points as Ray tasks, "
                                                    "each with the sweep's resources (pip install 'attn\\[ray]').")] = Launcher.local,
    address: Annotated[Optional[str], typer.Option(help="--launcher ray: the cluster to join (default: start a "
                                                        "local Ray instance).")] = None,
) -> None:
    """Run a sweep: tokenize -> train -> evaluate per point, then a leaderboard (md, csv, png)."""
    from seq2seq.experiment import describe_points, load_sweep, run_sweep
    from seq2seq.sweep_shards import merge_shards, parse_shard
    from seq2seq.sweep_shards import shard as shard_of

    if shard is not None and merge:
        raise UserError("--shard/--merge: a shard runs points, a merge collects them; give one of the two")
    if address is not None and launcher != Launcher.ray:
        raise UserError(f"--address {address}: names a Ray cluster; add --launcher ray")
    plan = load_sweep(sweep)
    if merge:
        leaderboard = merge_shards(plan, merge, log=eprint)
        print(leaderboard.read_text(), end="")
        eprint(f"leaderboard: {leaderboard} (+ .csv, .png, report.html)")
        return
    if shard is not None:
        plan = shard_of(plan, *parse_shard(shard))
    print(describe_points(plan))
    if dry_run:
        return
    if launcher == Launcher.ray:
        from seq2seq.ray_launcher import run_sweep_on_ray

        leaderboard = run_sweep_on_ray(plan, log=eprint, address=address)
    else:
        leaderboard = run_sweep(plan, log=eprint)
    print(leaderboard.read_text(), end="")
    eprint(f"leaderboard: {leaderboard} (+ .csv, .png, report.html)")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
