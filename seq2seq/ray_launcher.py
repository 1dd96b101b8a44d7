"""``attn experiment SWEEP --launcher ray [--address ADDR]``: a sweep's points as Ray tasks.

Ray (https://docs.ray.io) schedules; attn only says what a point needs: the sweep's
``resources: {cpus: C, gpus: G}`` (default one CPU), so a cluster runs as many points at once
as it has room for. Without ``--address`` Ray starts a local instance on this machine's cores.
Each task runs the same ``experiment.run_point`` as a local sweep, in the driver's working
folder (relative output folders mean the same place) with at most C torch threads; a point that
fails fails alone, finished points are skipped, and the leaderboard is written as a local run
writes it. Every node needs attn installed and the sweep's data at the same paths.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

from seq2seq.errors import UserError
from seq2seq.experiment import (Point, Sweep, can_resume, check_test_sets, finish_sweep, run_point,
                                 unfinished_points)

INSTALL = "pip install 'attn[ray]' (make install does)"


def run_sweep_on_ray(sweep: Sweep, log: Callable[[str], None], address: str | None = None) -> Path:
    """Run every unfinished point as a Ray task, then write the leaderboard; its markdown path."""
    try:
        import ray
    except ImportError:
        raise UserError(f"--launcher ray: Ray is not installed; {INSTALL}") from None
    check_test_sets(sweep)
    todo = list(unfinished_points(sweep, log))
    failed = []
    if todo:
        prepare_shared_data([point for _, point in todo], log)
        cpus, gpus = sweep.resources["cpus"], sweep.resources["gpus"]
        start_ray(ray, address)
        try:
            task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(run_point_task)
            pending = {task.remote(point, header, os.getcwd(), max(1, int(cpus))): (header, point)
                       for header, point in todo}
            log(f"{len(pending)} points as Ray tasks of {cpus:g} CPU(s), {gpus:g} GPU(s) each "
                f"({ray.cluster_resources().get('CPU', 0):g} CPUs in the cluster)")
            while pending:
                (done,), _ = ray.wait(list(pending), num_returns=1)
                header, point = pending.pop(done)
                try:
                    ray.get(done)
                except ray.exceptions.RayError as error:  # a failed or lost task: the others go on
                    cause = getattr(error, "cause", None) or error
                    log(f"{header}: error: {cause if isinstance(cause, UserError) else describe(cause)}")
                    failed.append(point.name)
        finally:
            ray.shutdown()
    return finish_sweep(sweep, failed)


def prepare_shared_data(points: list[Point], log: Callable[[str], None]) -> None:
    """Tokenize each data folder the points share once, here, before they run side by side:
    tasks of a shared folder would otherwise all build it at once. A point that resumes keeps
    the data it was trained on, so its folder is left to its task; so is a folder that fails
    (its points meet the error in their tasks, and fail alone)."""
    from seq2seq.data.prepare import prepare_data

    done = set()
    for point in points:
        folder = point.config.data.prepared_dir
        if folder in done or can_resume(point):
            continue
        done.add(folder)
        try:
            prepare_data(point.config, log=log)
        except UserError:
            pass


def start_ray(ray, address: str | None) -> None:
    """Join the cluster at ``address``, or start a local instance of this machine's cores."""
    try:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=True)
        else:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=True)
    except ConnectionError as error:
        raise UserError(f"--address {address}: no Ray cluster answers there ({error}); start one with "
                        "`ray start --head`, or leave --address out for a local instance") from None


def run_point_task(point: Point, header: str, cwd: str, cpus: int) -> dict:
    """One point in a Ray worker: where the driver ran, with no more torch threads than the CPUs
    Ray gave the task. More would oversubscribe the cores that tasks beside it were given, and
    spinning OpenMP threads that wait on each other make every point several times slower."""
    os.chdir(cwd)
    threads = task_threads(point.config.train.threads, cpus)
    point = dataclasses.replace(point, config=dataclasses.replace(
        point.config, train=dataclasses.replace(point.config.train, threads=threads)))
    return run_point(point, f"{header} ({threads} thread{'s' * (threads > 1)})",
                     log=lambda message: print(message, flush=True))


def task_threads(configured: int | None, cpus: int) -> int:
    """A task's torch threads: the config's ``train.threads``, at most the task's CPUs."""
    return min(configured or cpus, cpus)


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0]
