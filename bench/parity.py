"""``make bench-parity``: does attn learn as well as fairseq, update for update?

Config T (``configs/bench_T.yaml``; ``--config R`` for R), the full corpus, Spanish->English.
attn (two seeds, to measure the seed noise) and fairseq 0.12.2 (the peers' environment and
matched options) train for the same number of updates (``--updates``, default 2,000) one after
the other on 2 threads, on the same SentencePiece pieces (``parity_fairseq`` says how). Every
``--every`` updates (250) both are scored the same way on the valid set: the loss (NLL per target
token, nats) and BLEU/chrF of greedy translations (at most 128 pieces), sacrebleu on detokenised
text against the raw references. After the last update both translate the test set with beam 5.

Wall clock. Each toolkit's own clock of its training loop (start-up excluded for both): attn's
``wall_seconds`` less the time of its in-run validations, fairseq's ``wall`` (it does not
validate during the run; its checkpoints are scored afterwards, off the clock).

Output: a table on stdout, ``bench/out/parity.json`` and ``bench/out/parity.png`` (valid BLEU
against updates, minutes and target tokens trained on, and valid NLL against updates). Each arm's figures are kept
in ``bench/out/parity/<arm>/curve.json``: a re-run on the same processor with the same settings
reuses them (``--again`` trains afresh), so a sitting cut short keeps its finished arms. A kept
arm with fewer updates but otherwise the same settings is continued from its last checkpoint
(both toolkits resume the same run: data position, optimiser, schedule) when the config's
learning-rate schedule does not depend on the total number of updates; its scored points are
kept. About 4 hours on 2 cores of an AVX2-only Zen 3 at the defaults; run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import parity_fairseq as fairseq
from bench.peers import this_machine
from bench.run import CONFIGS, OUT, ROOT, decode_speed, markdown_table

PARITY = OUT / "parity"
DATA_OVERRIDES: list[str] = []  # --data: the config's data paths, replaced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="T")
    parser.add_argument("--updates", type=int, default=2000)
    parser.add_argument("--every", type=int, default=250, help="updates between scorings")
    parser.add_argument("--seeds", default="42,43", help="attn's seeds (fairseq runs the first)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--arms", default="attn,fairseq", help="attn, fairseq or both")
    parser.add_argument("--again", default="", help="attn, fairseq or both: train these afresh even where "
                        "an earlier sitting's figures are kept")
    parser.add_argument("--attn-set", action="append", default=[], metavar="KEY=VALUE",
                        help="an attn config override for a deviation study (repeatable): its arms are named "
                             "after it, kept apart from the plain ones, and left out of attn's mean")
    parser.add_argument("--data", type=Path, help="a folder of train/valid/test.{es,en} instead of the full "
                        "corpus (data/bible-en-es-sample: a few minutes' check that every stage runs)")
    args = parser.parse_args()
    if args.updates % args.every:
        parser.error(f"--updates {args.updates} must be a multiple of --every {args.every}")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    machine = this_machine()
    settings = {"config": args.config, "updates": args.updates, "every": args.every, "threads": args.threads,
                "processor": machine.label, "data": str(args.data or "full corpus")}
    global PARITY, DATA_OVERRIDES
    if args.data is not None:  # its own folders: a check never mixes with the real figures
        data = args.data.resolve()
        PARITY = OUT / f"parity-{data.name}"
        DATA_OVERRIDES = [*(f"data.{split}={data / split}" for split in ("train", "valid", "test")),
                          f"data.prepared_dir={PARITY / 'data'}"]
    config = ROOT / CONFIGS[args.config]
    prepared = prepare(config)

    # One attn seed, then fairseq, then attn's other seeds: a sitting cut short still compares.
    study = "".join(f"+{override}" for override in args.attn_set)
    arms = [(f"attn-seed{seed}{study}", "attn", seed) for seed in seeds] if "attn" in args.arms else []
    if "fairseq" in args.arms:
        if (reason := fairseq.missing()) is not None:
            sys.exit(f"bench-parity: {reason}")
        arms.insert(1, (f"fairseq-seed{seeds[0]}", "fairseq", seeds[0]))
    curves = {}
    for arm, toolkit, seed in arms:
        folder = PARITY / arm
        kept = folder / "curve.json"
        earlier = json.loads(kept.read_text()) if kept.is_file() else None
        if toolkit in args.again or earlier is None:
            earlier = None
        elif earlier["settings"] == settings:
            log(f"{arm}: kept from an earlier sitting on this processor ({kept})")
            curves[arm] = earlier
            continue
        elif continues(earlier, settings, config):
            log(f"{arm}: continuing the earlier sitting's {earlier['updates'][-1]} updates to {args.updates}")
        else:
            earlier = None
        started = time.time()
        run = run_attn if toolkit == "attn" else run_fairseq
        curve = {"settings": settings, "seed": seed, **run(config, prepared, folder, seed, args, earlier)}
        curve["arm_minutes"] = (time.time() - started) / 60 + (earlier["arm_minutes"] if earlier else 0.0)
        if earlier:
            curve["continued_from"] = earlier.get("continued_from", []) + [earlier["updates"][-1]]
        folder.mkdir(parents=True, exist_ok=True)
        kept.write_text(json.dumps(curve, indent=1))
        curves[arm] = curve
    report(curves, settings)


def continues(earlier: dict, settings: dict, config: Path) -> bool:
    """Whether a kept arm can be continued to ``settings``: the same settings but fewer updates, and
    a schedule that does not depend on the total (so continuing equals training to it from the start;
    the peers' matched fairseq schedules are the same kind: inverse_sqrt for T, fixed for R)."""
    from seq2seq.config import load_config

    same = {**earlier["settings"], "updates": settings["updates"]} == settings
    schedule = load_config(config, DATA_OVERRIDES).train.schedule
    return same and earlier["updates"][-1] < settings["updates"] and schedule in ("inverse_sqrt", "noam", "constant")


def log(message: str) -> None:
    print(f"[parity {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def prepare(config: Path) -> Path:
    """attn's tokenizer and binarised corpus for the config (shared with ``make bench``)."""
    from seq2seq.config import load_config

    subprocess.run([sys.executable, "-m", "cli.main", "tokenize", str(config), *set_options(DATA_OVERRIDES)],
                   cwd=ROOT, check=True)
    return ROOT / load_config(config, DATA_OVERRIDES).prepared_dir


def set_options(overrides: list[str]) -> list[str]:
    return [word for override in overrides for word in ("--set", override)]


def run_attn(config: Path, prepared: Path, folder: Path, seed: int, args: argparse.Namespace,
             earlier: dict | None) -> dict:
    """Train (or, after ``earlier``, go on) with attn's own validation every ``every`` updates; then
    beam 5 on the test set."""
    from seq2seq import run_folder

    run = folder / "run"
    overrides = {"output_dir": run, "train.max_steps": args.updates, "train.valid_every": args.every,
                 "train.log_every": 50 if args.every % 50 == 0 else args.every,  # a wall clock at every validation
                 "train.save_every": args.updates, "train.seed": seed, "train.threads": args.threads}
    command = [sys.executable, "-m", "cli.main", "train", str(config), "--resume" if earlier else "--overwrite",
               *set_options(DATA_OVERRIDES + [f"{key}={value}" for key, value in overrides.items()] + args.attn_set)]
    log(f"attn seed {seed}: training to {args.updates} updates -> {run}")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    subprocess.run(command, cwd=ROOT, check=True, env=env)

    curve = attn_curve([json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()])
    curve["tokens_per_update"] = attn_tokens_per_update(config, prepared, seed, args)
    last = run_folder.resolve_checkpoint(run, "last")
    log(f"attn seed {seed}: test set, beam 5")
    test_set = config_data(config, "test")
    test = decode_speed(last, 5, Path(f"{test_set}.es"), Path(f"{test_set}.en"))
    curve["test_beam5"] = {"bleu": test["bleu"], "chrf": test["chrf"]}
    return curve


def attn_tokens_per_update(config: Path, prepared: Path, seed: int, args: argparse.Namespace) -> float:
    """Target tokens (EOS included, as fairseq's wpb) per update of the run: its batches, redrawn."""
    from seq2seq.config import load_config
    from seq2seq.data.batching import TokenBatchSampler
    from seq2seq.data.prepare import load_prepared

    cfg = load_config(config, DATA_OVERRIDES + args.attn_set)
    train = load_prepared(prepared).dataset("train")
    sampler = TokenBatchSampler(train.src_lengths, train.tgt_lengths, cfg.train.batch_tokens, seed=seed)
    tokens, updates, epoch = 0, 0, 0
    while updates < args.updates:
        for batch in sampler.batches(epoch)[:args.updates - updates]:
            tokens += int((train.tgt_lengths[batch] + 1).sum())
            updates += 1
        epoch += 1
    return tokens / updates


def attn_curve(records: list[dict]) -> dict:
    """The valid curve from an attn run's metrics.jsonl, its clock less its validations' time."""
    walls = {r["step"]: r["wall_seconds"] for r in records if "wall_seconds" in r}
    curve: dict = {"updates": [], "train_minutes": [], "valid_nll": [], "valid_bleu": [], "valid_chrf": []}
    validating = 0.0  # seconds spent in validations before this update
    for record in (r for r in records if "valid_bleu" in r):
        step = record["step"]
        curve["updates"].append(step)
        curve["train_minutes"].append((walls[step] - validating) / 60)
        curve["valid_nll"].append(record["valid_loss"])
        curve["valid_bleu"].append(record["valid_bleu"])
        curve["valid_chrf"].append(record["valid_chrf"])
        validating += record["valid_seconds"]
    curve["tokens_per_s"] = median([r["tokens_per_s"] for r in records if "tokens_per_s" in r])
    return curve


def run_fairseq(config: Path, prepared: Path, folder: Path, seed: int, args: argparse.Namespace,
                earlier: dict | None) -> dict:
    """Train fairseq on attn's pieces (or, after ``earlier``, go on); score every kept checkpoint not
    scored before; then beam 5 on the test set."""
    from seq2seq.evaluation.metrics import score_corpus

    binarised = fairseq.export_pieces(prepared, PARITY / "fairseq-data")
    start = earlier["updates"][-1] if earlier else 0
    fairseq.train(binarised, folder, args.config, start, args.updates, args.every, seed, args.threads, log)
    walls, speeds, sizes = fairseq.logged_walls(folder)
    kept = fairseq.checkpoints(folder)
    valid_refs = Path(f"{config_data(config, 'valid')}.en").read_text(encoding="utf-8").splitlines()
    test_refs = Path(f"{config_data(config, 'test')}.en").read_text(encoding="utf-8").splitlines()
    curve = {"updates": [], "train_minutes": [], "valid_nll": [], "valid_bleu": [], "valid_chrf": []}
    for update, checkpoint in kept.items():
        if earlier and update in earlier["updates"]:  # scored in the earlier sitting
            i = earlier["updates"].index(update)
            for key in ("updates", "train_minutes", "valid_nll", "valid_bleu", "valid_chrf"):
                curve[key].append(earlier[key][i])
            continue
        log(f"fairseq seed {seed}: scoring update {update} on the valid set")
        hypotheses = fairseq.translate(binarised, checkpoint, "valid", len(valid_refs), 1, prepared, args.threads)
        scores = score_corpus(hypotheses, [valid_refs])
        curve["updates"].append(update)
        curve["train_minutes"].append(walls[update] / 60)
        curve["valid_nll"].append(fairseq.valid_nll(binarised, checkpoint, args.threads))
        curve["valid_bleu"].append(scores["bleu"])
        curve["valid_chrf"].append(scores["chrf"])
    curve["tokens_per_s"] = median(speeds)
    curve["tokens_per_update"] = sum(sizes) / len(sizes)
    log(f"fairseq seed {seed}: test set, beam 5")
    hypotheses = fairseq.translate(binarised, kept[max(kept)], "test", len(test_refs), 5, prepared, args.threads)
    scores = score_corpus(hypotheses, [test_refs])
    curve["test_beam5"] = {"bleu": scores["bleu"], "chrf": scores["chrf"]}
    return curve


def config_data(config: Path, split: str) -> Path:
    from seq2seq.config import load_config

    return ROOT / getattr(load_config(config, DATA_OVERRIDES).data, split)


def median(values: list[float]) -> float:
    """The upper median (as the arms' figures were first computed), NaN when nothing was logged."""
    return statistics.median_high(values) if values else float("nan")


def report(curves: dict[str, dict], settings: dict) -> None:
    """The table, the summary (seed noise, equal updates, equal wall clock), parity.json and the PNG."""
    import numpy as np

    attn = [curve for arm, curve in curves.items() if arm.startswith("attn") and "+" not in arm]
    peer = next((curve for arm, curve in curves.items() if arm.startswith("fairseq")), None)
    summary: dict[str, float] = {}
    if len(attn) >= 2:  # the seed noise: how far two attn runs differing only in the seed land apart
        summary["seed_noise_valid_bleu_max"] = max(abs(a - b) for a, b in zip(attn[0]["valid_bleu"],
                                                                              attn[1]["valid_bleu"]))
        summary["seed_noise_test_bleu"] = abs(attn[0]["test_beam5"]["bleu"] - attn[1]["test_beam5"]["bleu"])
    if attn and peer:
        summary["final_valid_bleu_attn_mean"] = float(np.mean([c["valid_bleu"][-1] for c in attn]))
        summary["final_valid_bleu_fairseq"] = peer["valid_bleu"][-1]
        summary["test_bleu_attn_mean"] = float(np.mean([c["test_beam5"]["bleu"] for c in attn]))
        summary["test_bleu_fairseq"] = peer["test_beam5"]["bleu"]
        # Equal wall clock: where the faster toolkit stopped, both curves read off by interpolation
        # (from BLEU 0 at minute 0).
        minutes = min(min(c["train_minutes"][-1] for c in attn), peer["train_minutes"][-1])
        summary["equal_wall_minutes"] = minutes
        summary["equal_wall_valid_bleu_attn_mean"] = float(np.mean([bleu_at(c, minutes, c["train_minutes"])
                                                                    for c in attn]))
        summary["equal_wall_valid_bleu_fairseq"] = bleu_at(peer, minutes, peer["train_minutes"])
        # Equal target tokens: attn's batching packs more tokens into an update than fairseq's, so
        # "per update" favours it; read its curves where it had seen as many as fairseq in all.
        tokens = min(min(tokens_seen(c)[-1] for c in attn), tokens_seen(peer)[-1])
        summary["equal_tokens_millions"] = tokens / 1e6
        summary["equal_tokens_valid_bleu_attn_mean"] = float(np.mean([bleu_at(c, tokens, tokens_seen(c))
                                                                      for c in attn]))
        summary["equal_tokens_valid_bleu_fairseq"] = bleu_at(peer, tokens, tokens_seen(peer))
        summary["equal_tokens_valid_nll_attn_mean"] = float(np.mean([np.interp(tokens, tokens_seen(c), c["valid_nll"])
                                                                     for c in attn]))
        summary["equal_tokens_valid_nll_fairseq"] = float(np.interp(tokens, tokens_seen(peer), peer["valid_nll"]))
    results = {"settings": settings, "arms": curves, "summary": summary}
    OUT.mkdir(parents=True, exist_ok=True)
    PARITY.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(f"config {settings['config']}, {settings['updates']} updates, {settings['threads']} threads, "
          f"{settings['processor']}: valid set every {settings['every']} updates (minutes: training loop only)")
    print(markdown_table(table_rows(curves)))
    print(markdown_table([("arm", "test BLEU / chrF, beam 5", "target tok/s (median)", "target tokens/update")] + [
        (arm, f"{c['test_beam5']['bleu']:.2f} / {c['test_beam5']['chrf']:.1f}", f"{c['tokens_per_s']:,.0f}",
         f"{c['tokens_per_update']:,.0f}" if "tokens_per_update" in c else "") for arm, c in curves.items()]))
    for key, value in summary.items():
        print(f"{key}: {value:.2f}")
    plot(curves, PARITY.with_suffix(".png"), settings)
    print(f"wrote {PARITY.with_suffix('.json')} and {PARITY.with_suffix('.png')}")


def bleu_at(curve: dict, x: float, along: list[float]) -> float:
    """Valid BLEU where ``along`` (minutes or tokens at each scoring) reaches ``x``, interpolated
    from BLEU 0 at 0; past the last scoring, the last figure."""
    import numpy as np

    return float(np.interp(x, [0.0, *along], [0.0, *curve["valid_bleu"]]))


def tokens_seen(curve: dict) -> list[float]:
    """Target tokens trained on by each scoring."""
    return [update * curve["tokens_per_update"] for update in curve["updates"]]


def table_rows(curves: dict[str, dict]) -> list[tuple[str, ...]]:
    header = ("updates", *[f"{arm} {what}" for arm in curves for what in ("min", "NLL", "BLEU")])
    updates = sorted({u for c in curves.values() for u in c["updates"]})
    rows = [header]
    for update in updates:
        cells = [str(update)]
        for c in curves.values():
            if update in c["updates"]:
                i = c["updates"].index(update)
                cells += [f"{c['train_minutes'][i]:.1f}", f"{c['valid_nll'][i]:.3f}", f"{c['valid_bleu'][i]:.2f}"]
            else:
                cells += ["", "", ""]
        rows.append(tuple(cells))
    return rows


def plot(curves: dict[str, dict], path: Path, settings: dict) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 8.5), layout="constrained")
    (by_update, by_minute), (by_tokens, nll) = fig.subplots(2, 2)
    for arm, c in curves.items():
        style = {"marker": "o", "label": arm, "linestyle": "-" if arm.startswith("attn") else "--"}
        by_update.plot(c["updates"], c["valid_bleu"], **style)
        by_minute.plot(c["train_minutes"], c["valid_bleu"], **style)
        by_tokens.plot([tokens / 1e6 for tokens in tokens_seen(c)], c["valid_bleu"], **style)
        nll.plot(c["updates"], c["valid_nll"], **style)
    for ax, x, y in ((by_update, "updates", "valid BLEU (greedy)"), (by_minute, "training minutes", "valid BLEU (greedy)"),
                     (by_tokens, "target tokens trained on (millions)", "valid BLEU (greedy)"),
                     (nll, "updates", "valid NLL per target token (nats)")):
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"config {settings['config']}, es->en Bible, {settings['threads']} threads, {settings['processor']}")
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
