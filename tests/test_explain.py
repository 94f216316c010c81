"""Credit inspection: the HTML heat map, Spearman agreement, pivot hit rates, explain_batch and `oarl explain`."""

import json
import math
import re
from html.parser import HTMLParser

import pytest
import torch
from conftest import load_tiny_lm

from oarl.cli import main
from oarl.report.agreement import (
    chance_hit, json_safe, pairwise_spearman, pivot_hit_rate, pivot_hits, rankdata, spearman, span_tokens, summarize,
)
from oarl.report.heatmap import NO_ANSWER_NOTE, explain_batch, render_html, weight_rgb

pytestmark = pytest.mark.usefixtures("one_thread")

VISIBLE = {"·": " ", "→": "\t", "↵": ""}  # the newline marker is followed by a real "\n"


class TokenSpans(HTMLParser):
    """Collects the text, attributes and style of every <span class="tok ..."> inside div.text, in order."""

    def __init__(self):
        super().__init__()
        self.spans, self.depth, self.in_text = [], 0, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and attrs.get("class") == "text":
            self.in_text = True
        if tag != "span" or not self.in_text:
            return
        if self.depth == 0 and "tok" in attrs.get("class", "").split():
            self.spans.append({"attrs": attrs, "text": ""})
            self.depth = 1
        elif self.depth:
            self.depth += 1

    def handle_endtag(self, tag):
        if tag == "span" and self.depth:
            self.depth -= 1
        if tag == "div":
            self.in_text = False

    def handle_data(self, data):
        if self.depth:
            self.spans[-1]["text"] += "".join(VISIBLE.get(ch, ch) for ch in data)


def token_spans(page: str) -> list[dict]:
    parser = TokenSpans()
    parser.feed(page)
    return parser.spans


def rgb(style: str) -> tuple[int, int, int]:
    return tuple(int(x) for x in re.search(r"rgb\((\d+),(\d+),(\d+)\)", style).groups())


# ------------------------------------------------------------------------------------------------ heat map


def test_html_escapes_and_keeps_one_span_per_token_in_order():
    tokens = ["<script>", "alert(1)", "</script>", " ", "a\"b'", "\n", "&amp;", "\t", "=", "7", "."]
    segments = ["reasoning"] * 8 + ["conclusion", "answer", "rest"]
    n = len(tokens)
    page = render_html(tokens, [float(i) for i in range(n)], [0.5 + 0.1 * i for i in range(n)], segments,
                       title="<b>t</b>", advantage=1.0)
    assert "<script" not in page.lower().replace("&lt;script", "")  # only escaped
    assert "&lt;script&gt;" in page and "&lt;b&gt;t&lt;/b&gt;" in page
    assert "http://" not in page and "https://" not in page  # self-contained
    spans = token_spans(page)
    assert [s["text"] for s in spans] == tokens
    assert [int(s["attrs"]["data-i"]) for s in spans] == list(range(n))
    assert [s["attrs"]["class"].split()[1] for s in spans] == [f"seg-{x}" for x in segments]
    assert "weight 0.6" in spans[1]["attrs"]["title"] and "importance 1" in spans[1]["attrs"]["title"]
    assert "normalised 1" in spans[7]["attrs"]["title"]  # the largest reasoning importance
    assert "normalised 0" in spans[0]["attrs"]["title"] and "normalised -" in spans[8]["attrs"]["title"]


def test_colours_are_monotone_in_weight():
    weights = [0.05, 0.1, 0.3, 0.6, 0.9, 1.0, 1.2, 2.0, 3.0, 5.0, 9.0]
    rng = torch.Generator().manual_seed(0)
    order = torch.randperm(len(weights), generator=rng).tolist()
    shuffled = [weights[i] for i in order]
    tokens = [str(i) for i in range(len(weights))]
    page = render_html(tokens, [0.0] * len(weights), shuffled, ["reasoning"] * len(weights))
    colours = {w: rgb(s["attrs"]["style"]) for w, s in zip(shuffled, token_spans(page))}
    diverging = [colours[w][0] - colours[w][2] for w in weights]  # red minus blue
    assert diverging == sorted(diverging) and diverging[0] < 0 < diverging[-1]
    assert colours[1.0] == (255, 255, 255)
    assert all(weight_rgb(a) != weight_rgb(b) for a, b in [(0.3, 0.6), (1.2, 2.0)])  # strictly within the scale
    page = render_html(["x", "y"], None, None, ["answer", "rest"])
    assert all("style" not in s["attrs"] for s in token_spans(page))  # non-reasoning: neutral, no weight colour


def test_render_html_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="one per token"):
        render_html(["a", "b"], [1.0], [1.0, 1.0], ["reasoning", "reasoning"])
    with pytest.raises(ValueError, match="segment labels"):
        render_html(["a"], [1.0], [1.0], ["thinking"])


# ------------------------------------------------------------------------------------------------ agreement


def test_rankdata_averages_ties():
    assert rankdata([10, 20, 20, 30]).tolist() == [1, 2.5, 2.5, 4]
    assert rankdata([3.0, 1.0, 2.0]).tolist() == [3, 1, 2]
    assert rankdata([5, 5, 5]).tolist() == [2, 2, 2]


def test_spearman_hand_computed():
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)  # 1 - 6 * 4 / (5 * 24)
    # ties in b: ranks [1, 2, 3.5, 5, 3.5]; centred products sum 8; norms 10 and 9.5
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    x = [0.3, 2.0, 1e-6, 7.0, 7.0, 0.1]
    assert spearman(x, x) == pytest.approx(1.0)
    assert spearman(x, [math.exp(v) for v in x]) == pytest.approx(1.0)  # monotone transform
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])) and math.isnan(spearman([1], [2]))
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])


def test_spearman_matches_scipy_when_installed():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 5, (40,), generator=g).tolist()
    b = (torch.tensor(a) + torch.randint(0, 4, (40,), generator=g)).tolist()
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)


def test_pairwise_spearman_uses_reasoning_tokens_only():
    rows = [
        {"segments": ["reasoning"] * 4 + ["answer"], "has_answer": True,
         "importance": {"g": [1, 2, 3, 4, 0], "p": [10, 20, 30, 40, 99]}},
        {"segments": ["reasoning"] * 3 + ["answer"], "has_answer": True,
         "importance": {"g": [3, 2, 1, 0], "p": [1, 2, 3, 0]}},
        {"segments": ["rest"] * 3, "has_answer": False, "importance": {"g": [0, 0, 0], "p": [0, 0, 0]}},
    ]
    out = pairwise_spearman(rows, [("g", "p")])["g~p"]
    assert out["per_completion"][:2] == pytest.approx([1.0, -1.0]) and math.isnan(out["per_completion"][2])
    assert out["mean"] == pytest.approx(0.0) and out["n"] == 2 and out["n_nan"] == 1
    assert json.dumps(json_safe(out), allow_nan=False)


def test_pivot_hits_constructed_case():
    segments = ["reasoning"] * 6 + ["conclusion", "answer"]
    importance = [0.1, 0.5, 3.0, 0.2, 0.9, 0.0, 50.0, 50.0]  # non-reasoning tokens never count
    at_top = pivot_hits(importance, segments, [False, False, True, False, False, False, False, False])
    assert at_top["hit@1"] and at_top["hit@3"] and at_top["chance@1"] == pytest.approx(1 / 6)
    assert at_top["chance@3"] == pytest.approx(1 - 10 / 20)  # 1 - C(5,3)/C(6,3)
    third = pivot_hits(importance, segments, [False, True, False, False, False, False, False, False])
    assert not third["hit@1"] and third["hit@3"]
    last = pivot_hits(importance, segments, [False, False, False, False, False, True, False, False])
    assert not last["hit@1"] and not last["hit@3"]
    assert pivot_hits(importance, segments, [False] * 6 + [True, True]) is None  # pivot outside the reasoning
    assert chance_hit(10, 2, 1) == pytest.approx(0.2) and chance_hit(3, 1, 5) == 1.0


def test_pivot_hit_rate_from_character_spans():
    # completion "1+2=4. 4*2=8. The answer is 8." tokenised per character; the wrong result "4" is chars 4..5
    text = "1+2=4. 4*2=8. The answer is 8."
    spans = [[i, i + 1] for i in range(len(text))]
    stmt = text.index("The")
    segments = ["reasoning" if i < stmt else "answer" if text[i] == "8" and i > stmt else "conclusion" for i in range(len(text))]
    assert span_tokens(spans, (4, 5)) == [i == 4 for i in range(len(text))]
    good = [1.0 if i == 4 else 0.01 * i for i in range(len(text))]
    bad = [0.0 if i == 4 else 1.0 + i for i in range(len(text))]
    rows = [{"spans": spans, "segments": segments, "has_answer": True, "importance": {"good": good, "bad": bad}}] * 2
    out = pivot_hit_rate(rows, ["good", "bad"], [(4, 5), None])
    assert out["n"] == 1
    assert out["estimators"]["good"] == {"hit@1": 1.0, "hit@3": 1.0}
    assert out["estimators"]["bad"] == {"hit@1": 0.0, "hit@3": 0.0}
    assert out["chance"]["chance@1"] == pytest.approx(1 / stmt) == out["span_fraction"]
    results = [[(4, 5), (11, 12)], None]  # the written results "4" and "8": the pivot is one of 2 candidates
    out = pivot_hit_rate(rows, ["good"], [(4, 5), None], candidates=results)
    assert out["chance_candidates"] == {"chance@1": 0.5, "chance@3": 1.0}


# ------------------------------------------------------------------------------------------------ explain_batch


def test_explain_batch_all_estimators(tiny_lm_dir):
    model, tokenizer = load_tiny_lm(tiny_lm_dir)
    prompts = ["Q: 3+4=?\nA: ", "Q: 2+2=?\nA: "]
    completions = ["3+4=7. The answer is 7.", "2+2=4 <so> & more"]  # the second has no parsable answer
    estimators = ("gradient", "perturbation", "entropy")
    out = explain_batch(model, tokenizer, prompts, completions, estimators, pivots=[(4, 5), None], threshold=0.4)
    first, second = out["completions"]
    assert first["tokens"] == list(completions[0]) and "".join(second["tokens"]) == completions[1]
    assert first["has_answer"] and not second["has_answer"] and second["note"] == NO_ANSWER_NOTE
    reasoning = [s == "reasoning" for s in first["segments"]]
    assert reasoning == [i < len("3+4=7. ") for i in range(len(completions[0]))]
    for name in estimators:
        imp, w = first["importance"][name], first["weights"][name]
        assert len(imp) == len(w) == len(completions[0])
        r_w = [x for x, r in zip(w, reasoning) if r]
        assert sum(r_w) == pytest.approx(len(r_w), rel=1e-4)  # advantage mass kept
        assert max(r_w) > 1 > min(r_w)
        assert all(x == 1.0 for x, r in zip(w, reasoning) if not r)
        assert second["weights"][name] == [1.0] * len(completions[1])
        assert out["time_s"][name] >= 0
    page = out["html"]
    spans = token_spans(page)
    assert len(spans) == len(estimators) * (len(completions[0]) + len(completions[1]))
    assert "".join(s["text"] for s in spans[-len(completions[1]):]) == completions[1]  # char tokens: < and > escaped
    assert "<so>" not in page and ">&lt;</span>" in page and NO_ANSWER_NOTE in page
    assert sum("pivot" in s["attrs"]["class"].split() for s in spans) == len(estimators)
    report = summarize(out, estimators, pivots=[(4, 5), None])
    assert set(report["spearman"]) == {"gradient~perturbation", "entropy~perturbation"}
    assert report["pivot"]["n"] == 1 and report["with_answer"] == 1
    with pytest.raises(ValueError, match="nonzero"):
        explain_batch(model, tokenizer, prompts, completions, estimators, advantage=0.0)


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_explain_on_jsonl(tiny_lm_dir, tmp_path, capsys):
    data = tmp_path / "c.jsonl"
    rows = [
        {"prompt": "Q: 3+4=?\nA: ", "completion": "3+4=8. The answer is 8.", "answer": "7", "error_span": [4, 5]},
        {"prompt": "Q: 5+1=?\nA: ", "completion": "5+1=6. The answer is 6.", "answer": "6"},
        {"prompt": "Q: 1+1=?\nA: ", "completion": "1+1 is <script>two</script>"},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "explain"
    status = main(["explain", "--model", str(tiny_lm_dir), "--completions", str(data), "--output", str(out),
                   "--estimators", "gradient,perturbation,entropy"])
    assert status == 0
    page = (out / "heatmap.html").read_text()
    report = json.loads((out / "agreement.json").read_text())
    assert report["completions"] == 3 and report["with_answer"] == 2 and report["pivot"]["n"] == 1
    assert report["spearman"]["gradient~perturbation"]["n"] == 2
    assert "<script" not in page and "&lt;" in page and "correct" in page and "wrong" in page
    printed = capsys.readouterr().out
    assert "gradient vs perturbation" in printed and "hit@1" in printed and "uniform weights" in printed
    assert len((out / "credit.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("{not json}\n", "c.jsonl:1: not valid JSON"),
    ('{"prompt": "Q"}\n', "'completion' missing"),
    ('{"prompt": "Q", "completion": "ab", "error_span": [1, 9]}\n', "error_span"),
    ("\n", "no rows"),
])
def test_cli_explain_bad_inputs(tmp_path, capsys, content, message):
    data = tmp_path / "c.jsonl"
    if content is not None:
        data.write_text(content)
    assert main(["explain", "--completions", str(data), "--output", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_explain_bad_flags(tmp_path, capsys):
    assert main(["explain", "--estimators", "gradient,magic", "--output", str(tmp_path)]) == 2
    assert "--estimators" in capsys.readouterr().err
    assert main(["explain", "--threshold", "1.5", "--output", str(tmp_path)]) == 2
    assert "threshold" in capsys.readouterr().err


def test_cli_explain_samples_from_a_run_directory(tiny_lm_dir, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_lm_dir, run / "final_model")  # the layout `oarl train` leaves
    out = tmp_path / "explain"
    assert main(["explain", "--model", str(run), "--n", "2", "--max-new-tokens", "30", "--estimators", "entropy,gradient",
                 "--output", str(out)]) == 0
    report = json.loads((out / "agreement.json").read_text())
    assert report["completions"] == 2 and "pivot" not in report
    assert set(report["spearman"]) == {"entropy~gradient"}
    assert "gold" in (out / "heatmap.html").read_text()


@pytest.mark.parametrize("task", ["tree", "chain"])
def test_cli_explain_demos_of_either_task_form(tiny_lm_dir, tmp_path, task):
    out = tmp_path / "explain"
    assert main(["explain", "--model", str(tiny_lm_dir), "--demos", "--task", task, "--n", "3",
                 "--estimators", "entropy", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "credit.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(("(" in r["prompt"]) == (task == "tree") for r in rows)
    report = json.loads((out / "agreement.json").read_text())
    assert report["pivot"]["n"] == 3
