"""``make gpu-check``: every GPU code path of attn once, on the bundled sample corpus, then one
summary table (estimated at 6 minutes on one H100, not yet measured; the table is out within 9
minutes in any case: a check that would run past them is cut short or skipped).

    python -m bench.gpu_check        # exit 0 when every row is ok, 1 when a row FAILs (or was skipped)

Without a CUDA device it prints one line saying so and exits 0.

Each check runs in a child process of its own (``--check NAME``) under a time limit, so that a
crash, a hang or a broken CUDA context fails its own row, not the table; whatever goes wrong
inside a check becomes FAIL and one line of reason. The children's output goes to
``bench/out/gpu_check/logs/``. The checks, in order:

train {T,R} {bf16,fp16}  configs/bench_T.yaml (Transformer 3+3, d256) and bench_R.yaml (2-layer
                         LSTM, additive attention, input feeding) on the sample corpus, 200 updates
                         through ``seq2seq.training.trainer.train``. ok: the loss falls (first
                         against last 10-update window), and no update was skipped in bf16 (in
                         fp16 at most 10%: the GradScaler skips the updates whose gradients overflow).
resume exact             T in bf16 with train.deterministic: ``attn train`` uninterrupted, and
                         stopped by SIGTERM mid-run then resumed. ok: every update's loss, and the
                         final weights, are bit-identical.
torchrun                 ``python -m torch.distributed.run --nproc_per_node=N`` (N: the visible GPUs,
                         NCCL between them; with one GPU torchrun starts a single process and no
                         group), train.update_tokens = 2 x N x batch_tokens (2 micro-batches per
                         update and rank), SIGTERM to torchrun mid-run, then --resume to the end.
translate {T,R} ...      the models of ``train T/R bf16`` translate the test set (200 lines) on the
                         GPU and on the CPU: greedy, beam 5, beam 5 in bf16, greedy with attention
                         (--alignments). The row counts the lines that differ between the two.
host syncs ...           torch.cuda.set_sync_debug_mode("warn"), its warnings counted over training
                         updates (the loop should never wait for the device) and decoding steps.
speed base [compile]     Transformer-base (6+6 layers, d512, 8 heads, FFN 2048) in bf16: target
                         tokens/s and model FLOP utilisation (``transformer_training_flops`` over
                         the peak of ``peak_bf16_flops``), without and with train.compile.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "bible-en-es-sample"
WORKDIR = ROOT / "bench" / "out" / "gpu_check"
CONFIGS = {"T": ROOT / "configs" / "bench_T.yaml", "R": ROOT / "configs" / "bench_R.yaml"}
# The checks' time: the table must be out within 9 minutes, and a check cut short at the end
# takes up to 20 s more to stop (after start-up's few seconds).
TOTAL_SECONDS = 8.25 * 60
ROWS_MARK = "gpu-check rows: "  # a child's last line of stdout: its rows as JSON
TRAIN_STEPS = 200


@dataclass
class Row:
    check: str
    status: str  # "ok", "FAIL" or "SKIP"
    result: str


class CheckFailed(Exception):
    """A check's verdict, with its one-line reason."""


# ----------------------------------------------------------------------------- pure helpers


def render_table(rows: Sequence[Row]) -> str:
    """The summary table: a header, then one line per row, the columns padded to their widest entry."""
    header = Row("check", "status", "result")
    lines = [header, *rows]
    check_width = max(len(r.check) for r in lines)
    status_width = max(len(r.status) for r in lines)
    text = [f"{r.check:<{check_width}}  {r.status:<{status_width}}  {' '.join(r.result.split())}" for r in lines]
    text.insert(1, "-" * max(len(line) for line in text))
    return "\n".join(text)


def transformer_training_flops(dim: int, ffn_dim: int, encoder_layers: int, decoder_layers: int, vocab: int,
                               src_lens: Sequence[int], tgt_lens: Sequence[int]) -> float:
    """Model FLOPs of one training update of a Transformer on sentence pairs of these lengths.

    ``src_lens``: source pieces + EOS of each pair; ``tgt_lens``: target pieces + EOS (the
    positions the decoder reads and the loss scores). Counted: 2 FLOPs per multiply-add of
    every product with a weight matrix and of the attention (Q K^T and weights x V, over the
    whole S x S or T x T square: causality not discounted), on real tokens only (padding is
    waste, not model work), the vocabulary projection of every target token; not counted:
    embeddings, norms, softmax, the optimizer. Training is 3 x forward (backward: 2 x).
    """
    d, f = dim, ffn_dim
    total = 0.0
    for s, t in zip(src_lens, tgt_lens):
        encoder = encoder_layers * (2 * s * (4 * d * d + 2 * d * f) + 4 * s * s * d)
        decoder = decoder_layers * (2 * t * (4 * d * d + 2 * d * d + 2 * d * f)  # self-attn, cross q/out, FFN
                                    + 2 * s * 2 * d * d  # cross-attention keys and values of the memory
                                    + 4 * t * t * d + 4 * t * s * d)
        total += encoder + decoder + 2 * t * d * vocab
    return 3.0 * total


# Dense bf16 peaks (TFLOP/s, without sparsity) by a part of the device name, first match wins.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
                    ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0))


def peak_bf16_flops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU in FLOP/s, from its name (H100 SXM: 989e12); None if unknown."""
    for part, tflops in PEAK_BF16_TFLOPS:
        if part.lower() in device_name.lower():
            return tflops * 1e12
    return None


def speed_summary(target_tokens: int, flops: float, seconds: float, device_name: str) -> tuple[str, str]:
    """A speed row's status and text: target tokens/s, model TFLOP/s and MFU against the peak."""
    rate = flops / seconds
    peak = peak_bf16_flops(device_name)
    mfu = f"MFU {rate / peak:.1%} of {peak / 1e12:.0f} TFLOP/s" if peak else f"MFU n/a (no peak known for {device_name})"
    return "ok", f"{target_tokens / seconds:,.0f} tgt tok/s, {rate / 1e12:.1f} model TFLOP/s, {mfu}"


def judge_training(records: list[dict[str, Any]], precision: str, max_steps: int) -> tuple[str, str]:
    """A training row's status and text, from the run's metrics.jsonl records."""
    logged = [r for r in records if "loss" in r]
    if not logged:
        return "FAIL", "no training records in metrics.jsonl"
    first, last = logged[0], logged[-1]
    skipped = last["skipped_steps"]
    speeds = [r["tokens_per_s"] for r in logged[1:]] or [first["tokens_per_s"]]  # the first window warms up
    text = (f"loss {first['loss']:.2f} -> {last['loss']:.2f}, {skipped} of {last['step']} updates skipped, "
            f"{statistics.median(speeds):,.0f} tgt tok/s")
    problems = []
    if last["step"] != max_steps:
        problems.append(f"stopped at update {last['step']} of {max_steps}")
    if not last["loss"] < first["loss"]:
        problems.append("the loss did not fall")
    if precision == "fp16" and skipped > 0.1 * max_steps:
        problems.append("over 10% of the updates skipped")
    elif precision != "fp16" and skipped:
        problems.append(f"updates skipped in {precision}")
    return ("FAIL" if problems else "ok"), "; ".join([*problems, text])


def compare_losses(uninterrupted: list[dict[str, Any]], resumed: list[dict[str, Any]]) -> tuple[bool, str]:
    """Whether two runs logged the same updates with bit-identical losses, and how they compare."""
    a = {r["step"]: r["loss"] for r in uninterrupted if "loss" in r}
    b = {r["step"]: r["loss"] for r in resumed if "loss" in r}
    if sorted(a) != sorted(b):
        return False, f"the runs logged different updates ({len(a)} and {len(b)})"
    differing = [step for step in sorted(a) if a[step] != b[step]]
    if not differing:
        return True, f"all {len(a)} update losses bit-identical"
    step = differing[0]
    return False, (f"{len(differing)} of {len(a)} update losses differ, the first at update {step}: "
                   f"{a[step]!r} vs {b[step]!r}")


def one_line(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = message if isinstance(exc, CheckFailed) else f"{type(exc).__name__}: {message}".rstrip(": ")
    return text[:160]


# ----------------------------------------------------------------------------- running attn


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_overrides(workdir: Path, name: str, *more: str) -> list[str]:
    """The sample corpus (tokenized once, into workdir/data, for every run), the GPU, a short
    validation, and output_dir workdir/name; then ``more``."""
    return [
        f"data.train={SAMPLE / 'train'}", f"data.valid={SAMPLE / 'valid'}", f"data.test={SAMPLE / 'test'}",
        f"data.prepared_dir={workdir / 'data'}",
        "data.tokenizer.vocab_size=2000",  # the bench configs' 8,000 pieces are for the full corpus
        "train.device=cuda", "train.valid_max_sentences=50", f"output_dir={workdir / name}", *more,
    ]


def load_run_config(arch: str, workdir: Path, name: str, *more: str):
    from seq2seq.config import load_config

    return load_config(CONFIGS[arch], run_overrides(workdir, name, *more))


def attn_train_args(arch: str, workdir: Path, name: str, *more: str) -> list[str]:
    """``cli.main train`` and its arguments (for ``python -m`` or torchrun's ``-m``)."""
    sets = [arg for override in run_overrides(workdir, name, *more) for arg in ("--set", override)]
    return ["cli.main", "train", str(CONFIGS[arch]), "--quiet", *sets]


def metrics(out: Path) -> list[dict[str, Any]]:
    from seq2seq.run_folder import METRICS_FILE, read_metrics

    return read_metrics(out / METRICS_FILE)


def last_logged_step(out: Path) -> int:
    logged = [r["step"] for r in metrics(out) if "loss" in r]
    return logged[-1] if logged else 0


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not ended 30 s later (torchrun passes SIGTERM on to its workers)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_to_the_end(command: list[str], timeout: float) -> None:
    code = subprocess.run(command, cwd=ROOT, stdout=sys.stderr, stderr=sys.stderr, timeout=timeout).returncode
    if code != 0:
        raise CheckFailed(f"{' '.join(command[:6])} ... exited with {code} (see the log)")


def interrupt_mid_run(command: list[str], out: Path, at_step: int, timeout: float) -> tuple[int, int]:
    """Run ``command`` (a training into ``out``), SIGTERM it once it has logged update
    ``at_step``, and wait for it to save and stop. Returns the step of its last checkpoint and
    its exit code."""
    from seq2seq import run_folder

    process = subprocess.Popen(command, cwd=ROOT, stdout=sys.stderr, stderr=sys.stderr)
    deadline = time.monotonic() + timeout
    try:
        while last_logged_step(out) < at_step:
            if process.poll() is not None:
                raise CheckFailed(f"the run exited ({process.returncode}) before update {at_step}: nothing to interrupt")
            if time.monotonic() > deadline:
                raise CheckFailed(f"no update {at_step} within {timeout:.0f} s")
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=90)
    finally:
        stop(process)
    checkpoints = run_folder.step_checkpoints(out)
    if not checkpoints:
        raise CheckFailed(f"SIGTERM at update {at_step}: exit {code} and no checkpoint")
    return int(checkpoints[-1].stem.split("_")[-1]), code


@contextlib.contextmanager
def counted_syncs() -> Iterator[list[warnings.WarningMessage]]:
    """The warnings of torch.cuda.set_sync_debug_mode("warn"), one per host sync in the block
    (syncs in backward too: autograd replays its threads' warnings in the caller's)."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield caught
        finally:
            torch.cuda.set_sync_debug_mode("default")


def sync_count(caught: list[warnings.WarningMessage]) -> int:
    return sum("synchroniz" in str(w.message) for w in caught)


def cuda_trainer(cfg):
    """A Trainer on cuda:0 as ``train`` would set it up (without a run folder)."""
    import torch

    from seq2seq import kernels
    from seq2seq.data.prepare import prepare_data
    from seq2seq.training.distributed import DistInfo
    from seq2seq.training.setup import seed_everything
    from seq2seq.training.trainer import Trainer

    kernels.configure(cfg.train.cpu_kernels)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    prepared = prepare_data(cfg, log=log)
    seed_everything(cfg.train.seed)
    return Trainer(cfg, prepared, DistInfo(), torch.device("cuda", 0), log)


# ----------------------------------------------------------------------------- the checks


def check_training(arch: str, precision: str) -> Callable[[Path], list[Row]]:
    def run(workdir: Path) -> list[Row]:
        from seq2seq.training.run import train

        cfg = load_run_config(arch, workdir, f"train_{arch}_{precision}", f"train.precision={precision}",
                              f"train.max_steps={TRAIN_STEPS}", "train.log_every=10", f"train.valid_every={TRAIN_STEPS}")
        train(cfg, overwrite=True, log=log, quiet=True)
        return [Row(f"train {arch} {precision}", *judge_training(metrics(Path(cfg.output_dir)), precision, TRAIN_STEPS))]

    return run


def check_resume(workdir: Path) -> list[Row]:
    import torch

    from seq2seq import checkpoint as ckpt
    from seq2seq import run_folder

    settings = ("train.precision=bf16", "train.deterministic=true", f"train.max_steps={TRAIN_STEPS}",
                "train.log_every=1", "train.valid_every=1000")
    full, cut = workdir / "resume_full", workdir / "resume_cut"
    # Each run a process of its own: deterministic cuBLAS needs its workspace fixed before first use.
    python = [sys.executable, "-m"]
    run_to_the_end([*python, *attn_train_args("T", workdir, full.name, *settings), "--overwrite"], timeout=120)
    stopped_at, code = interrupt_mid_run([*python, *attn_train_args("T", workdir, cut.name, *settings), "--overwrite"],
                                         cut, at_step=40, timeout=120)
    if stopped_at >= TRAIN_STEPS:
        raise CheckFailed("the run finished before the SIGTERM landed; nothing was resumed")
    run_to_the_end([*python, *attn_train_args("T", workdir, cut.name, *settings), "--resume"], timeout=120)
    same, text = compare_losses(metrics(full), metrics(cut))
    weights = [ckpt.load_checkpoint(run_folder.step_checkpoint_path(out, TRAIN_STEPS))["model"] for out in (full, cut)]
    same_weights = all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    text += ", final weights " + ("bit-identical" if same_weights else "DIFFER")
    return [Row("resume exact (T bf16, deterministic)", "ok" if same and same_weights else "FAIL",
                f"SIGTERM at update {stopped_at} (exit {code}), resumed: {text}")]


def check_torchrun(workdir: Path) -> list[Row]:
    import torch

    ranks = max(1, torch.cuda.device_count())
    batch_tokens = load_run_config("T", workdir, "torchrun").train.batch_tokens
    settings = ("train.precision=bf16", f"train.update_tokens={2 * ranks * batch_tokens}",
                f"train.max_steps={TRAIN_STEPS}", "train.log_every=1", "train.valid_every=1000")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", "-m",
               *attn_train_args("T", workdir, "torchrun", *settings)]
    out = workdir / "torchrun"
    stopped_at, code = interrupt_mid_run([*command, "--overwrite"], out, at_step=30, timeout=150)
    if stopped_at >= TRAIN_STEPS:
        raise CheckFailed("the run finished before the SIGTERM landed; nothing was resumed")
    run_to_the_end([*command, "--resume"], timeout=150)
    status, text = judge_training(metrics(out), "bf16", TRAIN_STEPS)
    group = f"{ranks} ranks over NCCL" if ranks > 1 else "1 rank (one GPU: no process group, NCCL not exercised)"
    return [Row("torchrun + accumulation + SIGTERM/resume", status,
                f"{group}, 2 micro-batches per update and rank; SIGTERM at update {stopped_at} "
                f"(torchrun exit {code}), resumed to {last_logged_step(out)}; {text}")]


# label, settings changed from the checkpoint's decode section, the share of lines that may differ.
# (In fp32 the GPU multiplies in TF32, as in training, and a model of 200 updates has many near-ties:
# some lines differ from the CPU's without anything being wrong; a broken search changes most.)
TRANSLATIONS = {
    "T": (("greedy", {"beam_size": 1}, 0.25), ("beam 5", {"beam_size": 5}, 0.25),
          ("beam 5 bf16", {"beam_size": 5, "precision": "bf16"}, 0.5),
          ("greedy --alignments", {"beam_size": 1, "return_attention": True}, 0.25)),
    "R": (("greedy", {"beam_size": 1}, 0.25), ("beam 5", {"beam_size": 5}, 0.25)),
}
# Output length limit of the check (1.2 x source + 10): the 200-update models repeat themselves.
SHORTER = {"max_len_a": 1.2, "max_len_b": 10}


def check_translation(workdir: Path) -> list[Row]:
    import torch

    from seq2seq.decoding.loading import load_model, use_cpu_kernels
    from seq2seq.decoding.settings import TranslateSettings
    from seq2seq.decoding.translator import make_translator

    torch.set_num_threads(min(16, os.cpu_count() or 1))
    lines = (SAMPLE / "test.es").read_text(encoding="utf-8").splitlines()

    def translate(loaded, device: str, settings) -> tuple[list[str], float]:
        with make_translator(loaded.model, loaded.tokenizer, settings, warn=log, device=device) as translator:
            start = time.perf_counter()
            results = translator.translate(lines)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        if settings.return_attention and any(r[0].tokens and r[0].attention is None for r in results):
            raise CheckFailed("--alignments: a translation came without attention weights")
        return [r[0].text for r in results], seconds

    rows = []
    for arch, modes in TRANSLATIONS.items():
        try:
            run_dir = workdir / f"train_{arch}_bf16"
            models = {device: load_model(run_dir, device) for device in ("cuda", "cpu")}
            use_cpu_kernels(models["cpu"].config)
        except Exception as exc:  # noqa: BLE001  (every mode of this model fails with it)
            rows += [Row(f"translate {arch} {label}", "FAIL", f"no model from train {arch} bf16: {one_line(exc)}")
                     for label, _, _ in modes]
            continue
        for label, changes, may_differ in modes:
            try:
                settings = replace(TranslateSettings.from_config(models["cuda"].config.decode), **SHORTER, **changes)
                gpu, seconds = translate(models["cuda"], "cuda", settings)
                cpu, _ = translate(models["cpu"], "cpu", settings)
                differ = sum(a != b for a, b in zip(gpu, cpu))
                status = "ok" if differ <= may_differ * len(lines) else "FAIL"
                rows.append(Row(f"translate {arch} {label}", status,
                                f"{differ} of {len(lines)} lines differ GPU vs CPU (allowed {may_differ:.0%}); "
                                f"GPU {len(lines) / seconds:,.0f} sentences/s"))
            except Exception as exc:  # noqa: BLE001
                rows.append(Row(f"translate {arch} {label}", "FAIL", one_line(exc)))
    return rows


def check_host_syncs(workdir: Path) -> list[Row]:
    import torch

    from seq2seq.training.data_order import update_batches

    rows = []
    for arch, precision in (("T", "bf16"), ("T", "fp16"), ("R", "bf16")):
        name = f"host syncs/update: train {arch} {precision}"
        try:
            trainer = cuda_trainer(load_run_config(arch, workdir, "syncs", f"train.precision={precision}"))
            groups = update_batches(trainer.sampler, trainer.accumulation, trainer.state, None)
            for _ in range(3):  # warm-up: cuDNN and the allocator settle
                trainer.optimizer_step(next(groups))
            torch.cuda.synchronize()
            steps = 5
            with counted_syncs() as caught:
                for _ in range(steps):
                    trainer.optimizer_step(next(groups))
            torch.cuda.synchronize()
            per_update = sync_count(caught) / steps
            rows.append(Row(name, "ok" if per_update == 0 else "FAIL",
                            f"{per_update:g} per update over {steps} (expected 0: the loop reads the device at log time only)"))
        except Exception as exc:  # noqa: BLE001
            rows.append(Row(name, "FAIL", one_line(exc)))
    rows += decoding_syncs(workdir)
    return rows


def decoding_syncs(workdir: Path) -> list[Row]:
    import torch

    from seq2seq.decoding.loading import load_model
    from seq2seq.decoding.search import beam_search, greedy_search

    searches = {  # the most syncs a step may take: greedy ~0 (flags read a step late), beam 1 + the reorder's (2-3)
        "greedy": (lambda model, src: greedy_search(model, src, **SHORTER), 0.5),
        "beam 5": (lambda model, src: beam_search(model, src, 5, 1.0, **SHORTER), 4.0),
    }
    lines = (SAMPLE / "test.es").read_text(encoding="utf-8").splitlines()[:64]
    rows = []
    for arch in ("T", "R"):
        try:
            loaded = load_model(workdir / f"train_{arch}_bf16", "cuda")
            src = padded_sources(loaded.tokenizer.encode_src(lines)).cuda()
        except Exception as exc:  # noqa: BLE001
            rows += [Row(f"host syncs/step: {label} {arch}", "FAIL", f"no model from train {arch} bf16: {one_line(exc)}")
                     for label in searches]
            continue
        model, steps = loaded.model, [0]
        step = model.step

        def counting_step(prev, state, step=step, steps=steps):
            steps[0] += 1
            return step(prev, state)

        model.step = counting_step  # (the searches call model.step)
        for label, (search, most) in searches.items():
            name = f"host syncs/step: {label} {arch}"
            try:
                with torch.inference_mode():
                    search(model, src)  # warm-up
                    steps[0] = 0
                    with counted_syncs() as caught:
                        search(model, src)
                per_step = sync_count(caught) / max(steps[0], 1)
                rows.append(Row(name, "ok" if per_step <= most else "FAIL",
                                f"{per_step:.2f} per step over {steps[0]} steps of {len(lines)} sentences "
                                f"(expected <= {most:g})"))
            except Exception as exc:  # noqa: BLE001
                rows.append(Row(name, "FAIL", one_line(exc)))
    return rows


def padded_sources(pieces: list[list[int]]):
    """Source piece ids + EOS of each sentence as one PAD-padded [B,S] batch, as the translator pads them."""
    import torch

    from seq2seq.data.special import EOS_ID, PAD_ID

    src = torch.full((len(pieces), max(map(len, pieces)) + 1), PAD_ID, dtype=torch.long)
    for i, ids in enumerate(pieces):
        src[i, : len(ids) + 1] = torch.tensor([*ids, EOS_ID])
    return src


BASE = ("model.hidden_dim=512", "model.encoder_layers=6", "model.decoder_layers=6", "model.heads=8",
        "model.ffn_dim=2048", "train.precision=bf16", "train.batch_tokens=16384")


def check_speed(compiled: bool) -> Callable[[Path], list[Row]]:
    def run(workdir: Path) -> list[Row]:
        import numpy as np
        import torch

        from seq2seq.training.data_order import update_batches

        cfg = load_run_config("T", workdir, "speed", *BASE, f"train.compile={str(compiled).lower()}")
        trainer = cuda_trainer(cfg)
        groups = update_batches(trainer.sampler, trainer.accumulation, trainer.state, None)
        for _ in range(8 if compiled else 4):  # warm-up (and compilation)
            trainer.optimizer_step(next(groups))
        measured = [next(groups) for _ in range(20)]
        torch.cuda.synchronize()
        start = time.perf_counter()
        for group in measured:
            trainer.optimizer_step(group)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        indices = np.concatenate([batch for group in measured for batch in group])
        data = trainer.train_data
        src_lens, tgt_lens = data.src_lengths[indices] + 1, data.tgt_lengths[indices] + 1  # + EOS
        m = cfg.model
        flops = transformer_training_flops(m.hidden_dim, m.ffn_dim, m.encoder_layers, m.decoder_layers,
                                           trainer.model.tgt_vocab_size, src_lens.tolist(), tgt_lens.tolist())
        name = torch.cuda.get_device_name(0)
        status, text = speed_summary(int(tgt_lens.sum()), flops, seconds, name)
        label = "speed base bf16" + (" compile" if compiled else "")
        return [Row(label, status, f"{text}; {name}, vocab {trainer.model.tgt_vocab_size}, "
                                   f"{cfg.train.batch_tokens} tokens/batch, 20 updates")]

    return run


@dataclass(frozen=True)
class Check:
    name: str
    seconds: float  # its time limit
    run: Callable[[Path], list[Row]]


CHECKS = (
    Check("train-T-bf16", 100, check_training("T", "bf16")),  # (tokenizes the sample first)
    Check("train-T-fp16", 80, check_training("T", "fp16")),
    Check("train-R-bf16", 120, check_training("R", "bf16")),
    Check("train-R-fp16", 120, check_training("R", "fp16")),
    Check("resume", 200, check_resume),
    Check("torchrun", 240, check_torchrun),
    Check("translate", 150, check_translation),
    Check("syncs", 150, check_host_syncs),
    Check("speed", 120, check_speed(compiled=False)),
    Check("speed-compile", 300, check_speed(compiled=True)),
)


# ----------------------------------------------------------------------------- the two processes


def run_child(name: str, workdir: Path) -> int:
    """``--check NAME``: run one check, print its rows (a failure is a FAIL row, not a traceback)."""
    check = next(c for c in CHECKS if c.name == name)
    try:
        rows = check.run(workdir)
    except Exception as exc:  # noqa: BLE001  (the row says what went wrong; the log has the traceback)
        import traceback

        traceback.print_exc()
        rows = [Row(name, "FAIL", one_line(exc))]
    print(ROWS_MARK + json.dumps([asdict(r) for r in rows]), flush=True)
    return 0


def run_check_in_child(check: Check, workdir: Path, seconds: float) -> list[Row]:
    """Run ``check`` in a child process (its own session, so that a time-out stops its whole tree)."""
    log_path = workdir / "logs" / f"{check.name}.log"
    with open(log_path, "w", encoding="utf-8") as log_file:
        child = subprocess.Popen([sys.executable, "-m", "bench.gpu_check", "--check", check.name, "--workdir", str(workdir)],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=log_file, text=True, start_new_session=True)
        try:
            stdout, _ = child.communicate(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGTERM)  # torchrun passes it on to its workers
            try:
                child.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.communicate()
            return [Row(check.name, "FAIL", f"timed out after {seconds:.0f} s (log: {os.path.relpath(log_path, ROOT)})")]
    marked = [line for line in stdout.splitlines() if line.startswith(ROWS_MARK)]
    if not marked:
        tail = [line for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        reason = tail[-1].strip() if tail else "no output"
        return [Row(check.name, "FAIL", f"exit {child.returncode}: {reason[:140]} (log: {os.path.relpath(log_path, ROOT)})")]
    return [Row(**row) for row in json.loads(marked[-1][len(ROWS_MARK):])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, default=WORKDIR, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.check:
        return run_child(args.check, args.workdir)

    import torch

    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        print(f"gpu-check: no CUDA device visible (torch {torch.__version__}, {build}); nothing to check")
        return 0

    started = time.monotonic()
    shutil.rmtree(args.workdir, ignore_errors=True)
    (args.workdir / "logs").mkdir(parents=True)
    device = f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}, torch {torch.__version__}"
    log(f"gpu-check on {device}: {len(CHECKS)} checks, logs in {os.path.relpath(args.workdir / 'logs', ROOT)}")
    rows: list[Row] = []
    for check in CHECKS:
        left = TOTAL_SECONDS - (time.monotonic() - started)
        if left < 30:
            rows.append(Row(check.name, "SKIP", "out of time (the table is due within 9 minutes)"))
            continue
        log(f"  {check.name} ...")
        begun = time.monotonic()
        new_rows = run_check_in_child(check, args.workdir, min(check.seconds, left))
        log(f"  {check.name}: {', '.join(r.status for r in new_rows)} in {time.monotonic() - begun:.0f} s")
        rows += new_rows

    print(f"\ngpu-check on {device}, {time.monotonic() - started:.0f} s\n")
    print(render_table(rows))
    print("\nMFU: model FLOPs (3 x the forward's 2 per multiply-add of every weight and attention product, real "
          "tokens only) per second, over the device's dense bf16 peak (H100 SXM 989 TFLOP/s; see PEAK_BF16_TFLOPS).")
    not_ok = {status: sum(r.status == status for r in rows) for status in ("FAIL", "SKIP")}
    if any(not_ok.values()):
        print(f"{not_ok['FAIL']} of {len(rows)} rows FAIL, {not_ok['SKIP']} SKIP")
        return 1
    print(f"all {len(rows)} rows ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
