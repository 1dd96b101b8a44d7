"""Decode batches in several processes at once (``attn translate --workers N``).

A decoding step multiplies a few dozen rows by each weight matrix: products too small to keep
two cores busy, with Python between them that runs on one core. Two processes of one thread
each, each decoding whole batches, do more than one process of two threads (figures in the
README's benchmarks). A thread per batch would not do: the Python part holds the GIL. Greedy
search at 320 rows already keeps both cores busy and gains nothing.

This process is one of the N: it decodes batches from the end of the list while the N - 1
spawned ones take them from the front, each taking its next batch only when it is ready for it.
So nobody waits for a child to start (importing torch takes it a second or so), and at the end nobody
waits longer than another's last batch. Batches are decoded as one process would decode
them, so the translations are the same (their scores may differ in the last digits: fewer threads
sum in another order).

Children are spawned, not forked: a forked child of a process whose OpenMP threads have run
can hang in its first parallel region (GNU libgomp). The model reaches them through shared
memory (torch.multiprocessing), not as a copy per process. As with any spawned process, the
child imports the parent's main module, so a script that translates with workers keeps its
top-level code under ``if __name__ == "__main__":`` (the ``attn`` command does).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from seq2seq.decoding.search_helpers import Hypothesis
from seq2seq.errors import UserError
from seq2seq import kernels

if TYPE_CHECKING:
    from seq2seq.decoding.settings import TranslateSettings

Batch = list[list[int]]  # source piece ids of each sentence, EOS included
Decoded = list[list[Hypothesis]]  # each sentence's hypotheses, best first
DecodeBatch = Callable[[nn.Module, "TranslateSettings", Batch], Decoded]  # translator.decode_batch


class DecodeWorkers:
    """``workers - 1`` child processes that run ``decode_batch(model, settings, batch)`` with a
    copy-free share of ``model``; ``decode(batches)`` splits batches between them and this
    process, which must be ready to decode (model in eval mode, no gradients).

    The cores are split evenly: each process (this one too, while ``decode`` runs) uses
    ``threads // workers`` intra-op threads, at least one.
    """

    def __init__(self, decode_batch: DecodeBatch, model: nn.Module, settings: TranslateSettings, workers: int):
        self.decode_here = lambda batch: decode_batch(model, settings, batch)
        self.threads_each = max(1, torch.get_num_threads() // workers)
        self.children = workers - 1
        context = torch.multiprocessing.get_context("spawn")
        # The batches nobody has taken yet are unclaimed[0] <= i < unclaimed[1], in shared memory
        # with a lock: each process takes its next batch only when it is ready for it, so none
        # is left holding batches that another could have done.
        self.unclaimed = context.Array("q", 2)
        self.pool = ProcessPoolExecutor(
            self.children,
            mp_context=context,
            initializer=_start_child,
            initargs=(decode_batch, model, settings, self.threads_each, self.unclaimed, kernels.mode()),
        )
        # Start the children now: they receive the model as it is at this point, before the
        # caller packs its weights (packed copies are oneDNN tensors that cannot be shared).
        self.pool.submit(int)

    def decode(self, batches: list[Batch]) -> list[Decoded]:
        """What ``[decode_batch(model, settings, b) for b in batches]`` returns."""
        results: list[Decoded | None] = [None] * len(batches)
        with self.unclaimed.get_lock():
            self.unclaimed[0], self.unclaimed[1] = 0, len(batches)
        children = [self.pool.submit(_decode_from_front, batches) for _ in range(self.children)]
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads_each)
        try:
            while (i := _claim(self.unclaimed, from_front=False)) is not None:
                results[i] = self.decode_here(batches[i])
            for child in children:
                for i, decoded in child.result().items():
                    results[i] = [[_from_child(h) for h in hyps] for hyps in decoded]
        except BrokenProcessPool:
            raise UserError("a decoding worker process died (killed for lack of memory?); "
                            "try fewer --workers or a smaller --batch-size") from None
        finally:
            torch.set_num_threads(threads)
            # After an error (Ctrl-C) the children stop at their current batch, and we return
            # only once they have: a task still running would claim the next call's batches.
            _claim_all(self.unclaimed)
            wait(children)
        return results

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


def _claim(unclaimed, from_front: bool) -> int | None:
    """Take the first (children: the longest sources) or the last unclaimed batch; None if none is left."""
    with unclaimed.get_lock():
        front, back = unclaimed[0], unclaimed[1]
        if front >= back:
            return None
        if from_front:
            unclaimed[0] = front + 1
            return front
        unclaimed[1] = back - 1
        return back - 1


def _claim_all(unclaimed) -> None:
    with unclaimed.get_lock():
        unclaimed[0] = unclaimed[1]


# ---------------------------------------------------------------- inside a child process

_child: dict[str, Any] = {}


def _start_child(decode_batch: DecodeBatch, model: nn.Module, settings: TranslateSettings, threads: int,
                 unclaimed, kernels_mode: str) -> None:
    # Ctrl-C (and `timeout`'s SIGTERM) reach the whole process group; the parent alone handles
    # them, and stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(threads)
    kernels.configure(kernels_mode)  # the parent's choice, and its process settings
    kernels.tune_process()
    model.eval()
    # Packed for the life of the process (the model never changes there); the context is
    # kept referenced, as a collected one would unpack the weights.
    packed = kernels.packed_weights(model, settings.batch_size)
    packed.__enter__()
    _child.update(decode_batch=decode_batch, model=model, settings=settings, packed=packed, unclaimed=unclaimed)


def _decode_from_front(batches: list[Batch]) -> dict[int, Decoded]:
    """Decode unclaimed batches from the front until none is left: {batch index: hypotheses}."""
    done = {}
    with torch.inference_mode():
        while (i := _claim(_child["unclaimed"], from_front=True)) is not None:
            decoded = _child["decode_batch"](_child["model"], _child["settings"], batches[i])
            done[i] = [[_to_parent(h) for h in hyps] for hyps in decoded]
    return done


# Attention matrices travel as numpy arrays: a tensor would travel as a shared-memory file
# whose descriptor the receiver keeps open, one per sentence, until it runs out of them.
def _to_parent(h: Hypothesis) -> Hypothesis:
    return Hypothesis(h.tokens, h.score, None if h.attention is None else h.attention.numpy())


def _from_child(h: Hypothesis) -> Hypothesis:
    return Hypothesis(h.tokens, h.score, None if h.attention is None else torch.from_numpy(h.attention))
