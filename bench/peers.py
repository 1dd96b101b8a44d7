"""The peers' figures beside attn's in ``make bench``: re-run in this sitting, or stored, with their machine.

A speed ratio holds only between figures measured on the same processor, in the same state of
the machine. The stored peer figures (``../shared/bench/peers/results*.json``) were measured in
other sittings, some on other processors: ``results.json`` on a 2-core AMD EPYC with AVX-512,
``results-zen3-*.json`` on an AVX2-only Zen 3. Dividing by the former on a Zen 3 printed
"0.84x" for a toolkit that was not slower than the peers there. So, per peer figure:

* training throughput, configs T and R: every peer named by ``--peers`` (default ``fairseq``,
  the fastest peer in every training figure of results.md; ``onmt`` and ``joeynmt`` optional)
  whose environment exists (``$PEERS/venv-<peer>``, made by the peers' ``setup_envs.sh``)
  runs its own throughput stage (``run_<peer>.sh throughput T|R``) in this sitting; its log is
  read as the peers' ``scripts/collect.py`` reads it, and attn's figure is divided by the best
  of these: "this sitting";
* everything else (a peer without an environment, a run that logged too little, and all of
  decoding, whose peer stage needs a 12-minute model per peer and is not re-run here): the
  stored figure, labelled with the machine it came from, and no ratio.

The length of the peers' runs. The peers' README trains 300 s per config; ``make bench`` runs
180 s (``--peer-seconds``), so that fairseq's T and R take 6 minutes instead of 10 and the whole
sitting stays near 15 minutes of CPU. The price: the figure is the median target tok/s over the
10-update intervals that start after update 50 (the peers' method, unchanged), and on the Zen 3
fairseq's config T reaches update 50 only after about two minutes, so 180 s leave it 1-2 such
intervals (300 s: 7) and config R about 5 (300 s: 13). A median of so few intervals is noisier,
and a busy machine may leave none: then there is no figure from this sitting, and the table
falls back to the stored one, without a ratio. ``--peer-seconds 300`` gives the peers' own
figure. The first sitting on a machine also runs the peers' data stage (SentencePiece and
fairseq's binarisation, about a minute).

Everything the peers' scripts write goes to ``$PEERS`` (default ``~/.cache/attn-peers``: logs
under ``$PEERS/runs``) and to ``bench/out/peers`` (their ``RESULTS``), never to the shared
folder, which may be read-only.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The peers' harness, beside the checkout like the corpus.
PEERS_BENCH = ROOT.parent / "shared" / "bench" / "peers"
KNOWN_PEERS = ("fairseq", "onmt", "joeynmt")
DEFAULT_PEERS = "fairseq"
PEERS_ENV_VAR = "ATTN_BENCH_PEERS"  # the default of --peers
DEFAULT_SECONDS = 180
PEER_THREADS = 2  # common.sh pins OMP_NUM_THREADS=2: a ratio needs attn on as many
SKIP_AFTER_UPDATES = 50  # collect.py's --skip-after-steps: start-up and the first updates are slower
THIS_SITTING = "this sitting"
STORED = "stored"


# --------------------------------------------------------------------------- this machine

def cpu_flags() -> set[str]:
    """The instruction-set flags of /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def isa_summary(flags: set[str]) -> str:
    """What decides the peers' speed here: AVX-512 or not. lscpu's model name alone ("AMD EPYC")
    is the same on the Zen 3 and on the AVX-512 machine of the stored figures."""
    if "avx512f" in flags:
        extras = [name for flag, name in (("avx512_bf16", "BF16"), ("amx_tile", "AMX")) if flag in flags]
        return "AVX-512" + "".join(f", {name}" for name in extras)
    return "AVX2, no AVX-512" if "avx2" in flags else "no AVX2"


@dataclass(frozen=True)
class Machine:
    processor: str  # lscpu's model name
    avx512: bool
    isa: str

    @property
    def label(self) -> str:
        return f"{self.processor} ({self.isa})"


def this_machine() -> Machine:
    from seq2seq.kernels.probe import processor_name

    flags = cpu_flags()
    return Machine(processor_name(), "avx512f" in flags, isa_summary(flags))


# --------------------------------------------------------------------------- reading a peer's run
# collect.py's regexes (it parses its arguments and reads every run at import, so it cannot be
# imported), with the two groups used here named: the update count and the target tok/s that the
# toolkit logged for the interval that ended there.
INTERVAL_PATTERNS = {
    "fairseq": re.compile(r"^\S+ \S+ \| INFO \| train_inner \| .*?loss=[\d.]+,.*?wps=(?P<tok>[\d.]+),.*?wpb=[\d.]+,"
                          r".*?num_updates=(?P<step>\d+)", re.M),
    "onmt": re.compile(r"^\[\S+ \S+ INFO\] Step (?P<step>\d+)/\s*\d+;.*?xent:\s*[\d.]+;.*?bsz:\s*\d+/\s*\d+/\s*\d+;"
                       r"\s*\d+/\s*(?P<tok>\d+) tok/s;", re.M),
    "joeynmt": re.compile(r"^\S+ \S+ - INFO - joeynmt.training - Epoch\s+\d+, Step:\s+(?P<step>\d+), Batch Loss:"
                          r"\s+[\d.]+.*?Tokens per Sec:\s+(?P<tok>\d+)", re.M),
}


def log_intervals(peer: str, log_text: str) -> list[tuple[int, float]]:
    """(update count, target tok/s) of every interval the peer logged, in order."""
    return [(int(m["step"]), float(m["tok"])) for m in INTERVAL_PATTERNS[peer].finditer(log_text)]


def median_after(intervals: list[tuple[int, float]], skip_after: int = SKIP_AFTER_UPDATES) -> tuple[float | None, int]:
    """The peers' figure: the median tok/s over the intervals that start at or after update
    ``skip_after`` (the one that straddles it is dropped), and how many intervals that was."""
    late = [tok for (previous, _), (_, tok) in zip(intervals, intervals[1:]) if previous >= skip_after]
    return (round(statistics.median(late), 1) if late else None), len(late)


def peak_rss_mib(time_text: str) -> float | None:
    """Peak RSS from ``/usr/bin/time -v``'s report, in MiB."""
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_text)
    return round(int(m[1]) / 1024, 1) if m else None


def summarize_run(peer: str, log_text: str, time_text: str) -> dict:
    """One throughput run as collect.py reports it (target tok/s median, peak RSS), plus a note
    where it logged too little to give a figure."""
    intervals = log_intervals(peer, log_text)
    median, used = median_after(intervals)
    summary = {"tgt_tok_s_median": median, "n_intervals_used": used,
               "updates_done": intervals[-1][0] if intervals else 0, "peak_rss_mib": peak_rss_mib(time_text)}
    if median is None:
        summary["note"] = f"no logged interval starts after update {SKIP_AFTER_UPDATES}"
    return summary


# --------------------------------------------------------------------------- stored figures

@dataclass(frozen=True)
class StoredResults:
    """One ``results*.json`` of the peers, with the machine its ``.md`` twin names."""

    file: str
    machine: str
    generated: str
    cpu_model: str
    avx512: bool | None
    peers: dict = field(repr=False)

    def matches(self, machine: Machine) -> bool:
        return self.cpu_model == machine.processor and self.avx512 == machine.avx512


def stored_machine(heading: str, ceiling: dict | None) -> str:
    """The machine a stored file was measured on: its Markdown heading names it ("... toolkits
    on a 2-core AMD EPYC with AVX-512, CPU only, ..."); else its matmul ceiling's CPU fields."""
    m = re.search(r"toolkits on (?:an? )?(.+?), CPU only", heading)
    if m:
        return m[1]
    if ceiling:
        return f"{ceiling.get('cpu_model') or 'unknown CPU'} ({'AVX-512' if ceiling.get('avx512f') else 'no AVX-512'})"
    return "unknown machine"


def load_stored(bench_dir: Path = PEERS_BENCH) -> list[StoredResults]:
    """Every stored results*.json of the peers, results.json (the reported run) first."""
    files = sorted(bench_dir.glob("results*.json"), key=lambda p: (p.name != "results.json", p.name))
    stored = []
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        md = path.with_suffix(".md")
        heading = md.read_text(encoding="utf-8").splitlines()[0] if md.exists() else ""
        ceiling = data.get("ceiling") or {}
        stored.append(StoredResults(path.name, stored_machine(heading, ceiling), data.get("generated", "")[:10],
                                    ceiling.get("cpu_model", ""), ceiling.get("avx512f"), data.get("peers", {})))
    return stored


def closest_first(stored: list[StoredResults], machine: Machine) -> list[StoredResults]:
    """The stored files measured on this kind of processor first: their figures are the closest
    to what the peers would do here, though still from another sitting (no ratio either way)."""
    return sorted(stored, key=lambda s: not s.matches(machine))


# --------------------------------------------------------------------------- the figures and ratios

@dataclass(frozen=True)
class PeerFigure:
    """One peer figure of the table, and where it comes from."""

    peer: str
    value: float
    source: str  # THIS_SITTING or STORED
    machine: str  # the processor it was measured on
    detail: str = ""  # how it was measured: run length and intervals, or the stored file

    @property
    def where(self) -> str:
        return THIS_SITTING if self.source == THIS_SITTING else f"stored, {self.machine}"

    def to_json(self) -> dict:
        return asdict(self) | {"where": self.where}

    @classmethod
    def from_json(cls, data: dict) -> PeerFigure:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def ratio(attn: float, figure: PeerFigure | None) -> float | None:
    """attn's figure over the peer's, only where the peer ran in this sitting: a stored figure
    comes from another sitting, perhaps another processor, and a ratio against it misleads."""
    if figure is None or figure.source != THIS_SITTING or not figure.value:
        return None
    return attn / figure.value


def peer_figures(sitting: dict[str, dict[str, dict]], stored: list[StoredResults], machine: Machine,
                 seconds: int) -> dict[str, PeerFigure]:
    """The peer figures of the table: ``train_T``/``train_R`` (the best peer's target tok/s),
    ``rss_T``/``rss_R`` (that peer's peak RSS), ``train_R_fairseq`` (fairseq's LSTM attention
    is the cheaper dot product: attn's matching run has its own row), ``decode_T_beam1`` and
    ``decode_T_beam5`` (the best peer's output pieces/s). Each comes from this sitting's runs
    (``sitting``: peer -> config -> ``summarize_run``) where they gave one, else from the first
    of ``stored`` that has it (order them with ``closest_first``). The sitting has no decoding
    runs, so decoding figures are always stored ones."""
    # The sitting in the stored files' shape (peer -> stage -> run), searched first.
    here = {peer: {f"throughput_{cfg}": run for cfg, run in runs.items()} for peer, runs in sitting.items()}
    sources: list[tuple[StoredResults | None, dict]] = [(None, here)] + [(s, s.peers) for s in stored]

    def best(run_of: Callable[[dict], dict | None], key: str,
             only: str | None = None) -> tuple[str, dict, StoredResults | None] | None:
        """In the first source that has such a run: the peer whose run has the highest ``key``,
        that run, and the source (None: this sitting)."""
        for source, records in sources:
            runs = []
            for peer, record in records.items():
                run = run_of(record) if only in (None, peer) else None
                if run and run.get(key) is not None:
                    runs.append((peer, run))
            if runs:
                peer, run = max(runs, key=lambda found: found[1][key])
                return peer, run, source
        return None

    def figure(peer: str, run: dict, source: StoredResults | None, value: float, extra: str = "") -> PeerFigure:
        if source is None:
            return PeerFigure(peer, value, THIS_SITTING, machine.label,
                              f"{seconds} s, {run['n_intervals_used']} intervals after update {SKIP_AFTER_UPDATES}")
        return PeerFigure(peer, value, STORED, source.machine, f"{source.file}, {source.generated}{extra}")

    figures: dict[str, PeerFigure] = {}
    for cfg in ("T", "R"):
        found = best(lambda record: record.get(f"throughput_{cfg}"), "tgt_tok_s_median")
        if found:
            peer, run, source = found
            figures[f"train_{cfg}"] = figure(peer, run, source, run["tgt_tok_s_median"])
            if run.get("peak_rss_mib") is not None:  # the same run's memory, beside its speed
                figures[f"rss_{cfg}"] = figure(peer, run, source, run["peak_rss_mib"])
    found = best(lambda record: record.get("throughput_R"), "tgt_tok_s_median", only="fairseq")
    if found:
        figures["train_R_fairseq"] = figure(found[0], found[1], found[2], found[1]["tgt_tok_s_median"])
    for search, key in (("greedy", "decode_T_beam1"), ("beam5", "decode_T_beam5")):
        found = best(lambda record: record.get("decode_T", {}).get(search), "tgt_tok_s")
        if found:
            peer, run, source = found
            # A model that loops emits more pieces a step: its pieces/s needs its pieces/sentence.
            figures[key] = figure(peer, run, source, run["tgt_tok_s"],
                                  f"; {run.get('sent_s')} sent/s, {run.get('hyp_pieces_per_sent')} pieces/sent")
    return figures


# --------------------------------------------------------------------------- re-running the peers

@dataclass(frozen=True)
class PeerPaths:
    """Where the peers' scripts keep their venvs, data and runs (common.sh's defaults)."""

    home: Path  # $PEERS
    data: Path  # $DATA
    runs: Path  # $RUNS

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> PeerPaths:
        env = dict(os.environ) if env is None else env
        home = Path(env.get("PEERS", "~/.cache/attn-peers")).expanduser()
        return cls(home, Path(env.get("DATA", home / "data" / "bible-es-en")), Path(env.get("RUNS", home / "runs")))

    def installed(self, peer: str) -> bool:
        """setup_envs.sh has installed ``peer`` (its package is in the venv: a venv alone may be
        a setup still under way)."""
        package = {"fairseq": "fairseq", "onmt": "onmt", "joeynmt": "joeynmt", "tools": "sentencepiece"}[peer]
        return any((self.home / f"venv-{peer}").glob(f"lib/python*/site-packages/{package}/__init__.py"))

    def data_ready(self, peers: list[str]) -> bool:
        """The peers' data stage has run: shared pieces, and fairseq's binarised copy."""
        shared = all((self.data / name).exists() for name in ("stats.json", "train.sp.es", "train.sp.en"))
        binarised = "fairseq" not in peers or (self.runs / "fairseq" / "data-bin" / "train.es-en.en.bin").exists()
        return shared and binarised


@dataclass
class Sitting:
    """What ``rerun_throughput`` did: peer -> config -> run summary, and why a peer did not run."""

    seconds: int
    summaries: dict[str, dict[str, dict]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def parse_peer_list(text: str) -> list[str]:
    """``"fairseq onmt"`` or ``"fairseq,onmt"``; ``none`` or empty: no peer."""
    names = [name for name in re.split(r"[,\s]+", text.strip().lower()) if name]
    return [] if names in ([], ["none"]) else names


def rerun_throughput(peers: list[str], configs: list[str], seconds: int, results_dir: Path,
                     paths: PeerPaths | None = None) -> Sitting:
    """Run each installed peer's throughput stage for ``configs`` with its own scripts, one run
    after the other, and read back the runs this call made."""
    paths = paths or PeerPaths.from_env()
    sitting = Sitting(seconds)
    ready = []
    for peer in peers:
        if peer not in KNOWN_PEERS:
            sitting.skipped[peer] = f"unknown peer (known: {', '.join(KNOWN_PEERS)})"
        elif not paths.installed(peer):
            sitting.skipped[peer] = (f"no environment at {paths.home / f'venv-{peer}'} "
                                     f"({PEERS_BENCH}/setup_envs.sh makes it)")
        else:
            ready.append(peer)
    if not ready:
        return sitting
    results_dir.mkdir(parents=True, exist_ok=True)
    # RESULTS defaults to the shared folder, which may be read-only; the data stage copies its
    # statistics there.
    env = dict(os.environ) | {"PEERS": str(paths.home), "DATA": str(paths.data), "RUNS": str(paths.runs),
                              "RESULTS": str(results_dir), "THROUGHPUT_SECS": str(seconds)}
    if not paths.data_ready(ready):
        if not paths.installed("tools"):
            sitting.skipped.update({peer: f"data not prepared and no {paths.home / 'venv-tools'}" for peer in ready})
            return sitting
        print(f"peers: data stage (once per machine) into {paths.data}", file=sys.stderr, flush=True)
        subprocess.run([str(PEERS_BENCH / "run_all.sh")], env=env | {"STAGES": "data", "PEER_LIST": " ".join(ready)},
                       stdout=sys.stderr, check=False)
    started = time.time()
    for peer in ready:
        for cfg in configs:
            print(f"peers: {peer} {cfg}, {seconds} s of training (run_{peer}.sh throughput {cfg})",
                  file=sys.stderr, flush=True)
            subprocess.run([str(PEERS_BENCH / f"run_{peer}.sh"), "throughput", cfg], env=env,
                           stdout=sys.stderr, check=False)
            sitting.summaries.setdefault(peer, {})[cfg] = read_run(paths.runs / peer / f"{cfg}-throughput" / "train",
                                                                   peer, started)
    return sitting


def read_run(run_dir: Path, peer: str, not_before: float) -> dict:
    """A throughput run's summary, provided ``timed_run`` started it after ``not_before`` (a log
    left by an earlier sitting must not pass for this one's)."""
    try:
        started = float((run_dir / "start").read_text())
        log_text = (run_dir / "log.txt").read_text(errors="replace")
    except (OSError, ValueError):
        return {"tgt_tok_s_median": None, "note": f"no run in {run_dir}"}
    if started < not_before:
        return {"tgt_tok_s_median": None, "note": f"{run_dir} is from an earlier sitting"}
    time_file = run_dir / "time.txt"
    summary = summarize_run(peer, log_text, time_file.read_text() if time_file.exists() else "")
    summary["log"] = str(run_dir / "log.txt")
    return summary
