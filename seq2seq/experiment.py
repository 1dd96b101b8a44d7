"""``attn experiment SWEEP.yaml``: a base config times a grid of overrides, run one by one.

A sweep file::

    base: configs/demo.yaml           # the config every point starts from
    output_dir: runs/sweep_attention  # each point trains in output_dir/<point name>
    set:                              # overrides applied to every point (optional)
      train.max_steps: 200
    grid:                             # every combination of these values ...
      model.attention: [additive, general, local_p]
      model.arch: [gru, lstm]
    points:                           # ... and/or an explicit list of override sets
      - {model.arch: transformer, model.attention: scaled_dot}

Each point runs tokenize -> train -> evaluate on the test set. A point whose report exists and
whose config has not changed since is skipped; any other point with checkpoints resumes, so a CI
job can simply be re-run.
The results land in ``leaderboard.md``, ``leaderboard.csv``, ``leaderboard.png`` and
``report.html`` (sweep_report.py: the table sortable, the learning curves, and every point's
translation and attention map of the first test sentences side by side).

A sweep too long for one CI job runs as shards, one per job, merged afterwards (sweep_shards.py).
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from seq2seq import checkpoint as ckpt
from seq2seq import run_folder
from seq2seq.config import Config, load_config, read_yaml
from seq2seq.errors import UserError

if TYPE_CHECKING:
    import torch

SWEEP_KEYS = ("base", "output_dir", "set", "grid", "points", "resources")
RESOURCES = {"cpus": 1.0, "gpus": 0.0}  # what one point needs, for --launcher ray
REPORT = f"{run_folder.REPORT_DIR}/report.json"  # what attn evaluate writes in a point's run folder


@dataclass
class Point:
    name: str
    overrides: dict[str, Any]  # the values that vary between points
    config: Config = field(repr=False)

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def finished(self) -> bool:
        """Evaluated, and trained with the config it has now: a point whose overrides or base
        config changed since runs again (resuming where its checkpoints allow)."""
        return (self.output_dir / REPORT).is_file() and self.trained_in(self.output_dir)

    def trained_in(self, folder: Path) -> bool:
        """Whether the run folder's saved config is this point's, ``train.threads`` aside (a Ray
        task lowers it to the CPUs it was given; it changes neither the model nor its data)."""
        from seq2seq.run_folder import CONFIG_FILE

        saved = folder / CONFIG_FILE
        try:
            before = yaml.safe_load(saved.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):  # missing or damaged: not this point's run
            return False
        return without_threads(before) == without_threads(self.config.to_dict())


def without_threads(config: Any) -> Any:
    if not isinstance(config, dict) or not isinstance(config.get("train"), dict):
        return config
    return {**config, "train": {key: value for key, value in config["train"].items() if key != "threads"}}


@dataclass
class Sweep:
    path: Path
    output_dir: Path
    points: list[Point]
    resources: dict[str, float] = field(default_factory=lambda: dict(RESOURCES))


def load_sweep(path: Path) -> Sweep:
    raw = read_yaml(path)
    if "base" not in raw and {"data", "model", "train", "decode"} & set(raw):
        raise UserError(f"{path}: a run config, not a sweep; train it with `attn train {path}`, or write a sweep "
                        "(base + grid/points) that starts from it")
    for key in raw:
        if key not in SWEEP_KEYS:
            raise UserError(f"{path}: unknown key '{key}'; a sweep has {', '.join(SWEEP_KEYS)}")
    if "base" not in raw:
        raise UserError(f"{path}: 'base' is missing; name the config every point starts from")
    output_dir = Path(raw.get("output_dir") or f"runs/{path.stem}")
    common = _mapping(raw.get("set"), path, "set")
    grid = _mapping(raw.get("grid"), path, "grid")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{path}: grid.{key} must be a non-empty list of values")
    listed = raw.get("points") or []
    if not isinstance(listed, list) or not all(isinstance(p, dict) for p in listed):
        raise UserError(f"{path}: 'points' must be a list of mappings of overrides")
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else []
    if not combos and not listed:
        raise UserError(f"{path}: the grid is empty and no points are listed; give grid keys with lists of values")

    every = combos + listed
    settings_of = [json.dumps(overrides, sort_keys=True) for overrides in every]
    if len(set(settings_of)) != len(settings_of):
        raise UserError(f"{path}: two points have the same overrides; every point must differ")
    names = [point_name(overrides) for overrides in every]
    if len(set(names)) != len(names):  # e.g. train.precision and decode.precision: name by full keys
        names = [point_name(overrides, full_keys=True) for overrides in every]
    points = []
    for name, overrides in zip(names, every):
        settings = {**common, **overrides, "output_dir": str(output_dir / name)}
        exprs = [f"{key}={json.dumps(value)}" for key, value in settings.items()]
        try:
            cfg = load_config(Path(raw["base"]), exprs)
        except UserError as exc:
            raise UserError(f"{path}: point {name}: {exc}") from None
        if cfg.data.prepared_dir is None:
            # Points that share a data section share one tokenization.
            cfg.data.prepared_dir = str(output_dir / f"data-{data_hash(cfg)}")
        points.append(Point(name, overrides, cfg))
    twins = sorted({name for name in names if names.count(name) > 1})
    if twins:
        raise UserError(f"{path}: two points get the same folder name ({', '.join(twins)}); "
                        "make their values differ in more than punctuation")
    return Sweep(path, output_dir, points, _resources(raw.get("resources"), path))


def _resources(value: Any, path: Path) -> dict[str, float]:
    """The sweep's ``resources: {cpus: C, gpus: G}``: what each point needs of a Ray cluster."""
    given = _mapping(value, path, "resources")
    for key, amount in given.items():
        if key not in RESOURCES:
            raise UserError(f"{path}: resources.{key}: unknown; a point's resources are {', '.join(RESOURCES)}")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
            raise UserError(f"{path}: resources.{key}: {amount!r} must be a number >= 0")
    resources = {**RESOURCES, **{key: float(amount) for key, amount in given.items()}}
    if resources["cpus"] <= 0 and resources["gpus"] <= 0:
        raise UserError(f"{path}: resources: a point needs some cpus or gpus")
    return resources


def _mapping(value: Any, path: Path, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{path}: '{key}' must be a mapping of key.path: value")
    return value


def point_name(overrides: dict[str, Any], full_keys: bool = False) -> str:
    """A readable, file-safe folder name: ``arch-gru_attention-additive`` (``full_keys``:
    ``model.arch-gru_model.attention-additive``)."""
    parts = [f"{key if full_keys else key.rsplit('.', 1)[-1]}-{value}" for key, value in overrides.items()]
    return re.sub(r"[^A-Za-z0-9._-]+", "", "_".join(parts)) or "base"


def data_hash(cfg: Config) -> str:
    data = cfg.to_dict()["data"]
    data.pop("prepared_dir")
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


# ------------------------------------------------------------------------- running


def run_sweep(sweep: Sweep, log: Callable[[str], None]) -> Path:
    """Run every unfinished point, then write the leaderboard; returns its markdown path."""
    check_test_sets(sweep)
    failed = []
    for header, point in unfinished_points(sweep, log):
        try:
            run_point(point, header, log)
        except UserError as exc:  # the other points still run, and the leaderboard shows what finished
            log(f"{header}: error: {exc}")
            failed.append(point.name)
    return finish_sweep(sweep, failed)


def unfinished_points(sweep: Sweep, log: Callable[[str], None]) -> Iterator[tuple[str, Point]]:
    """The points to run, each with its progress header ("[3/8] name"); a finished one is
    logged as skipped, in its turn."""
    for number, point in enumerate(sweep.points, start=1):
        header = f"[{number}/{len(sweep.points)}] {point.name}"
        if point.finished:
            log(f"{header}: finished earlier, skipped")
        else:
            yield header, point


def check_test_sets(sweep: Sweep) -> None:
    """Every point must have a test set to be scored on: checked before any training, not after
    the first point's."""
    for point in sweep.points:
        if point.config.data.test is None:
            raise UserError(f"{sweep.path}: point {point.name} has no data.test to evaluate on")


def run_point(point: Point, header: str, log: Callable[[str], None]) -> dict:
    """Train (or resume) one point and score it on its test set; its report."""
    from seq2seq.evaluation.evaluate import translate_and_score
    from seq2seq.training.run import train

    # The report of an earlier config must not pass for this one's if training stops early.
    (point.output_dir / REPORT).unlink(missing_ok=True)
    resume = can_resume(point)
    log(f"{header}: {'resuming' if resume else 'training'} -> {point.output_dir}")
    summary = train(point.config, resume=resume, overwrite=not resume, log=log, quiet=True)
    if summary.interrupted:  # saved; a re-run resumes it instead of scoring a half-trained model
        raise KeyboardInterrupt
    src, ref = (Path(f"{point.config.data.test}.{lang}")
                for lang in (point.config.data.src_lang, point.config.data.tgt_lang))
    report, _ = translate_and_score(point.output_dir, src, [ref], None, None, decode=point.config.decode,
                                    device=str(training_device(point.config)))
    log(f"{header}: test BLEU {report['bleu']:.2f} chrF {report['chrf']:.2f}")
    return report


def finish_sweep(sweep: Sweep, failed: list[str]) -> Path:
    """Write the leaderboard of what finished; then, if points failed, say which."""
    leaderboard = write_leaderboard(sweep)
    if failed:
        raise UserError(f"{len(failed)} of {len(sweep.points)} points failed ({', '.join(failed)}; their errors "
                        f"are above); the leaderboard {leaderboard} has the others")
    return leaderboard


def training_device(cfg: Config) -> torch.device:
    """Where the point trained (train.device, auto resolved as training resolves it), which is
    where it is scored: a GPU decodes the test set many times faster than the CPU."""
    from seq2seq.training.distributed import dist_info
    from seq2seq.training.setup import pick_device

    return pick_device(cfg, dist_info())


def can_resume(point: Point) -> bool:
    """Whether the point's checkpoints can go on under its current config: they exist, and the
    model and data they were trained with are the point's (otherwise it trains from scratch)."""
    from seq2seq.run_folder import CONFIG_FILE

    saved = point.output_dir / CONFIG_FILE
    if not run_folder.step_checkpoints(point.output_dir) or not saved.is_file():
        return False
    try:
        before = load_config(saved)
    except UserError:
        return False
    return before.model == point.config.model and before.data == point.config.data


def leaderboard_rows(sweep: Sweep) -> list[dict[str, Any]]:
    from seq2seq.run_folder import METRICS_FILE, read_metrics

    rows, bleus = [], []
    for point in sweep.points:
        if not point.finished:
            continue
        report = json.loads((point.output_dir / REPORT).read_text())
        bleus.append(report["bleu"])
        records = read_metrics(point.output_dir / METRICS_FILE)
        speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
        peaks = [r["peak_rss_mib"] for r in records if r.get("peak_rss_mib") is not None]
        valids = [r for r in records if "valid_bleu" in r]
        rows.append({
            "point": point.name,
            **{key: value for key, value in point.overrides.items()},
            "test_bleu": round(report["bleu"], 2),
            "test_chrf": round(report["chrf"], 2),
            "parameters": count_parameters(point),
            "train_seconds": train_seconds(point),
            "tokens_per_s": round(sum(speeds) / len(speeds)) if speeds else "",
            "peak_rss_mib": round(max(peaks)) if peaks else "",
            "best_step": valids[-1].get("best_step", "") if valids else "",
        })
    # Ranked by the unrounded BLEU: rounded scores would tie.
    ranked = sorted(zip(bleus, rows), key=lambda pair: pair[0], reverse=True)
    return [row for _, row in ranked]


def train_seconds(point: Point) -> float | str:
    """Wall-clock seconds of the point's training over all its sessions (validation included),
    as its last checkpoint counts them."""
    steps = run_folder.step_checkpoints(point.output_dir)
    return round(ckpt.load_checkpoint(steps[-1])["run_state"]["wall_seconds"], 1) if steps else ""


def count_parameters(point: Point) -> int:
    from seq2seq.decoding.loading import load_model

    return sum(p.numel() for p in load_model(point.output_dir).model.parameters())


def write_leaderboard(sweep: Sweep) -> Path:
    from seq2seq.plots import bar_chart

    rows = leaderboard_rows(sweep)
    sweep.output_dir.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    (sweep.output_dir / "leaderboard.csv").write_text(buffer.getvalue(), encoding="utf-8")

    lines = [f"# Leaderboard: {sweep.path}", "", "Test-set scores (sacrebleu), best first.", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    md = sweep.output_dir / "leaderboard.md"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if rows:
        bar_chart(sweep.output_dir / "leaderboard.png", [r["point"] for r in rows],
                  [r["test_bleu"] for r in rows], title=f"Test BLEU by point ({sweep.path.name})", ylabel="BLEU")
    write_html_report(sweep, columns, rows)
    return md


def write_html_report(sweep: Sweep, columns: list[str], rows: list[dict[str, Any]]) -> Path:
    """``report.html`` (sweep_report.py): the leaderboard, the learning curves, and the first
    test sentences translated by every finished point, with the first point's test set."""
    from seq2seq.sweep_report import write_report

    points = {point.name: point for point in sweep.points}
    runs = {row["point"]: points[row["point"]].output_dir for row in rows}
    data = points[rows[0]["point"]].config.data if rows else None
    test_source = Path(f"{data.test}.{data.src_lang}") if data is not None and data.test else None
    return write_report(sweep.output_dir / "report.html", f"Sweep: {sweep.path}", columns, rows, runs, test_source)


def describe_points(sweep: Sweep) -> str:
    lines = [f"{len(sweep.points)} points -> {sweep.output_dir}"]
    for point in sweep.points:
        state = "finished" if point.finished else "to run"
        lines.append(f"  {point.name:<40} {state:<9} {yaml.safe_dump(point.overrides, default_flow_style=True).strip()}")
    return "\n".join(lines)
