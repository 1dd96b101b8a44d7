"""``attn experiment SWEEP --shard I/N`` and ``--merge DIR ...``: one sweep across CI jobs.

A sweep too long for one CI job runs as N shards, each in its own job: shard I runs every N-th
point from the I-th, by the points' order in the sweep file, so which shard runs a point never
depends on what has finished (and each job's cache holds its own points). The merge job then
copies the shards' finished points into the sweep's output folder and writes the leaderboard
of the whole sweep, the one a single run would have written.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from seq2seq.errors import UserError
from seq2seq.experiment import REPORT, Sweep, write_leaderboard


def parse_shard(spec: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N), with 1 <= I <= N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise UserError(f"--shard {spec}: write I/N with 1 <= I <= N (shard I of N), e.g. --shard 1/4")
    return int(match[1]), int(match[2])


def shard(sweep: Sweep, index: int, count: int) -> Sweep:
    """Shard ``index`` of ``count`` (1-based): the points at positions index, index + count, ...
    of the sweep's order; the shards together hold every point once."""
    return dataclasses.replace(sweep, points=sweep.points[index - 1::count])


def merge_shards(sweep: Sweep, folders: list[Path], log: Callable[[str], None]) -> Path:
    """Copy the points of ``sweep`` that ``folders`` (the shards' output folders, as their jobs
    left them) finished into the sweep's output folder, then write the leaderboard of the whole
    sweep; its markdown path. A run folder trained with another config than its point's (a
    different or changed sweep file) is refused, and nothing in the output folder is replaced."""
    from seq2seq.run_folder import CONFIG_FILE

    points = {point.name: point for point in sweep.points}
    found: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            raise UserError(f"--merge {folder}: not a folder; give the output folders of the sweep's shards")
        for run in sorted(path.parent for path in folder.glob(f"*/{CONFIG_FILE}")):
            point = points.get(run.name)
            if point is None or not point.trained_in(run):
                raise UserError(f"--merge {run}: not a point of {sweep.path} as it is now (another sweep file, or "
                                "a changed one); merge the shards of one sweep, or run the point again")
            if not (run / REPORT).is_file():
                continue  # trained but not scored there: it stays missing
            if run.name in found and found[run.name].resolve() != run.resolve():
                raise UserError(f"--merge: point {run.name} is finished in both {found[run.name]} and {run}; "
                                "give each shard's folder once")
            found[run.name] = run
    for name, run in found.items():
        target = points[name].output_dir
        if target.resolve() == run.resolve() or points[name].finished:
            continue
        if target.exists():
            raise UserError(f"--merge: {target} exists and is not point {name} finished; move it away to merge "
                            f"{run} there")
        partial = target.with_name(f".{target.name}.merging")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(run, partial)
        partial.rename(target)  # a copy cut short never passes for a finished point
        log(f"merged {name} <- {run}")
    missing = [point.name for point in sweep.points if not point.finished]
    if missing:
        log(f"not finished in any shard: {', '.join(missing)}; the leaderboard has the others")
    return write_leaderboard(sweep)
