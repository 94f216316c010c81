"""Credit inspection: the HTML heat map, Spearman agreement, pivot hit rates, explain_batch and `oarl explain`."""

import json
import math
import re
from html.parser import HTMLParser

import pytest
import torch

from oarl.cli import main
from oarl.models.tiny import load_tiny
from oarl.report.agreement import (
    describe,
    format_table,
    json_safe,
    kendall,
    rankdata,
    spearman,
    step_scores,
    summarize,
    top_step_hit,
    wrong_step,
)
from oarl.report.explain import explain_batch
from oarl.report.heatmap import NO_ANSWER_NOTE, render_html, weight_rgb

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
    page = render_html(
        tokens,
        [float(i) for i in range(n)],
        [0.5 + 0.1 * i for i in range(n)],
        segments,
        title="<b>t</b>",
        advantage=1.0,
    )
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


def test_kendall_tau_b_hand_computed():
    assert kendall([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)  # 5 concordant, 1 discordant of 6 pairs
    # a ties once, b ties once, no pair tied in both: 4 concordant, 0 discordant; sqrt((6 - 1) (6 - 1)) = 5
    assert kendall([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(0.8)
    assert kendall([1, 2], [5, 1]) == -1.0 and kendall([0.1, 0.5], [0.0, 0.5]) == 1.0
    assert math.isnan(kendall([1, 1, 1], [1, 2, 3])) and math.isnan(kendall([3], [1]))
    with pytest.raises(ValueError):
        kendall([1, 2], [1])


def test_rank_correlations_match_scipy_when_installed():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 5, (40,), generator=g).tolist()
    b = (torch.tensor(a) + torch.randint(0, 4, (40,), generator=g)).tolist()
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
    assert kendall(a, b) == pytest.approx(stats.kendalltau(a, b).statistic)


def test_step_helpers_by_hand():
    assert step_scores([1.0, 3.0, 0.0, 2.0, 9.0], [0, 0, 1, 1, -1]) == [2.0, 1.0]  # means; -1 left out
    assert top_step_hit([0.2, 0.9, 0.1], 1) == 1.0 and top_step_hit([0.2, 0.9, 0.1], 0) == 0.0
    assert top_step_hit([0.5, 0.5, 0.1], 0) == 0.5  # a tie at the top shares the hit
    assert top_step_hit([float("nan"), 1.0], 1) is None
    spans = [[0, 1], [1, 2], [2, 3], [3, 4]]
    assert wrong_step(spans, [0, 0, 1, -1], (2, 3)) == 1 and wrong_step(spans, [0, 0, 1, -1], (3, 4)) is None
    d = describe([1.0, 2.0, 3.0, float("nan")])
    assert d["mean"] == 2.0 and d["se"] == pytest.approx(1 / math.sqrt(3)) and (d["n"], d["n_nan"]) == (3, 1)
    assert describe([]) == {"mean": None, "se": None, "n": 0, "n_nan": 0}


def _row(source, steps, rollout, other, error_span=None):
    n = len(steps)
    return {
        "source": source,
        "has_answer": True,
        "steps": steps,
        "spans": [[i, i + 1] for i in range(n)],
        "segments": ["reasoning" if s >= 0 else "answer" for s in steps],
        "error_span": error_span,
        "importance": {"rollout": rollout, "other": other},
    }


def test_summarize_constructed_report():
    rows = [
        _row("sampled", [0, 0, 1, 1, 2, -1], [0, 0, 0.5, 0.5, 0.25, 0], [1, 1, 3, 3, 2, 0]),  # same order: +1
        _row("sampled", [0, 1, 2, -1], [0.1, 0.5, 0.2, 0], [0.9, 0.1, 0.5, 0]),  # reversed: -1
        _row("sampled", [0, 1, -1], [0.0, 0.0, 0], [1.0, 2.0, 0]),  # constant reference: left out
        _row("sampled", [0, 0, -1], [0.5, 0.5, 0], [1.0, 2.0, 0]),  # one step: left out
        _row("demo", [0, 1, 1, -1], [0.0, 1.0, 1.0, 0], [2.0, 1.0, 1.0, 0], error_span=(2, 3)),  # wrong step 1
    ]
    report = summarize({"completions": rows, "time_s": {"rollout": 2.0, "other": 1.0}}, ["other", "rollout"])
    sampled = report["agreement"]["sampled"]["other"]
    assert sampled["spearman"]["mean"] == pytest.approx(0.0) and sampled["spearman"]["n"] == 2
    assert sampled["spearman"]["n_nan"] == 1 and sampled["kendall"]["mean"] == pytest.approx(0.0)
    assert report["agreement"]["sampled"]["rollout"]["spearman"]["mean"] == pytest.approx(1.0)
    assert report["agreement"]["demo"]["other"]["kendall"]["mean"] == pytest.approx(-1.0)
    wrong = report["wrong_step"]
    assert wrong["n"] == 1 and wrong["chance"] == 0.5
    assert wrong["estimators"]["rollout"]["mean"] == 1.0 and wrong["estimators"]["other"]["mean"] == 0.0
    table = format_table(report)
    assert "Spearman (sampled, n=2)" in table and "hit@1 (n=1)" in table and "0.50" in table
    assert json.dumps(json_safe(report), allow_nan=False)
    no_reference = summarize({"completions": rows}, ["other"])
    assert no_reference["reference"] is None and no_reference["agreement"] == {}
    assert "No agreement" in format_table(no_reference)


# ------------------------------------------------------------------------------------------------ explain_batch


class ArithmeticSampler:
    """A deterministic sampler for the fixture's task "Q: a+b=?\nA: a+b=c. The answer is c.": from any prefix, the
    rest of that solution, with the sum already written if there is one, else the right sum on even continuations
    and one too many on odd ones."""

    def __init__(self, tokenizer):
        self.tok = tokenizer

    def __call__(self, prefixes, k):
        out = []
        for ids in prefixes:
            text = self.tok.decode(ids)
            a, b = (int(x) for x in re.search(r"Q: (\d)\+(\d)", text).groups())
            written = text.split("A: ", 1)[1]
            committed = re.match(r"\d\+\d=(-?\d+)", written)
            conts = []
            for j in range(k):
                value = int(committed.group(1)) if committed else a + b + (j % 2)
                rest = f"{a}+{b}={value}. The answer is {value}."[len(written) :]
                conts.append(self.tok(rest, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id])
            out.append(conts)
        return out


def test_explain_batch_all_estimators(tiny_lm_dir):
    model, tokenizer = load_tiny(tiny_lm_dir)
    prompts = ["Q: 3+4=?\nA: ", "Q: 2+2=?\nA: "]
    completions = ["3+4=8. The answer is 8.", "2+2=4 <so> & more"]  # the second has no parsable answer
    estimators = ("gradient", "perturbation", "entropy", "grail", "rollout")
    golds = ["7", "4"]

    def scorer(rows, ids):
        return [
            float(re.search(r"answer is (-?\d+)", tokenizer.decode(c)).group(1) == golds[r]) for r, c in zip(rows, ids)
        ]

    out = explain_batch(
        model,
        tokenizer,
        prompts,
        completions,
        estimators,
        pivots=[(4, 5), None],
        threshold=0.4,
        span="token",
        max_steps=3,
        sampler=ArithmeticSampler(tokenizer),
        scorer=scorer,
    )
    first, second = out["completions"]
    assert first["tokens"] == list(completions[0]) and "".join(second["tokens"]) == completions[1]
    assert first["has_answer"] and not second["has_answer"] and second["note"] == NO_ANSWER_NOTE
    reasoning = [s == "reasoning" for s in first["segments"]]
    assert reasoning == [i < len("3+4=8. ") for i in range(len(completions[0]))]
    assert first["steps"] == [0, 0, 0, 1, 1, 2, 2] + [-1] * (len(completions[0]) - 7)  # 7 token steps in 3 groups
    # Rollout: V(h0) = V(after "3+4") = 1/2, V(after "3+4=8") = V(after "3+4=8. ") = 0: the group "=8" is blamed.
    assert first["signed"][:7] == [0.0, 0.0, 0.0, -0.5, -0.5, 0.0, 0.0]
    for name in estimators:
        imp, w = first["importance"][name], first["weights"][name]
        assert len(imp) == len(w) == len(completions[0])
        r_w = [x for x, r in zip(w, reasoning) if r]
        if name != "grail":
            assert sum(r_w) == pytest.approx(len(r_w), rel=1e-4)  # Bi-Level keeps the advantage mass
        assert max(r_w) > 1 > min(r_w)
        assert all(x == 1.0 for x, r, s in zip(w, reasoning, first["segments"]) if not r and s != "answer")
        assert second["weights"][name] == [1.0] * len(completions[1])
        assert out["time_s"][name] >= 0
    assert [w for w, s in zip(first["weights"]["grail"], first["segments"]) if s == "answer"] == [5.0]
    page = out["html"]
    spans = token_spans(page)
    assert len(spans) == len(estimators) * (len(completions[0]) + len(completions[1]))
    assert "".join(s["text"] for s in spans[-len(completions[1]) :]) == completions[1]  # char tokens: < and > escaped
    assert "<so>" not in page and ">&lt;</span>" in page and NO_ANSWER_NOTE in page and "delta V -0.5" in page
    assert sum("pivot" in s["attrs"]["class"].split() for s in spans) == len(estimators)
    assert len(out["sections"]) == 2 and len(out["sections"][0]) == len(estimators)
    with pytest.raises(ValueError, match="nonzero"):
        explain_batch(model, tokenizer, prompts, completions, estimators, advantage=0.0)
    with pytest.raises(ValueError, match="needs a sampler and a scorer"):
        explain_batch(model, tokenizer, prompts, completions, ["rollout"])


def test_explain_batch_tool_spans(tiny_lm_dir):
    """Characters a tool wrote: tool tokens (no importance, weight 0, a tool span on the page), and the answer is the
    model's own even when the tool printed one after it."""
    model, tokenizer = load_tiny(tiny_lm_dir)
    completion = "3+4=7. [calc 3+4] The answer is 7. The answer is 9."
    tool = (completion.index("The answer is 9."), len(completion))  # what the tool printed
    call = (completion.index(" ["), completion.index("] ") + 1)  # pretend the call's text was a tool's too
    estimators = ("gradient", "perturbation", "entropy", "grail")
    out = explain_batch(
        model, tokenizer, ["Q: 3+4=?\nA: "], [completion], estimators, tool_spans=[[call, tool]], span="token"
    )
    (row,) = out["completions"]
    labels = row["segments"]
    is_tool = [call[0] <= i < call[1] or i >= tool[0] for i in range(len(completion))]
    assert [s == "tool" for s in labels] == is_tool
    assert "".join(c for c, s in zip(completion, labels) if s == "answer") == "7" and labels.index("answer") < tool[0]
    assert "".join(c for c, s in zip(completion, labels) if s == "reasoning") == "3+4=7. "
    for name in estimators:
        assert all(i == 0 and w == 0 for i, w, t in zip(row["importance"][name], row["weights"][name], is_tool) if t)
        reasoning = [w for w, s in zip(row["weights"][name], labels) if s == "reasoning"]
        if name != "grail":
            assert sum(reasoning) == pytest.approx(len(reasoning), rel=1e-4)
    spans = token_spans(out["html"])
    assert sum("seg-tool" in s["attrs"]["class"].split() for s in spans) == len(estimators) * sum(is_tool)
    assert "written by a tool or an environment" in out["html"] and "tool tokens 27" in out["html"]
    with pytest.raises(ValueError, match="rollout credit cannot explain completions with tool spans"):
        explain_batch(
            model, tokenizer, ["Q"], [completion], ["rollout"], tool_spans=[[tool]], sampler=object(), scorer=object()
        )
    with pytest.raises(ValueError, match="1 tool span lists but 2 completions"):
        explain_batch(model, tokenizer, ["Q", "Q"], [completion] * 2, ["entropy"], tool_spans=[[tool]])


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
    # One sentence per completion here: token steps (merged into 4) give the benchmark something to rank.
    status = main(
        [
            "explain",
            "--model",
            str(tiny_lm_dir),
            "--completions",
            str(data),
            "--output",
            str(out),
            "--span",
            "token",
            "--max-steps",
            "4",
            "--rollouts",
            "4",
            "--max-new-tokens",
            "30",
        ]
    )
    assert status == 0
    page = (out / "heatmap.html").read_text()
    report = json.loads((out / "agreement.json").read_text())
    assert report["completions"] == 3 and report["with_answer"] == 2 and report["wrong_step"]["n"] == 1
    assert report["wrong_step"]["chance"] == 0.25 and report["reference"] == "rollout"
    assert set(report["agreement"]["file"]) == {"gradient", "perturbation", "entropy", "grail", "rollout"}
    assert "<script" not in page and "&lt;" in page and "correct" in page and "wrong" in page and "GRAIL" in page
    printed = capsys.readouterr().out
    assert "Spearman (file" in printed and "hit@1 (n=1)" in printed and "uniform weights" in printed
    assert len((out / "credit.jsonl").read_text().splitlines()) == 3
    assert (out / "agreement.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        ("{not json}\n", "c.jsonl:1: not valid JSON"),
        ('{"prompt": "Q"}\n', "'completion' missing"),
        ('{"prompt": "Q", "completion": "ab", "error_span": [1, 9]}\n', "error_span"),
        ('{"prompt": "Q", "completion": "ab", "tool_spans": [[1, 9]]}\n', "tool_spans must be a list of [start, end]"),
        ("\n", "no rows"),
    ],
)
def test_cli_explain_bad_inputs(tmp_path, capsys, content, message):
    data = tmp_path / "c.jsonl"
    if content is not None:
        data.write_text(content)
    assert main(["explain", "--completions", str(data), "--output", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_explain_tool_spans_and_rollout(tiny_lm_dir, tmp_path, capsys):
    """Rollout credit cannot take tool spans: named in --estimators, refused before any model loads; in the default
    list, left out with a note."""
    data = tmp_path / "c.jsonl"
    row = {"prompt": "Q: 3+4=?\nA: ", "completion": "3+4= [calc] 7. The answer is 7.", "tool_spans": [[5, 11]]}
    data.write_text(json.dumps(row) + "\n")
    out = tmp_path / "o"
    assert main(["explain", "--completions", str(data), "--estimators", "gradient,rollout", "--output", str(out)]) == 2
    assert "rollout credit cannot explain completions with tool_spans" in capsys.readouterr().err
    assert not out.exists()
    assert main(["explain", "--model", str(tiny_lm_dir), "--completions", str(data), "--output", str(out)]) == 0
    assert "rollout credit left out" in capsys.readouterr().err
    records = [json.loads(line) for line in (out / "credit.jsonl").read_text().splitlines()]
    assert len(records) == 1 and set(records[0]["weights"]) == {"gradient", "perturbation", "entropy", "grail"}
    assert "tool" in records[0]["segments"]


def test_cli_explain_bad_flags(tmp_path, capsys):
    assert main(["explain", "--estimators", "gradient,magic", "--output", str(tmp_path)]) == 2
    assert "--estimators" in capsys.readouterr().err
    assert main(["explain", "--threshold", "1.5", "--output", str(tmp_path)]) == 2
    assert "threshold" in capsys.readouterr().err
    assert main(["explain", "--estimators", "none", "--output", str(tmp_path)]) == 2
    assert "grail, rollout" in capsys.readouterr().err
    assert main(["explain", "--rollouts", "0", "--output", str(tmp_path)]) == 2
    assert "rollouts must be an integer >= 1" in capsys.readouterr().err


def test_cli_explain_png_without_a_browser_fails_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OARL_CHROMIUM", str(tmp_path / "no-chromium"))
    assert main(["explain", "--png", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--png: chromium not found" in err and "apt install chromium chromium-driver" in err
    assert "the HTML heat map needs none of them" in err and not (tmp_path / "o").exists()


def test_cli_explain_samples_from_a_run_directory(tiny_lm_dir, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_lm_dir, run / "final_model")  # the layout `oarl train` leaves
    out = tmp_path / "explain"
    assert (
        main(
            [
                "explain",
                "--model",
                str(run),
                "--n",
                "2",
                "--max-new-tokens",
                "30",
                "--estimators",
                "entropy,gradient",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "agreement.json").read_text())
    rows = [json.loads(line) for line in (out / "credit.jsonl").read_text().splitlines()]
    assert report["completions"] == 4 and [r["source"] for r in rows] == ["sampled"] * 2 + ["demo"] * 2
    assert report["reference"] is None and report["wrong_step"]["n"] == 2  # tree demos: two written steps
    assert "gold" in (out / "heatmap.html").read_text() and "No agreement" in capsys.readouterr().out


@pytest.mark.parametrize("task", ["tree", "chain"])
def test_cli_explain_demos_of_either_task_form(tiny_lm_dir, tmp_path, task):
    out = tmp_path / "explain"
    assert (
        main(
            [
                "explain",
                "--model",
                str(tiny_lm_dir),
                "--demos",
                "--task",
                task,
                "--n",
                "3",
                "--estimators",
                "entropy",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in (out / "credit.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(("(" in r["prompt"]) == (task == "tree") for r in rows)
    report = json.loads((out / "agreement.json").read_text())
    assert report["wrong_step"]["n"] == 3 and all(r["source"] == "demo" and r["error_span"] for r in rows)
