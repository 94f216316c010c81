"""The heat map in a real browser: headless Chromium (Debian's chromium + chromium-driver, installed by .ci/run)
renders every token and the legend visibly, and `oarl explain --png` writes the same view as an image.

Without Chromium these tests are skipped, except under CI=true (.ci/run): there a missing browser is a failure."""

import json
import os
import struct

import pytest

from oarl.cli import main
from oarl.report.browser import BrowserUnavailable, find_browser, open_page, screenshot
from oarl.report.heatmap import render_html, weight_rgb

try:
    find_browser()
except BrowserUnavailable as exc:
    if os.environ.get("CI") == "true":
        raise
    pytest.skip(f"no browser: {exc}", allow_module_level=True)

# For every token of the completion text, in order: its box, whether it is the element at its own centre (nothing
# covers it), its computed style, and its text.
TOKENS_JS = """
return Array.from(document.querySelectorAll('div.text > span.tok')).map(el => {
  el.scrollIntoView({block: 'center'});
  const r = el.getBoundingClientRect();
  const top = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
  const s = getComputedStyle(el);
  return {width: r.width, height: r.height, onTop: el.contains(top), visibility: s.visibility, display: s.display,
          opacity: s.opacity, background: s.backgroundColor, color: s.color, outline: s.outlineStyle, text: el.textContent,
          inViewport: r.left >= 0 && r.right <= window.innerWidth};
});
"""

TOKENS = [
    "Let",
    " x",
    " =",
    " 12",
    ".",
    "\n",
    "Then",
    " <b>",
    "&amp;",
    "\t",
    "x",
    " +",
    " 30",
    " =",
    " 42",
    ".",
    " ",
    "T: 42",
    "\n",
    "The answer is ",
    "42",
    "<eos>",
]
SEGMENTS = ["reasoning"] * 17 + ["tool", "tool", "conclusion", "answer", "rest"]  # a tool's output before the answer
WEIGHTS = [0.1, 0.3, 0.5, 4.0, 0.8, 1.0, 0.2, 2.5, 1.5, 0.6, 0.7, 1.2, 3.0, 0.9, 6.0, 1.0, 0.4, 0.0, 0.0, 1.0, 1.0, 1.0]
TOOL_BACKGROUND = "rgb(255, 243, 207)"  # .seg-tool in oarl.report.heatmap.CSS
SHOWN = {" ": "·", "\t": "→", "\n": "↵\n"}


def shown(token: str) -> str:
    return "".join(SHOWN.get(c, c) for c in token)


@pytest.fixture()
def page(tmp_path):
    html = render_html(
        TOKENS,
        [w * 0.1 for w in WEIGHTS],
        WEIGHTS,
        SEGMENTS,
        advantage=1.0,
        estimator="gradient",
        prompt="Q: 12 + 30?",
        pivot=[t == " 42" for t in TOKENS],
    )
    path = tmp_path / "heatmap.html"
    path.write_text(html, encoding="utf-8")
    return path


def test_every_token_and_the_legend_render_visibly(page):
    with open_page(page, width=700, height=500) as driver:
        tokens = driver.execute_script(TOKENS_JS)
        legend = driver.find_element("css selector", ".legend")
        bar = driver.find_element("css selector", ".legend .bar")
        assert legend.is_displayed() and "Weight" in legend.text and "suppressed" in legend.text
        assert "written by a tool or an environment" in legend.text
        assert bar.is_displayed() and bar.size["width"] > 50 and bar.size["height"] > 5
        overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert [t["text"] for t in tokens] == [shown(t) for t in TOKENS]  # every token, in order, whitespace shown
    for token, weight, segment in zip(tokens, WEIGHTS, SEGMENTS):
        assert token["width"] > 0 and token["height"] > 0, token
        assert token["onTop"] and token["inViewport"], token  # nothing covers it, nothing cut off at the side
        assert (token["visibility"], token["display"], token["opacity"]) == ("visible", "inline", "1"), token
        assert token["color"] != token["background"], token  # the text shows against its colour
        if segment == "reasoning":
            assert token["background"] == "rgb({}, {}, {})".format(*weight_rgb(weight)), token
        assert (token["background"] == TOOL_BACKGROUND and token["outline"] == "dashed") == (segment == "tool"), token
    assert overflow <= 0  # long lines wrap: no horizontal scrolling


def test_screenshot_is_the_whole_page(page, tmp_path):
    from PIL import Image

    png = screenshot(page, tmp_path / "heatmap.png", width=700)
    with open(png, "rb") as f:
        header = f.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert width == 700 and height > 200
    image = Image.open(png).convert("RGB")
    colours = set(image.getdata())
    assert weight_rgb(4.0) in colours and weight_rgb(0.1) in colours  # boosted red and suppressed blue drawn


def test_cli_explain_png(tiny_lm_dir, tmp_path):
    data = tmp_path / "c.jsonl"
    data.write_text(
        json.dumps(
            {"prompt": "Q: 3+4=?\nA: ", "completion": "3+4=8. The answer is 8.", "answer": "7", "error_span": [4, 5]}
        )
        + "\n"
    )
    out = tmp_path / "explain"
    assert (
        main(
            [
                "explain",
                "--model",
                str(tiny_lm_dir),
                "--completions",
                str(data),
                "--output",
                str(out),
                "--estimators",
                "entropy,gradient",
                "--png",
                "1",
            ]
        )
        == 0
    )
    assert (out / "heatmap.png").read_bytes()[:4] == b"\x89PNG" and not (out / "heatmap_first.html").exists()
