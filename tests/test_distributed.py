"""Data-parallel training (DDP) with 2 CPU processes over gloo, against one process.

What is guaranteed: with update_tokens = 2 x batch_tokens, one process accumulates the
micro-batches [b0, b1], [b2, b3], ... of an epoch while rank 0 trains on b0, b2, ... and rank 1
on b1, b3, ... -- the same sets -- *when the epoch packs into an even number of batches*. With
an odd number the sampler halves the largest batch so that both ranks get as many batches,
and the updates differ slightly. The tests below pick a budget that packs evenly and check
that precondition first.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from seq2seq.config import dump_config, load_config
from seq2seq.data.batching import TokenBatchSampler
from seq2seq.data.prepare import load_prepared
from seq2seq import checkpoint as ckpt
from seq2seq import run_folder
from seq2seq.run_folder import read_metrics
from seq2seq.training.data_order import update_batches
from seq2seq.training.run_state import RunState
from seq2seq.training.run import train
from seq2seq.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]

BATCH_TOKENS = 2000  # 14 batches per epoch on the tiny corpus: 7 updates of 2
INTERRUPT_AT = 8  # the update during which Ctrl-C arrives (in epoch 2)
# Untied output weights: the training loss projects to the vocabulary outside the DDP module's
# forward, and an output matrix used only there must still be all-reduced.
RUN = (f"train.batch_tokens={BATCH_TOKENS}", f"train.update_tokens={2 * BATCH_TOKENS}", "model.dropout=0.0",
       "train.max_steps=9", "train.log_every=1", "train.valid_every=100", "train.save_every=100",
       "train.schedule=constant", "train.warmup_steps=0", "train.lr=0.003", "model.tie_embeddings=false")


def epoch_batches(corpus, epoch: int, world_size: int = 1, rank: int = 0):
    data = load_prepared(corpus.prepared_dir).dataset("train")
    return TokenBatchSampler(data.src_lengths, data.tgt_lengths, BATCH_TOKENS, seed=42,
                             rank=rank, world_size=world_size).batches(epoch)


def test_two_ranks_see_the_micro_batches_one_process_accumulates(tiny_corpus):
    for epoch in (0, 1):
        single = epoch_batches(tiny_corpus, epoch)
        assert len(single) % 2 == 0, "precondition: the epoch packs into an even number of batches"
        ranks = [epoch_batches(tiny_corpus, epoch, 2, rank) for rank in (0, 1)]
        single_groups = list(update_batches_of(single, 2))
        rank_groups = [list(update_batches_of(r, 1)) for r in ranks]
        assert len(single_groups) == len(rank_groups[0]) == len(rank_groups[1])
        for k, group in enumerate(single_groups):
            assert [b.tolist() for b in group] == [rank_groups[0][k][0].tolist(), rank_groups[1][k][0].tolist()]


def update_batches_of(batches, accumulation):
    class OneEpoch:
        def batches(self, epoch):
            return batches

    return update_batches(OneEpoch(), accumulation, RunState(), max_epochs=1)


# ----------------------------------------------------------------------------- 2 processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def record_training(set_attr, record_dir: Path, name: str, interrupt_at: int | None = None) -> None:
    """Save the first update's gradients and the final parameters of a run (test harness only);
    act as if Ctrl-C came during update ``interrupt_at``."""
    accumulate, run = Trainer.accumulate_gradients, Trainer.run

    def recording_accumulate(self, group):
        if self.state.step + 1 == interrupt_at:
            self.interrupted = True
        figures = accumulate(self, group)
        if self.state.step == 0:
            torch.save({"grads": {n: p.grad.clone() for n, p in self.model.named_parameters()},
                        "batches": [b.tolist() for b in group], "loss": figures["loss"].item()},
                       record_dir / f"first_update_{name}.pt")
        return figures

    def recording_run(self, progress):
        summary = run(self, progress)
        torch.save({n: p.detach().clone() for n, p in self.model.named_parameters()}, record_dir / f"params_{name}.pt")
        return summary

    set_attr(Trainer, "accumulate_gradients", recording_accumulate)
    set_attr(Trainer, "run", recording_run)


def ddp_worker(rank: int, port: int, overrides: list[list[str]], record_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    # Only rank 1 "gets Ctrl-C": both ranks must stop after the same update.
    record_training(setattr, Path(record_dir), f"rank{rank}", interrupt_at=INTERRUPT_AT if rank == 1 else None)
    train(load_config(None, overrides[rank]), log=lambda m: None, quiet=True)


def spawn_ddp(overrides: list[list[str]], record_dir: Path, timeout: float = 90.0) -> None:
    """Train with 2 processes (torch.multiprocessing, gloo); ``overrides[rank]`` is each rank's config."""
    context = mp.start_processes(ddp_worker, args=(free_port(), overrides, str(record_dir)), nprocs=2,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the DDP workers did not finish within {timeout} s")


def snapshot(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*")}


@pytest.mark.slow
def test_ddp_matches_one_process_and_stops_together(tiny_corpus, tmp_path, monkeypatch):
    record_dir = tmp_path / "records"
    record_dir.mkdir()
    prepared_before = snapshot(tiny_corpus.prepared_dir)
    # Rank 1 gets an output_dir of its own: anything it wrote would show up there.
    rank_outputs = [tmp_path / "ddp", tmp_path / "rank1-must-stay-empty"]
    spawn_ddp([[*tiny_corpus.overrides, *RUN, f"output_dir={out}"] for out in rank_outputs], record_dir)

    record_training(monkeypatch.setattr, record_dir, "single", interrupt_at=INTERRUPT_AT)
    summary = train(tiny_corpus.config(tmp_path / "single", *RUN), log=lambda m: None, quiet=True)
    assert summary.steps == INTERRUPT_AT and "interrupted" in summary.stopped_because

    # The first update: the same micro-batches, the same normalised gradients.
    single = torch.load(record_dir / "first_update_single.pt")
    ranks = [torch.load(record_dir / f"first_update_rank{r}.pt") for r in (0, 1)]
    assert single["batches"] == ranks[0]["batches"] + ranks[1]["batches"]
    assert ranks[0]["loss"] == ranks[1]["loss"] == pytest.approx(single["loss"], rel=1e-6)
    for name, grad in single["grads"].items():
        assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name]), name
        assert torch.allclose(ranks[0]["grads"][name], grad, rtol=0, atol=1e-5), name

    # After training: identical parameters on both ranks, close to the single process's.
    params = [torch.load(record_dir / f"params_rank{r}.pt") for r in (0, 1)]
    params_single = torch.load(record_dir / "params_single.pt")
    for name, tensor in params[0].items():
        assert torch.equal(tensor, params[1][name]), name
        assert torch.allclose(tensor, params_single[name], rtol=0, atol=1e-4), name
    losses = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "ddp" / "metrics.jsonl") if "loss" in r}
    losses_single = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "single" / "metrics.jsonl") if "loss" in r}
    assert sorted(losses) == list(range(1, INTERRUPT_AT + 1))
    assert losses == pytest.approx(losses_single, abs=1e-4)

    # Both ranks stopped after the interrupted update, with a checkpoint of it; only rank 0
    # wrote files; the checkpoint holds both ranks' RNG states.
    assert not rank_outputs[1].exists()
    assert snapshot(tiny_corpus.prepared_dir) == prepared_before
    assert [p.name for p in run_folder.step_checkpoints(tmp_path / "ddp")] == [f"step_{INTERRUPT_AT:08d}.pt"]
    final = ckpt.load_checkpoint(run_folder.step_checkpoint_path(tmp_path / "ddp", INTERRUPT_AT))
    assert len(final["rng_ranks"]) == 2 and final["run_state"]["world_size"] == 2
    single_final = ckpt.load_checkpoint(run_folder.step_checkpoint_path(tmp_path / "single", INTERRUPT_AT))
    assert final["run_state"]["target_tokens"] == single_final["run_state"]["target_tokens"] > 0  # both ranks'
    assert all(torch.equal(final["model"][n], t) for n, t in params[0].items())


# ----------------------------------------------------------------------------- plateau decay


def plateau_worker(rank: int, port: int, overrides: list[str], record_dir: str) -> None:
    """A DDP rank whose validations never improve (so the plateau halves the rate after every
    one but the first); it records the learning rate of each update and its final parameters."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    from seq2seq.training import validation

    validation.validate = lambda *args, **kwargs: {"valid_loss": 1.0, "valid_bleu": 1.0, "valid_chrf": 1.0}
    apply_update, rates = Trainer.apply_update, []

    def recording_apply_update(self, figures):
        result = apply_update(self, figures)
        rates.append(result["lr"])
        if self.state.step == self.cfg.train.max_steps:
            torch.save({"rates": rates, "params": {n: p.detach().clone() for n, p in self.model.named_parameters()}},
                       Path(record_dir) / f"rank{rank}.pt")
        return result

    Trainer.apply_update = recording_apply_update
    train(load_config(None, [*overrides, f"output_dir={Path(record_dir) / f'out{rank}'}"]), log=lambda m: None,
          quiet=True)


@pytest.mark.slow
def test_ddp_ranks_decay_the_plateau_learning_rate_together(tiny_corpus, tmp_path):
    """Only rank 0 validates; a plateau decay it decides must reach every rank, or the replicas
    step with different learning rates and drift apart (DDP syncs gradients, not parameters)."""
    run = [*tiny_corpus.overrides, *RUN, "train.schedule=plateau", "train.plateau_patience=0",
           "train.valid_every=1", "train.max_steps=4", "train.save_every=100"]
    context = mp.start_processes(plateau_worker, args=(free_port(), run, str(tmp_path)), nprocs=2, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + 90
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the DDP workers did not finish within 90 s")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["rates"] == pytest.approx([0.003, 0.003, 0.0015, 0.00075])  # validations at 1, 2, 3
    assert ranks[1]["rates"] == ranks[0]["rates"]
    for name, tensor in ranks[0]["params"].items():
        assert torch.equal(tensor, ranks[1]["params"][name]), name


# ----------------------------------------------------------------------------- torchrun


@pytest.mark.slow
def test_a_refusal_by_rank_0_stops_every_rank_with_one_error_line(tiny_corpus, tmp_path):
    """Only rank 0 checks output_dir; the other ranks must not die in a collective with a
    transport traceback (which torchrun would report as the root cause) or wait forever."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    config = tmp_path / "config.yaml"
    config.write_text(dump_config(tiny_corpus.config(out, *RUN)))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         "-m", "cli.main", "train", str(config)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT), "GLOO_SOCKET_IFNAME": "lo"},
        capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.count("error: output_dir") == 1, proc.stderr
    assert "Connection" not in proc.stderr and "cli/main.py" not in proc.stderr, proc.stderr
    assert re.search(r"exitcode\s*: 2", proc.stderr), proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]


def test_each_rank_trains_on_the_gpu_it_sees():
    """torchrun's LOCAL_RANK indexes the node's GPUs, unless a scheduler gave each process its
    own single GPU (CUDA_VISIBLE_DEVICES per rank): then that one is cuda:0."""
    from seq2seq.errors import UserError
    from seq2seq.training.setup import local_cuda_index

    assert [local_cuda_index(rank, 4) for rank in range(4)] == [0, 1, 2, 3]
    assert [local_cuda_index(rank, 1) for rank in range(3)] == [0, 0, 0]
    with pytest.raises(UserError, match="LOCAL_RANK 3 but this process sees 2 GPUs"):
        local_cuda_index(3, 2)
