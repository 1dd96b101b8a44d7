"""The self-contained HTML pages (seq2seq/html_pages.py): what they hold, that they need no
network, ``attn translate --attention-html``, and, in headless Chromium where it is installed,
that the table sorts on a click and the heatmaps are drawn in pixels.

Chromium: ``sudo apt-get install chromium`` (Debian/Ubuntu); the browser tests skip without it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from seq2seq.html_pages import curves, example_card, heatmap, page, table
from tests.helpers_cli import assert_user_error, run_attn, tiny_run

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                                                             "(sudo apt-get install chromium)")


def test_the_table_holds_every_row_escaped():
    html = table(["point", "bleu"], [{"point": "<b>a</b>", "bleu": 1.5}, {"point": "b"}])
    assert html.count("<tr>") == 3 and "&lt;b&gt;a&lt;/b&gt;" in html and "<b>" not in html
    assert "<td></td>" in html  # a missing value is an empty cell


def test_a_heatmap_has_one_cell_per_weight_shaded_by_it():
    svg = heatmap(["a", "b", "</s>"], ["x", "y"], [[0.0, 0.25, 0.75], [1.0, 0.0, 0.0]])
    shades = [float(v) for v in re.findall(r'fill-opacity="([0-9.]+)"', svg)]
    assert shades == [0.0, 0.25, 0.75, 1.0, 0.0, 0.0]
    assert "&lt;/s&gt;" in svg and "data-weights='[[0.0, 0.25, 0.75], [1.0, 0.0, 0.0]]'" in svg
    with pytest.raises(ValueError, match=r"\[2 target pieces, 3 source pieces\]"):
        heatmap(["a", "b", "c"], ["x", "y"], [[0.5, 0.5], [1.0, 0.0]])


def test_curves_draw_one_line_per_series_and_say_when_there_are_none():
    svg = curves({"a": [(1, 5.0), (2, 4.0)], "b": [(1, 6.0), (2, float("nan")), (3, 3.0)]}, "NLL")
    assert svg.count("<polyline") == 2 and ">a</text>" in svg and ">b</text>" in svg
    assert "no curves" in curves({"a": []}, "NLL")


def test_a_page_needs_no_network():
    html = page("t", table(["a"], [{"a": 1}]) + curves({"a": [(1, 2.0), (2, 1.0)]}, "y")
                + example_card("m", "hello", ["h", "</s>"], ["hello"], [[0.9, 0.1]]))
    assert not re.search(r"""(src|href)\s*=""", html)  # no scripts, styles or images fetched
    assert re.findall(r"https?://[^\s\"']+", html) == ["http://www.w3.org/2000/svg"] * 2  # SVG's namespace name


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    base = tmp_path_factory.getbasetemp() / "attn-shared"  # test_bad_input's: trained once per session
    base.mkdir(exist_ok=True)
    return tiny_run(base)


def test_translate_writes_an_attention_page(tmp_path: Path, run: Path):
    result = run_attn("translate", "-c", run, "--beam", "1", "--attention-html", "page.html", "--max-plots", "2",
                      cwd=tmp_path, input="hola mundo\n\nbuenos días\ngracias\n")
    assert result.returncode == 0, result.stderr
    html = (tmp_path / "page.html").read_text(encoding="utf-8")
    assert html.count('class="card"') == 2 and "line 1" in html and "line 3" in html  # the empty line 2 has none
    assert html.count('<svg class="attention"') == 2
    assert_user_error(run_attn("translate", "-c", run, "--attention-html", "no/such/page.html", cwd=tmp_path,
                               input="hola\n"), "--attention-html no/such/page.html", "does not exist")


def render(tmp_path: Path, html: str, *flags: str) -> subprocess.CompletedProcess:
    path = tmp_path / "page.html"
    path.write_text(html, encoding="utf-8")
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *flags,
                           path.as_uri()], capture_output=True, text=True, timeout=120, cwd=tmp_path)


@needs_chromium
def test_the_table_sorts_on_a_click_in_a_browser(tmp_path: Path):
    rows = [{"point": "b", "bleu": 2.5}, {"point": "a", "bleu": 10.0}, {"point": "c", "bleu": 7.25}]
    click = """<script>window.addEventListener("load", () => {
      const th = document.querySelectorAll("th")[1]; th.click(); const first = []; 
      document.querySelectorAll("tbody tr").forEach(r => first.push(r.cells[0].textContent));
      th.click(); const second = [];
      document.querySelectorAll("tbody tr").forEach(r => second.push(r.cells[0].textContent));
      document.body.setAttribute("data-sorted", first.join(",") + "|" + second.join(","));
    });</script>"""
    result = render(tmp_path, page("t", table(["point", "bleu"], rows)).replace("</body>", click + "</body>"),
                    "--virtual-time-budget=2000", "--dump-dom")
    assert 'data-sorted="a,c,b|b,c,a"' in result.stdout, result.stderr[-2000:]  # numbers, descending first


@needs_chromium
def test_a_heatmap_is_drawn_in_pixels_in_a_browser(tmp_path: Path):
    from matplotlib.image import imread

    def dark_pixels(weights) -> int:
        pieces = [f"p{i}" for i in range(6)]
        shot = tmp_path / "shot.png"
        result = render(tmp_path, page("t", heatmap(pieces, pieces, weights, cell=20)), f"--screenshot={shot}",
                        "--window-size=600,500")
        assert shot.is_file(), result.stderr[-2000:]
        pixels = imread(shot)[..., :3]
        shot.unlink()
        return int((pixels.mean(axis=-1) < 0.25).sum())

    empty, diagonal = dark_pixels(np.zeros((6, 6))), dark_pixels(np.eye(6))
    assert diagonal - empty >= 6 * 15 * 15  # six dark 20-pixel cells, give or take their borders
