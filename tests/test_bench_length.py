"""``make bench-length`` in miniature: every mechanism at two short lengths, into a temporary
folder, and a cell that runs out of memory or past the cap shown as "–" instead of ending the run."""

from __future__ import annotations

import json
import math
import time

import pytest

from bench import length
from bench.length import Settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MECHANISMS = ("scaled_dot", "local", "sparse", "performer", "linformer")  # what the brief asks for


def quick_settings(**changes) -> Settings:
    base = dict(lengths=(16, 32), tokens=128, repeats=1, decode_sentences=2, decode_steps=4, cap_seconds=30.0)
    return Settings(**{**base, **changes})


def test_quick_run_measures_every_mechanism_at_every_length(tmp_path) -> None:
    results = length.run(quick_settings(), tmp_path, log=lambda line: None)

    rows = [line for line in results["table"].splitlines() if line.startswith("| ")][1:]  # less the header
    assert sorted((cells[1].strip(), int(cells[2])) for cells in (row.split("|") for row in rows)) == sorted(
        (mechanism, n) for mechanism in MECHANISMS for n in (16, 32))
    assert "–" not in results["table"]  # nothing skipped at these lengths

    saved = json.loads((tmp_path / "length.json").read_text())
    assert len(saved["cells"]) == len(MECHANISMS) * 2
    for cell in saved["cells"]:
        for value in (cell["train"]["ms_per_1k_tokens"], cell["train"]["ms_per_sentence"],
                      cell["decode"]["ms_per_token"]):
            assert isinstance(value, float) and value > 0
        memory = cell["train"]["mib_per_1k_tokens"]
        assert memory is None or (isinstance(memory, float) and memory >= 0)
    assert (tmp_path / "length.png").read_bytes().startswith(PNG_MAGIC)

    assert set(saved["train_slope_per_sentence"]) == set(MECHANISMS)
    for slope in saved["train_slope_per_sentence"].values():
        assert isinstance(slope, float) and math.isfinite(slope)
    assert set(saved["overtakes_full_attention"]) == set(MECHANISMS) - {"scaled_dot"}
    assert results["machine"] in results["report"]
    assert "overtakes full attention at" in results["report"]


def test_out_of_memory_and_the_cap_leave_a_dash_and_a_footnote(tmp_path, monkeypatch) -> None:
    def training(model, n, settings):
        if n >= 32:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 68719476736 bytes")
        return {"batch": 1, "tgt_length": 4, "step_ms": 1.0, "ms_per_sentence": 1.0 * n, "ms_per_1k_tokens": 1.0,
                "peak_rss_growth_mib": 0.5, "mib_per_1k_tokens": 0.5}

    def decoding(model, n, settings):
        time.sleep(5)  # past the cap: the alarm ends it
        raise AssertionError("the cap did not stop this measurement")

    monkeypatch.setattr(length, "measure_training", training)
    monkeypatch.setattr(length, "measure_decoding", decoding)
    started = time.perf_counter()
    results = length.run(quick_settings(lengths=(16, 32, 64), mechanisms=("scaled_dot", "local"), cap_seconds=0.2),
                         tmp_path, log=lambda line: None)
    assert time.perf_counter() - started < 4  # one capped decoding per mechanism, the longer ones skipped

    cells = {(c["mechanism"], c["length"]): c for c in results["cells"]}
    assert cells["local", 16]["train"]["ms_per_1k_tokens"] == 1.0
    assert cells["local", 32]["train"] is None and "out of memory" in cells["local", 32]["train_skipped"]
    assert "skipped" in cells["local", 64]["train_skipped"] and "at length 32" in cells["local", 64]["train_skipped"]
    assert "over the 0.2 s cap" in cells["scaled_dot", 16]["decode_skipped"]
    assert "at length 16" in cells["scaled_dot", 32]["decode_skipped"]
    table = results["table"]
    assert "– [1]" in table and "[1] " in table.split("\n\n")[-1]
    assert "out of memory" in table and "cap" in table
    assert results["train_slope_per_sentence"]["local"] is None  # one length ran
    assert "training slope n/a" in results["report"]
