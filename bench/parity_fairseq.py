"""The fairseq arm of ``make bench-parity``: fairseq 0.12.2 from the peers' environment, trained
on exactly the pieces attn trains on, and scored exactly as attn's validation scores.

The same pieces. The peers' ``scripts/prep_data.py`` trains its own SentencePiece model, whose
special ids (unk 0, pad 1) are not attn's (pad 0, unk 1), so attn cannot read it. fairseq reads
any piece files, so the other way round works: attn's prepared folder (its SentencePiece model,
its training pairs after ``data.max_len`` and ``data.max_len_ratio``) is written back as pieces,
and fairseq's dictionary lists attn's pieces in attn's order, as prep_data.py writes it.

The same scoring. fairseq's own validation computes the loss only, so each checkpoint (one every
``every`` updates, all kept) is scored after training, outside the timed run: ``fairseq-validate``
for the loss (fairseq logs it in bits; here it is in nats, as attn's), ``fairseq-generate`` with
beam 1 for the translations, scored by attn's sacrebleu call against the raw references. fairseq
has no greedy search: its beam 1 is a beam search of width 1 (the peers' deviations.md).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from bench.peers import PEERS_BENCH

PEERS_DIR = Path(os.environ.get("PEERS", Path.home() / ".cache" / "attn-peers"))
BIN = PEERS_DIR / "venv-fairseq" / "bin"
SPECIALS = 4  # attn's ids 0-3 (pad, unk, bos, eos): fairseq adds its own four
SPLITS = ("train", "valid", "test")


def missing() -> str | None:
    """Why the fairseq arm cannot run here, or None."""
    if not (BIN / "fairseq-train").is_file():
        return (f"fairseq is not installed under {PEERS_DIR} (run {PEERS_BENCH / 'setup_envs.sh'} once, "
                "about 6 minutes)")
    return None


def config_args(config: str) -> list[str]:
    """The peers' matched fairseq options for config T or R (one per line; '#' lines are notes)."""
    lines = (PEERS_BENCH / "configs" / f"fairseq_{config}.args").read_text(encoding="utf-8").splitlines()
    return [word for line in lines if line.strip() and not line.startswith("#") for word in line.split()]


def export_pieces(prepared: Path, dest: Path) -> Path:
    """attn's prepared corpus as fairseq's binarised data (``dest/bin``), built once."""
    binarised = dest / "bin"
    stamp, built_from = (prepared / "stamp.json").read_text(), dest / "built_from.json"
    if not (binarised / "dict.en.txt").is_file() or not built_from.is_file() or built_from.read_text() != stamp:
        shutil.rmtree(binarised, ignore_errors=True)  # attn's data changed since: build afresh
        write_pieces(prepared, dest)
        subprocess.run([str(BIN / "fairseq-preprocess"), "--source-lang", "es", "--target-lang", "en",
                        *[arg for split in SPLITS for arg in (f"--{split}pref", str(dest / f"{split}.sp"))],
                        "--destdir", str(binarised), "--srcdict", str(dest / "dict.txt"), "--joined-dictionary",
                        "--workers", "2"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        built_from.write_text(stamp)
    return binarised


def write_pieces(prepared: Path, dest: Path) -> None:
    """``dest/{split}.sp.{es,en}``: attn's pairs as space-separated pieces, in its order; and
    ``dest/dict.txt``: attn's pieces after its four specials, in id order, with training counts."""
    from seq2seq.data.prepare import load_prepared

    data = load_prepared(prepared)
    tok = data.tokenizer
    counts: Counter[str] = Counter()
    dest.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        pairs = data.dataset(split)
        with open(dest / f"{split}.sp.es", "w", encoding="utf-8") as src, \
                open(dest / f"{split}.sp.en", "w", encoding="utf-8") as tgt:
            for i in range(len(pairs)):
                src_ids, tgt_ids = pairs.pair(i)
                src_pieces, tgt_pieces = tok.src_pieces(src_ids), tok.tgt_pieces(tgt_ids)
                src.write(" ".join(src_pieces) + "\n")
                tgt.write(" ".join(tgt_pieces) + "\n")
                if split == "train":
                    counts.update(src_pieces)
                    counts.update(tgt_pieces)
    pieces = tok.tgt_pieces(range(SPECIALS, tok.tgt_vocab_size))
    (dest / "dict.txt").write_text("".join(f"{piece} {counts[piece]}\n" for piece in pieces), encoding="utf-8")


def train(binarised: Path, run: Path, config: str, start: int, updates: int, every: int, seed: int, threads: int,
          log: Callable[[str], None]) -> None:
    """Train from update ``start`` (0, or a checkpoint_last.pt there) to ``updates``, a checkpoint
    every ``every``, no validation; the log of each stretch is ``train_log(run, start)``."""
    if start == 0:  # else fairseq resumes from its checkpoint_last.pt
        shutil.rmtree(run / "model", ignore_errors=True)
        for stale in run.glob("train*.log"):
            stale.unlink()
    run.mkdir(parents=True, exist_ok=True)
    command = [str(BIN / "fairseq-train"), str(binarised), *config_args(config),
               "--task", "translation", "--source-lang", "es", "--target-lang", "en", "--cpu",
               "--num-workers", "0", "--seed", str(seed), "--max-tokens", "4096", "--log-format", "simple",
               "--log-interval", "10", "--max-update", str(updates), "--disable-validation",
               "--save-interval", "1000000", "--save-interval-updates", str(every), "--keep-interval-updates", "-1",
               "--no-epoch-checkpoints", "--save-dir", str(run / "model")]
    log_path = train_log(run, start)
    log(f"fairseq: training from update {start} to {updates} -> {log_path}")
    with open(log_path, "w", encoding="utf-8") as out:
        subprocess.run(command, check=True, stdout=out, stderr=subprocess.STDOUT, env=thread_env(threads))


def train_log(run: Path, start: int) -> Path:
    return run / ("train.log" if start == 0 else f"train.from{start}.log")


def thread_env(threads: int) -> dict[str, str]:
    # As the peers' common.sh: fairseq's checkpoints pickle argparse.Namespace, which torch>=2.6's
    # torch.load(weights_only=True) refuses; these are checkpoints this script just wrote.
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}


def logged_walls(run: Path) -> tuple[dict[int, float], list[float], list[float]]:
    """The run's logs, its first stretch and each continuation, in order of their first update."""
    logs = sorted(run.glob("train*.log"), key=lambda path: int(re.sub(r"\D", "", path.name) or 0))
    return logged_walls_from([path.read_text(encoding="utf-8") for path in logs])


def logged_walls_from(log_texts: list[str]) -> tuple[dict[int, float], list[float], list[float]]:
    """fairseq's logs, one per stretch of training: its wall clock at each logged update (seconds of
    training, a continuation's added to the stretches before it), and each logged interval's target
    tokens/s and target tokens per update.

    fairseq 0.12.2 loads its wall meter stopped when it resumes (it logs wall=0 from then on), so a
    resumed stretch is timed by its lines' timestamps from the line saying the checkpoint loaded."""
    walls: dict[int, float] = {}
    speeds, sizes = [], []
    for text in log_texts:
        before = walls[max(walls)] if walls else 0.0
        loaded = None  # when a resumed stretch's checkpoint finished loading
        for line in text.splitlines():
            if "| Loaded checkpoint " in line:
                loaded = timestamp(line)
            if "| train_inner |" not in line:
                continue
            fields = dict(re.findall(r"(\w+)=([-\d.e+]+)", line))
            wall = float(fields["wall"]) if loaded is None else timestamp(line) - loaded
            walls[int(fields["num_updates"])] = before + wall
            speeds.append(float(fields["wps"]))
            sizes.append(float(fields["wpb"]))
    return walls, speeds, sizes


def timestamp(line: str) -> float:
    return datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S").timestamp()


def checkpoints(run: Path) -> dict[int, Path]:
    """The kept checkpoints by update: checkpoint_{epoch}_{updates}.pt."""
    found = {}
    for path in (run / "model").glob("checkpoint_*_*.pt"):
        found[int(path.stem.rsplit("_", 1)[1])] = path
    return dict(sorted(found.items()))


def valid_nll(binarised: Path, checkpoint: Path, threads: int) -> float:
    """Mean NLL per target token (EOS included) on the valid set, in nats."""
    result = subprocess.run([str(BIN / "fairseq-validate"), str(binarised), "--path", str(checkpoint),
                             "--task", "translation", "--source-lang", "es", "--target-lang", "en", "--cpu",
                             "--num-workers", "0", "--max-tokens", "4096", "--valid-subset", "valid"],
                            check=True, capture_output=True, text=True, env=thread_env(threads))
    match = re.search(r"valid on 'valid' subset .*?nll_loss ([\d.]+)", result.stdout + result.stderr)
    if match is None:
        raise RuntimeError(f"fairseq-validate printed no nll_loss for {checkpoint}:\n{result.stderr[-2000:]}")
    return float(match[1]) * math.log(2)  # fairseq logs base 2


def translate(binarised: Path, checkpoint: Path, split: str, count: int, beam: int, prepared: Path,
              threads: int) -> list[str]:
    """The split's ``count`` translations in corpus order, as detokenised text (64 sentences a batch, at
    most 128 pieces, fairseq's default length normalisation: the peers' settings)."""
    import sentencepiece as spm

    result = subprocess.run([str(BIN / "fairseq-generate"), str(binarised), "--path", str(checkpoint),
                             "--gen-subset", split, "--cpu", "--num-workers", "0", "--beam", str(beam), "--nbest", "1",
                             "--batch-size", "64", "--max-len-a", "0", "--max-len-b", "128"],
                            check=True, capture_output=True, text=True, env=thread_env(threads))
    by_line = {}
    for line in result.stdout.splitlines():
        if line.startswith("H-"):
            index, _, pieces = line[2:].split("\t", 2)
            by_line[int(index)] = pieces.split()
    processor = spm.SentencePieceProcessor(model_file=str(prepared / "spm.model"))
    return [processor.decode_pieces(by_line.get(i, [])) for i in range(count)]
