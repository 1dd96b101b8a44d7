"""The ``attn tokenize`` stage: parallel text in; tokenizer and binarised corpus out.

``prepare_data`` fills ``cfg.prepared_dir`` with:

* ``spm.model`` (joint) or ``spm.src.model`` + ``spm.tgt.model`` (separate vocabularies);
* ``{split}.src.bin/.idx`` and ``{split}.tgt.bin/.idx`` for train, valid and test (if set);
* ``report.json``: pairs kept and filtered, tokens, unknown pieces, length percentiles, speed;
* ``stamp.json``: what the folder was built from, so an unchanged re-run does nothing.

Only training pairs are filtered (by ``data.max_len`` and ``data.max_len_ratio``): valid and
test are scored as they are. The folder is built under a temporary name next to the target
and swapped in at the end, so a failure leaves the previous prepared data untouched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from seq2seq.config import Config, DataConfig
from seq2seq.data.corpus import check_parallel, corpus_paths, read_lines
from seq2seq.data.special import UNK_ID
from seq2seq.data.store import ParallelDataset, StoreWriter
from seq2seq.data.tokenizer import Tokenizer, train_tokenizer
from seq2seq.errors import UserError
from seq2seq.files import make_folders, remove_empty_folders

# Bump when the prepared layout changes, so folders built by an older attn are rebuilt.
PREPARED_FORMAT = 1
# Pairs encoded per call: large enough for SentencePiece's threads, small enough that memory
# does not grow with the corpus.
ENCODE_CHUNK = 10_000
STAMP_FILE = "stamp.json"
REPORT_FILE = "report.json"


@dataclass
class PreparedData:
    """A finished prepared folder: its tokenizer, its report and its splits."""

    dir: Path
    tokenizer: Tokenizer
    report: dict[str, Any]

    def dataset(self, split: str) -> ParallelDataset:
        return ParallelDataset(self.dir, split)


def load_prepared(directory: str | Path) -> PreparedData:
    """Open a folder written by ``prepare_data``."""
    directory = Path(directory)
    report_path = directory / REPORT_FILE
    if not report_path.is_file():
        raise UserError(f"{directory}: no prepared data here; run `attn tokenize` with this config first")
    return PreparedData(directory, Tokenizer.load(directory), json.loads(report_path.read_text()))


def prepare_data(cfg: Config, log: Callable[[str], None] = print, force: bool = False,
                 keep_built: str | None = None) -> PreparedData:
    """Validate the corpus, train the tokenizer and binarise every split (unless up to date).

    ``keep_built``: prepared data that exists but is stale is an error with this advice, not a
    rebuild (a resumed run must go on with the tokenizer and data it was trained on)."""
    data = cfg.data
    corpora = {"train": data.train, "valid": data.valid}
    if data.test is not None:
        corpora["test"] = data.test
    for prefix in corpora.values():
        check_parallel(prefix, data.src_lang, data.tgt_lang)

    out_dir = cfg.prepared_dir
    stamp = build_stamp(data, corpora.values())
    previous = read_stamp(out_dir)
    if previous == stamp and not force:
        log(f"tokenize: {out_dir} is up to date")
        return load_prepared(out_dir)
    if keep_built is not None and previous is not None:
        raise UserError(f"{out_dir}: {why_stale(previous, stamp)} since it was built; {keep_built}")
    check_replaceable(out_dir)
    with staging_dir(out_dir) as staging:
        # Logged once the folder is known to be writable, so a bad prepared_dir is one error line.
        log(f"tokenize: building {out_dir} ({'forced' if force else why_stale(previous, stamp)})")
        report = build_prepared(data, corpora, staging)
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        # Written last: a folder with a stamp is a complete folder.
        (staging / STAMP_FILE).write_text(json.dumps(stamp, indent=2) + "\n")
    log(format_report(report))
    return load_prepared(out_dir)


# --------------------------------------------------------------------------- building


def build_prepared(data: DataConfig, corpora: dict[str, str], out_dir: Path) -> dict[str, Any]:
    """Train the tokenizer and encode every split into ``out_dir``; return the report."""
    started = time.perf_counter()
    tokenizer = train_tokenizer(data, out_dir)
    tokenizer_s = time.perf_counter() - started

    splits = {}
    for split, prefix in corpora.items():
        src_path, tgt_path = corpus_paths(prefix, data.src_lang, data.tgt_lang)
        limits = data if split == "train" else None
        splits[split] = encode_split(tokenizer, src_path, tgt_path, out_dir / split, limits)
    encode_s = time.perf_counter() - started - tokenizer_s

    train = splits["train"]
    if train["pairs"] == 0:
        raise UserError(
            f"data.max_len / data.max_len_ratio: all {train['pairs_read']} training pairs were filtered out "
            f"({describe_filtered(train['filtered'], data.max_len, data.max_len_ratio)}); raise them"
        )
    pairs_read = sum(stats["pairs_read"] for stats in splits.values())
    return {
        "tokenizer": {
            "type": data.tokenizer.type,
            "joint": data.tokenizer.joint,
            "requested_vocab_size": data.tokenizer.vocab_size,
            "src_vocab_size": tokenizer.src_vocab_size,
            "tgt_vocab_size": tokenizer.tgt_vocab_size,
            "fingerprint": tokenizer.fingerprint(),
        },
        "filters": {"max_len": data.max_len, "max_len_ratio": data.max_len_ratio},
        "splits": splits,
        "time": {
            "tokenizer_s": round(tokenizer_s, 2),
            "encode_s": round(encode_s, 2),
            "pairs_per_s": round(pairs_read / max(encode_s, 1e-9)),
        },
    }


def encode_split(
    tokenizer: Tokenizer, src_path: Path, tgt_path: Path, out_prefix: Path, limits: DataConfig | None
) -> dict[str, Any]:
    """Encode one split into ``{out_prefix}.src`` / ``.tgt`` stores; drop pairs outside ``limits``."""
    pairs_read = 0
    filtered: Counter[str] = Counter()
    unknown = {"src": 0, "tgt": 0}
    with (
        StoreWriter(f"{out_prefix}.src", tokenizer.src_vocab_size) as src_store,
        StoreWriter(f"{out_prefix}.tgt", tokenizer.tgt_vocab_size) as tgt_store,
    ):
        for src_lines, tgt_lines in read_chunks(src_path, tgt_path, ENCODE_CHUNK):
            pairs_read += len(src_lines)
            encoded = zip(tokenizer.encode_src(src_lines), tokenizer.encode_tgt(tgt_lines))
            for src_ids, tgt_ids in encoded:
                reason = filter_reason(len(src_ids), len(tgt_ids), limits) if limits else None
                if reason:
                    filtered[reason] += 1
                    continue
                src_store.add(src_ids)
                tgt_store.add(tgt_ids)
                unknown["src"] += src_ids.count(UNK_ID)
                unknown["tgt"] += tgt_ids.count(UNK_ID)

    dataset = ParallelDataset(out_prefix.parent, out_prefix.name)
    return {
        "pairs_read": pairs_read,
        "pairs": len(dataset),
        "filtered": dict(filtered),
        "src": side_stats(dataset.src_lengths, unknown["src"]),
        "tgt": side_stats(dataset.tgt_lengths, unknown["tgt"]),
    }


def read_chunks(src_path: Path, tgt_path: Path, size: int) -> Iterator[tuple[list[str], list[str]]]:
    """The lines of both sides, ``size`` pairs at a time."""
    pairs = zip(read_lines(src_path), read_lines(tgt_path))
    while chunk := list(islice(pairs, size)):
        yield [src for src, _ in chunk], [tgt for _, tgt in chunk]


def filter_reason(src_len: int, tgt_len: int, limits: DataConfig) -> str | None:
    """Why a training pair of these piece lengths is dropped, or None to keep it."""
    if src_len == 0 or tgt_len == 0:
        return "empty"
    if max(src_len, tgt_len) > limits.max_len:
        return "max_len"
    # Counting EOS (+1) keeps a one-piece side from making the ratio explode.
    if max(src_len, tgt_len) + 1 > limits.max_len_ratio * (min(src_len, tgt_len) + 1):
        return "max_len_ratio"
    return None


def side_stats(lengths: np.ndarray, unknown: int) -> dict[str, Any]:
    """Token count, unknown-piece rate and length percentiles of one side of a split."""
    tokens = int(lengths.sum())
    p50, p90, p99 = np.percentile(lengths, [50, 90, 99]) if len(lengths) else (0, 0, 0)
    return {
        "tokens": tokens,
        "unk_rate": unknown / tokens if tokens else 0.0,
        "length": {"p50": int(p50), "p90": int(p90), "p99": int(p99), "max": int(lengths.max(initial=0))},
    }


# --------------------------------------------------------------------------- stamp


def build_stamp(data: DataConfig, prefixes: Iterable[str]) -> dict[str, Any]:
    """What a prepared folder depends on: the data settings and the bytes of every input file."""
    settings = dataclasses.asdict(data)
    # Where the output goes does not change what is in it.
    settings.pop("prepared_dir")
    inputs = {}
    for prefix in prefixes:
        for path in corpus_paths(prefix, data.src_lang, data.tgt_lang):
            inputs[str(path)] = file_sha256(path)
    return {
        "format": PREPARED_FORMAT,
        "data_config": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest(),
        "inputs": inputs,
    }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def read_stamp(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return None


def why_stale(previous: dict[str, Any] | None, stamp: dict[str, Any]) -> str:
    """A short reason to rebuild, for the log."""
    if previous is None:
        return "no previous build"
    if previous.get("format") != stamp["format"]:
        return "built by another version of attn"
    if previous.get("data_config") != stamp["data_config"]:
        return "the data section of the config changed"
    old_inputs = previous.get("inputs", {})
    changed = [path for path, digest in stamp["inputs"].items() if old_inputs.get(path) != digest]
    return f"changed: {', '.join(changed)}"


# --------------------------------------------------------------------------- output folder


def check_replaceable(out_dir: Path) -> None:
    """Refuse to replace anything but a missing folder, an empty one or earlier prepared data."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(
            f"{out_dir}: exists and is not a folder; set data.prepared_dir (or output_dir) elsewhere "
            "or remove the file"
        )
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / STAMP_FILE).is_file():
        raise UserError(
            f"{out_dir}: folder is not empty and holds no prepared data ({STAMP_FILE} missing); "
            "set data.prepared_dir to a new folder, or empty this one"
        )


@contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """A new folder next to ``target`` that replaces ``target`` if the block succeeds."""
    created: list[Path] = []
    try:
        created = make_folders(target.parent)
        # A sibling, not the system temp dir: renames are atomic only within one file system.
        staging = target.with_name(f".{target.name}.building-{uuid.uuid4().hex[:8]}")
        staging.mkdir()
    except OSError as exc:
        remove_empty_folders(created)
        raise UserError(
            f"{target}: cannot write here ({exc.strerror}); set data.prepared_dir to a writable folder"
        ) from None
    try:
        yield staging
        swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        remove_empty_folders(created)
        raise


def swap_in(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``, deleting the old ``target`` only once the new one is in place."""
    if not target.exists():
        os.replace(staging, target)
        return
    retired = staging.with_name(staging.name + ".old")
    os.replace(target, retired)
    try:
        os.replace(staging, target)
    except OSError:
        os.replace(retired, target)
        raise
    shutil.rmtree(retired)


# --------------------------------------------------------------------------- report


def describe_filtered(filtered: dict[str, int], max_len: int, max_len_ratio: float) -> str:
    """Counts of dropped pairs by reason, e.g. '12 longer than data.max_len=128, 1 with an empty side'."""
    reasons = {
        "max_len": f"longer than data.max_len={max_len}",
        "max_len_ratio": f"with a length ratio above data.max_len_ratio={max_len_ratio}",
        "empty": "with an empty side",
    }
    return ", ".join(f"{filtered[reason]} {text}" for reason, text in reasons.items() if reason in filtered)


def format_report(report: dict[str, Any]) -> str:
    """The report as a few readable lines for the terminal."""
    tok = report["tokenizer"]
    if tok["joint"]:
        vocab = f"joint vocabulary of {tok['src_vocab_size']} pieces"
    else:
        vocab = f"source {tok['src_vocab_size']} / target {tok['tgt_vocab_size']} pieces"
    lines = [f"tokenizer: {tok['type']}, {vocab} (asked for {tok['requested_vocab_size']})"]

    lines.append(
        f"{'split':<6} {'pairs':>9} {'dropped':>8}  {'tokens src/tgt':>19}  {'unk src/tgt':>13}  "
        "length p50/p90/p99/max src | tgt"
    )
    for split, stats in report["splits"].items():
        dropped = stats["pairs_read"] - stats["pairs"]
        tokens = f"{stats['src']['tokens']}/{stats['tgt']['tokens']}"
        unk = f"{stats['src']['unk_rate']:.2%}/{stats['tgt']['unk_rate']:.2%}"
        lengths = " | ".join("/".join(map(str, stats[side]["length"].values())) for side in ("src", "tgt"))
        lines.append(f"{split:<6} {stats['pairs']:>9} {dropped:>8}  {tokens:>19}  {unk:>13}  {lengths}")

    train = report["splits"]["train"]
    if train["filtered"]:
        lines.append(f"train pairs dropped: {describe_filtered(train['filtered'], **report['filters'])}")
    t = report["time"]
    lines.append(
        f"time: tokenizer {t['tokenizer_s']:.1f} s, encoding {t['encode_s']:.1f} s "
        f"({t['pairs_per_s']:,} sentence pairs/s)"
    )
    return "\n".join(lines)
