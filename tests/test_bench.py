"""``make bench``'s choices about the peers, on made-up logs and results: nothing here runs a benchmark."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import peers
from bench.peers import STORED, THIS_SITTING, Machine, PeerFigure, StoredResults
from bench.run import render_table

ZEN3 = Machine("AMD EPYC", avx512=False, isa="AVX2, no AVX-512")


def fairseq_log(rates: dict[int, float]) -> str:
    """fairseq 0.12.2's --log-format simple lines, one per logged interval (update count -> wps)."""
    return "\n".join(
        f"2026-12-07 00:{step // 10:02d}:00 | INFO | train_inner | epoch 001:     {step} / 236 loss=13.087, "
        f"nll_loss=13.011, ppl=8257.9, wps={wps}, ups=0.49, wpb=3381.6, bsz=108.8, num_updates={step}, lr=5e-06, "
        f"gnorm=3.209, train_wall=20, gb_free=None, wall=21" for step, wps in rates.items())


TIME_V = "\tCommand being timed: \"fairseq-train\"\n\tMaximum resident set size (kbytes): 1852928\n\tExit status: 0\n"


def test_fairseq_log_gives_the_median_of_the_intervals_after_update_50() -> None:
    # 10..50 are start-up (slow); the interval ending at 60 is the first to start at update 50.
    log = fairseq_log({10: 100.0, 20: 200.0, 30: 300.0, 40: 400.0, 50: 500.0, 60: 1600.0, 70: 1700.0, 80: 1650.0})
    summary = peers.summarize_run("fairseq", "some start-up noise\n" + log, TIME_V)
    assert summary["tgt_tok_s_median"] == 1650.0
    assert summary["n_intervals_used"] == 3
    assert summary["updates_done"] == 80
    assert summary["peak_rss_mib"] == pytest.approx(1809.5)


def test_a_run_that_never_passed_update_50_gives_no_figure() -> None:
    summary = peers.summarize_run("fairseq", fairseq_log({10: 100.0, 20: 200.0, 30: 300.0, 40: 400.0, 50: 500.0}), "")
    assert summary["tgt_tok_s_median"] is None
    assert "update 50" in summary["note"]
    assert summary["peak_rss_mib"] is None


def test_onmt_and_joeynmt_logs_parse() -> None:
    onmt = ("[2026-11-21 05:44:52,674 INFO] Step 60/100000000; acc: 5.1; ppl: 900.1; xent: 6.8; lr: 0.00003; "
            "sents:    1024; bsz: 3410/3403/32; 2287/2373 tok/s;     90 sec;")
    joey = ("2026-11-21 05:44:52,674 - INFO - joeynmt.training - Epoch   1, Step:       61, Batch Loss:     7.108206, "
            "Batch Acc: 0.01, Tokens per Sec:      866, Lr: 0.000030")
    assert peers.log_intervals("onmt", onmt) == [(60, 2373.0)]
    assert peers.log_intervals("joeynmt", joey) == [(61, 866.0)]


def test_stored_machine_comes_from_the_heading_else_the_ceiling() -> None:
    assert peers.stored_machine("# Peer NMT toolkits on a 2-core AMD EPYC with AVX-512, CPU only, torch 2.13.0 CPU",
                                None) == "2-core AMD EPYC with AVX-512"
    assert peers.stored_machine("# Peer NMT toolkits on a 2-core AMD EPYC Zen 3 (AVX2 only, no AVX-512), CPU only, "
                                "torch", None) == "2-core AMD EPYC Zen 3 (AVX2 only, no AVX-512)"
    assert peers.stored_machine("", {"cpu_model": "AMD EPYC", "avx512f": True}) == "AMD EPYC (AVX-512)"


def test_isa_summary_tells_the_zen3_from_the_avx512_machine() -> None:
    assert peers.isa_summary({"avx", "avx2"}) == "AVX2, no AVX-512"
    assert peers.isa_summary({"avx2", "avx512f", "avx512_bf16"}) == "AVX-512, BF16"


def test_parse_peer_list() -> None:
    assert peers.parse_peer_list("fairseq, onmt joeynmt") == ["fairseq", "onmt", "joeynmt"]
    assert peers.parse_peer_list("none") == []
    assert peers.parse_peer_list("  ") == []


def test_a_ratio_only_against_a_figure_of_this_sitting() -> None:
    here = PeerFigure("fairseq", 1600.0, THIS_SITTING, ZEN3.label)
    stored = PeerFigure("fairseq", 1600.0, STORED, "2-core AMD EPYC with AVX-512")
    assert peers.ratio(2400.0, here) == pytest.approx(1.5)
    assert peers.ratio(2400.0, stored) is None
    assert peers.ratio(2400.0, None) is None


def stored_files() -> list[StoredResults]:
    """The reported run on the AVX-512 machine (two peers) and the Zen 3 one (fairseq only)."""
    def run(tok: float, rss: float) -> dict:
        return {"tgt_tok_s_median": tok, "peak_rss_mib": rss}

    avx512 = StoredResults("results.json", "2-core AMD EPYC with AVX-512", "2026-11-21", "AMD EPYC", True, {
        "onmt": {"throughput_T": run(2373.0, 2099.0), "throughput_R": run(2543.0, 2469.0),
                 "decode_T": {"greedy": {"tgt_tok_s": 5493.5, "sent_s": 110.1}, "beam5": {"tgt_tok_s": 1322.0}}},
        "fairseq": {"throughput_T": run(2364.0, 1844.0), "throughput_R": run(3711.0, 1642.0),
                    "decode_T": {"greedy": {"tgt_tok_s": 3315.8}, "beam5": {"tgt_tok_s": 1079.0}}}})
    zen3 = StoredResults("results-zen3.json", "2-core AMD EPYC Zen 3 (AVX2 only, no AVX-512)", "2026-12-07",
                         "AMD EPYC", False, {"fairseq": {"throughput_T": run(1636.8, 1809.5),
                                                         "throughput_R": run(2105.5, 1690.3),
                                                         "decode_T": {"greedy": {"tgt_tok_s": 2178.0}}}})
    return [avx512, zen3]


def test_the_stored_file_of_this_kind_of_processor_comes_first() -> None:
    assert [s.file for s in peers.closest_first(stored_files(), ZEN3)] == ["results-zen3.json", "results.json"]
    avx512 = Machine("AMD EPYC", avx512=True, isa="AVX-512")
    assert [s.file for s in peers.closest_first(stored_files(), avx512)] == ["results.json", "results-zen3.json"]


def test_figures_come_from_this_sitting_where_a_peer_ran_else_stored() -> None:
    sitting = {"fairseq": {"T": {"tgt_tok_s_median": 1600.0, "n_intervals_used": 2, "peak_rss_mib": 1800.0},
                           "R": {"tgt_tok_s_median": None, "n_intervals_used": 0, "note": "too short"}}}
    figures = peers.peer_figures(sitting, peers.closest_first(stored_files(), ZEN3), ZEN3, 180)
    assert figures["train_T"] == PeerFigure("fairseq", 1600.0, THIS_SITTING, ZEN3.label,
                                            "180 s, 2 intervals after update 50")
    assert figures["rss_T"].value == 1800.0 and figures["rss_T"].source == THIS_SITTING
    # R logged too little in this sitting: the Zen 3 file's figure, stored, hence no ratio
    assert (figures["train_R"].value, figures["train_R"].source) == (2105.5, STORED)
    assert figures["train_R"].where == "stored, 2-core AMD EPYC Zen 3 (AVX2 only, no AVX-512)"
    assert figures["rss_R"].value == 1690.3
    # decoding is never re-run; beam 5 exists only in the AVX-512 file: the best peer there
    assert (figures["decode_T_beam1"].value, figures["decode_T_beam1"].source) == (2178.0, STORED)
    assert (figures["decode_T_beam5"].peer, figures["decode_T_beam5"].value) == ("onmt", 1322.0)


def test_without_a_sitting_the_best_stored_peer_is_shown() -> None:
    figures = peers.peer_figures({}, stored_files(), Machine("AMD EPYC", True, "AVX-512"), 180)
    assert (figures["train_T"].peer, figures["train_T"].value) == ("onmt", 2373.0)
    assert (figures["rss_T"].peer, figures["rss_T"].value) == ("onmt", 2099.0)  # the same peer's memory
    assert (figures["train_R_fairseq"].peer, figures["train_R_fairseq"].value) == ("fairseq", 3711.0)
    assert all(f.source == STORED for f in figures.values())


def test_the_row_with_fairseqs_attention_compares_with_fairseq_only() -> None:
    def run(tok: float) -> dict:
        return {"tgt_tok_s_median": tok, "n_intervals_used": 5, "peak_rss_mib": 1700.0}

    sitting = {"onmt": {"R": run(2600.0)}, "fairseq": {"R": run(2100.0)}}
    figures = peers.peer_figures(sitting, stored_files(), ZEN3, 180)
    assert (figures["train_R"].peer, figures["train_R"].value) == ("onmt", 2600.0)
    assert (figures["train_R_fairseq"].peer, figures["train_R_fairseq"].value) == ("fairseq", 2100.0)
    assert figures["train_R_fairseq"].source == THIS_SITTING


def test_a_run_left_by_an_earlier_sitting_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "start").write_text("1000.5\n")
    (tmp_path / "log.txt").write_text(fairseq_log({50: 500.0, 60: 1600.0, 70: 1700.0}))
    assert peers.read_run(tmp_path, "fairseq", not_before=2000.0)["tgt_tok_s_median"] is None
    assert peers.read_run(tmp_path, "fairseq", not_before=1000.0)["tgt_tok_s_median"] == 1650.0


def attn_results(figures: dict[str, PeerFigure]) -> dict:
    """bench/out/results.json as main() writes it, for one training config and one decode."""
    train = {"tgt_tokens_per_s": 2400.0, "src_tokens_per_s": 2350.0, "peak_rss_mib": 1400.0, "padding_ratio": 0.05,
             "flops_per_tgt_token": 45.8e6, "achieved_gflops": 110.0, "utilisation": 0.5}
    return {
        "threads": 2, "matmul_ceiling_gflops": 144.0, "machine": {"label": ZEN3.label},
        "cpu_fast_paths": {"onednn_linear": {"on": True, "reason": "oneDNN linear runs float32 products"},
                           "onednn_packed_bf16": {"on": False, "reason": "raises RuntimeError"}},
        "peer_sitting": {"seconds": 180, "runs": {"fairseq": {"T": {"tgt_tok_s_median": 1600.0}}},
                         "not_rerun": {"onmt": "no environment at /nowhere/venv-onmt"}},
        "peer_figures": {key: figure.to_json() for key, figure in figures.items()},
        "train_T": train, "train_R": train,
        "decode_T_beam1": {"tokens_per_s": 3000.0, "sentences_per_s": 80.0, "pieces_per_sentence": 37.5, "bleu": 3.4},
    }


def table_row(table: str, start: str) -> list[str]:
    return next([cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()
                if line.startswith(f"| {start}"))


def test_the_table_gives_a_ratio_for_this_sitting_and_names_the_machine_of_a_stored_figure() -> None:
    figures = {"train_T": PeerFigure("fairseq", 1600.0, THIS_SITTING, ZEN3.label, "180 s, 2 intervals"),
               "train_R": PeerFigure("fairseq", 3711.0, STORED, "2-core AMD EPYC with AVX-512", "results.json"),
               "decode_T_beam1": PeerFigure("onmt", 5494.0, STORED, "2-core AMD EPYC with AVX-512", "results.json")}
    table = render_table(attn_results(figures))
    assert "this machine: AMD EPYC (AVX2, no AVX-512), 2 threads" in table
    assert "onednn_linear: on (oneDNN linear runs float32 products)" in table
    assert "onednn_packed_bf16: off (raises RuntimeError)" in table
    assert "peer not re-run: onmt: no environment" in table
    assert table_row(table, "train T: target tok/s")[2:] == ["1,600 (fairseq)", "this sitting (180 s, 2 intervals)",
                                                             "1.50x"]
    assert table_row(table, "train R: target tok/s")[2:] == [
        "3,711 (fairseq)", "stored, 2-core AMD EPYC with AVX-512 (results.json)", ""]
    decode = table_row(table, "decode T beam 1:")
    assert decode[3].startswith("stored, 2-core AMD EPYC with AVX-512") and decode[4] == ""
