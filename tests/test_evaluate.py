"""oarl.evaluate and `oarl eval`: pass@k, majority vote, the report files, resume, compare, evaluate_model."""

import itertools
import json
import math
import re
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from oarl.cli import main
from oarl.commands.eval import EvalConfig, read_samples, run_eval
from oarl.evaluate import benchmark_metrics, evaluate_model, majority_correct, pass_at_k
from oarl.generation import HFBackend, build_prompt

from conftest import DATA_DIR, needs_data, needs_user_namespaces

# ------------------------------------------------------------------------------------------------ pass@k


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (5, 0, 1, 0.0),  # c = 0
        (5, 0, 5, 0.0),
        (5, 5, 1, 1.0),  # c = n
        (5, 5, 3, 1.0),
        (5, 1, 5, 1.0),  # k = n: one correct sample is enough
        (5, 2, 1, 0.4),  # pass@1 = c/n
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (10, 3, 4, 1 - 35 / 210),  # 1 - C(7,4)/C(10,4)
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_equals_enumeration_of_k_subsets():
    for n in range(1, 8):
        for c in range(n + 1):
            samples = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_large_n():
    n, c, k = 1000, 7, 200
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_majority_vote():
    assert majority_correct(["2", "3", "3.0", None], [True, False, False, False]) is False  # "3" == "3.0" win
    assert majority_correct(["2", "3", None, None], [True, False, False, False]) is True  # tie: first seen
    assert majority_correct([None, None], [False, False]) is False
    assert majority_correct(["1,000", "1000", "7"], [True, True, False]) is True


def test_benchmark_metrics_by_hand():
    def s(i, j, correct, pred):
        return {"id": i, "sample": j, "correct": correct, "pred": pred, "num_tokens": 10 + j, "finish_reason": "stop"}

    samples = [s("a", 0, True, "1"), s("a", 1, False, "2"), s("b", 0, False, None), s("b", 1, False, "5")]
    m = benchmark_metrics(samples, n=2, k_list=[1, 2])
    assert m["problems"] == 2 and m["avg@2"] == pytest.approx(0.25) and m["pass@2"] == pytest.approx(0.5)
    assert m["avg@2_se"] == pytest.approx(0.25)  # stdev([0.5, 0]) / sqrt(2)
    assert m["maj@2"] == pytest.approx(0.5) and m["no_answer_frac"] == pytest.approx(0.25)
    assert m["mean_length"] == pytest.approx(10.5)


# ------------------------------------------------------------------------------------------------ tiny model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A random 2-layer Qwen2 (hidden 64) with a BPE tokenizer trained here, saved as an HF model directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    corpus = [
        "What is 12+7? The answer is 19.",
        "Cities A and B are 45 miles apart.",
        "\\boxed{\\frac{1}{2}} #### 18",
    ] * 20
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<eos>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny") / "run" / "final_model"  # the layout of an `oarl train` run
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


class Counting:
    """Wraps a backend: counts prompts generated, optionally raises after some calls (an interruption)."""

    def __init__(self, backend, fail_after: int | None = None):
        self.backend, self.fail_after, self.calls, self.prompts = backend, fail_after, 0, []
        self.name = backend.name

    def __getattr__(self, name):  # the wrapped backend's context, tokenizer, ...
        return getattr(self.backend, name)

    def generate(self, prompts, n, sampling):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("interrupted")
        self.calls += 1
        self.prompts += prompts
        return self.backend.generate(prompts, n, sampling)


class Oracle:
    """A backend that answers with the gold answer (or a wrong one) of each prompt."""

    name = "oracle"

    def __init__(self, gold_by_prompt, wrong=False):
        self.gold_by_prompt, self.wrong = gold_by_prompt, wrong

    def generate(self, prompts, n, sampling):
        return [
            [
                {
                    "text": f"Reasoning. \\boxed{{{'-99' if self.wrong and j == 0 else self.gold_by_prompt(p)}}}",
                    "num_tokens": 5,
                    "finish_reason": "stop",
                }
                for j in range(n)
            ]
            for p in prompts
        ]


@needs_data
def test_eval_end_to_end_with_cli_resume_and_compare(tiny_dir, tmp_path, capsys, one_thread):
    run_dir = tiny_dir.parent
    common = [
        "eval",
        "--model",
        str(run_dir),
        "--benchmarks",
        "gsm8k,amc23,arithmetic",
        "--limit",
        "3",
        "--n",
        "2",
        "--k",
        "1,2",
        "--max-new-tokens",
        "6",
        "--batch-size",
        "2",
        "--data-dir",
        str(DATA_DIR),
        "--no-progress",
    ]
    assert main(common) == 0
    (out,) = run_dir.glob("eval-*")  # a train run keeps its evaluation next to it, in a folder named by the settings
    results = json.loads((out / "results.json").read_text())
    assert set(results["benchmarks"]) == {"gsm8k", "amc23", "arithmetic"}
    for b in results["benchmarks"].values():
        assert b["problems"] == 3 and set(b) >= {
            "avg@2",
            "avg@2_se",
            "pass@1",
            "pass@2",
            "maj@2",
            "no_answer_frac",
            "mean_length",
        }
    s = results["settings"]
    assert (s["n"], s["max_new_tokens"], s["prompt_format"], s["seed"]) == (2, 6, "plain", 0) and results[
        "backend"
    ] == "hf"
    samples = read_samples(out / "samples.jsonl")
    assert len(samples) == 3 * 3 * 2
    assert set(samples[0]) >= {"prompt", "completion", "pred", "gold", "correct", "num_tokens"}
    assert {x["gold"] for x in samples if x["benchmark"] == "amc23"} >= {"27"}
    assert "| gsm8k |" in (out / "results.md").read_text() and "| gsm8k |" in capsys.readouterr().out

    # interrupted after one batch of 2 problems, then resumed: only the 7 missing problems are generated
    from oarl.models.loading import load_model

    model, tokenizer = load_model(str(tiny_dir))
    cfg = EvalConfig(
        model=str(run_dir),
        benchmarks=["gsm8k", "amc23", "arithmetic"],
        data_dir=str(DATA_DIR),
        limit=3,
        n=2,
        k=[1, 2],
        max_new_tokens=6,
        batch_size=2,
        output_dir=str(tmp_path / "resumed"),
        progress=False,
    )
    hf = HFBackend(model, tokenizer, batch_size=2)
    with pytest.raises(KeyboardInterrupt):
        run_eval(cfg, backend=Counting(hf, fail_after=1), tokenizer=tokenizer)
    assert len(read_samples(tmp_path / "resumed" / "samples.jsonl")) == 2 * 2
    again = Counting(hf)
    resumed = run_eval(cfg, backend=again, tokenizer=tokenizer)
    assert len(again.prompts) == 9 - 2 and resumed["generated_problems"] == 7
    samples = read_samples(tmp_path / "resumed" / "samples.jsonl")
    assert len(samples) == 18 and len({(x["benchmark"], x["id"], x["sample"]) for x in samples}) == 18
    # nothing left: no generation at all, same numbers from the file
    assert run_eval(cfg, backend=Counting(hf, fail_after=0), tokenizer=tokenizer)["generated_problems"] == 0
    with pytest.raises(ValueError, match="other settings"):
        run_eval(EvalConfig(**{**cfg.__dict__, "temperature": 0.1}), backend=hf, tokenizer=tokenizer)

    # compare: one column per run
    assert (
        main(["eval", "--compare", str(run_dir), str(tmp_path / "resumed"), "--output", str(tmp_path / "cmp.md")]) == 0
    )
    table = (tmp_path / "cmp.md").read_text()
    assert table.count("| gsm8k | avg@2 |") == 1 and len(table.splitlines()[0].split("|")) == 2 + 2 + 2


@needs_data
def test_scoring_with_an_oracle_and_rows_without_gold(tmp_path):
    from oarl.data.benchmarks import load_benchmark

    bad = tmp_path / "mixed.jsonl"
    bad.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n" + json.dumps({"problem": "no gold"}) + "\n")
    gold = {}
    for name in ("math500", "gsm8k", "amc23", "minerva"):
        for r in load_benchmark(name, data_dir=DATA_DIR, limit=4):
            gold[r["problem"]] = r["answer"]
    gold["1+1?"] = "2"
    lookup = lambda prompt: next(a for p, a in gold.items() if prompt.startswith(p))  # noqa: E731
    cfg = EvalConfig(
        model="oracle",
        benchmarks=["math500", "gsm8k", "amc23", "minerva", str(bad)],
        data_dir=str(DATA_DIR),
        limit=4,
        n=3,
        k=[1, 3],
        output_dir=str(tmp_path / "right"),
        progress=False,
    )
    res = run_eval(cfg, backend=Oracle(lookup), tokenizer=None)
    for name in ("math500", "gsm8k", "amc23", "minerva", "mixed"):
        b = res["benchmarks"][name]
        assert b["avg@3"] == 1.0 and b["maj@3"] == 1.0 and b["no_answer_frac"] == 0.0, name
    assert res["benchmarks"]["mixed"]["problems"] == 1
    assert res["benchmarks"]["mixed"]["skipped_rows"] == [{"source": f"{bad}:2", "reason": "no 'answer' field"}]
    res = run_eval(
        EvalConfig(**{**cfg.__dict__, "output_dir": str(tmp_path / "wrong")}), backend=Oracle(lookup, wrong=True)
    )
    b = res["benchmarks"]["gsm8k"]
    assert (
        b["avg@3"] == pytest.approx(2 / 3)
        and b["pass@1"] == pytest.approx(2 / 3)
        and b["pass@3"] == 1.0
        and b["maj@3"] == 1.0
    )


def test_evaluate_model_in_memory(tiny_dir):
    from tokenizers import Tokenizer

    from oarl.models.loading import load_model

    model, tokenizer = load_model(str(tiny_dir))
    text = "What is 12+7? The answer is 19."  # not AutoTokenizer's Qwen2Tokenizer, which has other ids
    assert (
        tokenizer(text, add_special_tokens=False)["input_ids"]
        == Tokenizer.from_file(str(tiny_dir / "tokenizer.json")).encode(text).ids
    )
    model.train()
    state = torch.random.get_rng_state()
    problems = [
        {"problem": "12+7", "answer": "19"},
        {"problem": "3*4", "answer": 12},
        {"problem": "5-2", "answer": "3"},
    ]
    out = evaluate_model(
        model,
        tokenizer,
        problems,
        n=2,
        k_list=[1, 2],
        prompt_template="Q: {problem}\nA: ",
        max_new_tokens=4,
        batch_size=2,
        return_samples=True,
    )
    assert out["problems"] == 3 and 0.0 <= out["avg@2"] <= 1.0 and "avg@2_se" in out and "pass@2" in out
    assert out["samples"][0]["prompt"] == "Q: 12+7\nA: " and len(out["samples"]) == 6
    assert out["avg@n"] == out["avg@2"] and out["avg@n_se"] == out["avg@2_se"] and out["maj@n"] == out["maj@2"]
    plain = evaluate_model(model, tokenizer, problems[:1], n=1, max_new_tokens=2, return_samples=True)
    assert plain["samples"][0]["prompt"] == "12+7"  # no template: the problem as it is
    assert model.training and torch.equal(torch.random.get_rng_state(), state)
    again = evaluate_model(
        model,
        tokenizer,
        problems,
        n=2,
        k_list=[1],
        prompt_template="Q: {problem}\nA: ",
        max_new_tokens=4,
        batch_size=2,
        return_samples=True,
    )
    assert [s["completion"] for s in again["samples"]] == [s["completion"] for s in out["samples"]]  # seeded


def test_hf_backend_stops_at_the_models_context(tiny_dir):
    """A max_new_tokens past the model's context is cut to the room left after the prompt (as vLLM does)."""
    from oarl.generation import Sampling
    from oarl.models.loading import load_model

    model, tokenizer = load_model(str(tiny_dir))
    model.config.max_position_embeddings = 24
    model.generation_config.eos_token_id = None  # no end token: generation runs to its limit
    tokenizer.eos_token = "<unk>"
    prompt = "What is 12+7?"
    room = 24 - len(tokenizer(prompt)["input_ids"])
    [[gen]] = HFBackend(model, tokenizer).generate([prompt], 1, Sampling(0.0, 1.0, 1000, 0, []))
    assert gen["finish_reason"] == "length" and gen["num_tokens"] == room
    # in one batch, each prompt keeps the room its own length leaves (not the longest prompt's)
    long_prompt = "What is 12+7? " * 2
    long_room = 24 - len(tokenizer(long_prompt)["input_ids"])
    assert 0 < long_room < room
    gens = HFBackend(model, tokenizer, batch_size=2).generate([long_prompt, prompt], 1, Sampling(0.0, 1.0, 20, 0, []))
    assert [g[0]["num_tokens"] for g in gens] == [long_room, min(room, 20)]


def test_a_prompt_longer_than_the_context_is_skipped_with_its_reason(tiny_dir, tmp_path):
    """A prompt that leaves no room for a completion never reaches the model: skipped, with its reason in the report."""
    from oarl.models.loading import load_model

    model, tokenizer = load_model(str(tiny_dir))
    path = tmp_path / "long.jsonl"
    path.write_text(
        json.dumps({"problem": "What is 12+7?", "answer": "19"})
        + "\n"
        + json.dumps({"problem": "What is 12+7? " * 400, "answer": "19"})
        + "\n"
    )
    cfg = EvalConfig(
        model=str(tiny_dir),
        benchmarks=[str(path)],
        n=1,
        k=[1],
        max_new_tokens=2,
        output_dir=str(tmp_path / "out"),
        progress=False,
    )
    backend = Counting(HFBackend(model, tokenizer))
    res = run_eval(cfg, backend=backend, tokenizer=tokenizer)
    assert backend.prompts == [build_prompt({"problem": "What is 12+7?"}, tokenizer, None, False)]
    [skipped] = res["benchmarks"]["long"]["skipped_rows"]
    assert skipped["source"] == f"{path}:2"
    assert re.fullmatch(
        r"a prompt of \d+ tokens leaves no room for a completion in the model's context of 1024 "
        r"tokens",
        skipped["reason"],
    )


@needs_user_namespaces
def test_a_full_disk_is_one_line_with_the_command_that_continues(tmp_path):
    """`oarl eval` writing to a real full disk (a 4 KiB tmpfs: the settings fit, the samples do not)."""
    import shlex
    import subprocess
    import sys

    disk = tmp_path / "disk"
    disk.mkdir()
    args = [
        "eval",
        "--model",
        "tiny",
        "--benchmarks",
        "arithmetic",
        "--limit",
        "8",
        "--max-new-tokens",
        "4",
        "--no-progress",
        "--output-dir",
        str(disk / "out"),
    ]
    script = f"mount -t tmpfs -o size=4k tmpfs {disk} || exit 99; exec {shlex.join([sys.executable, '-m', 'oarl.cli', *args])}"
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[-1] == (
        "oarl eval: error: No space left on device while writing the evaluation: "
        f"free space on its disk, then continue with: oarl {shlex.join(args)}"
    )


def test_evaluate_model_on_the_arithmetic_task(tiny_dir):
    from oarl.data import arithmetic
    from oarl.models.loading import load_model

    model, tokenizer = load_model(str(tiny_dir))
    rows = arithmetic.problems("test", 3, seed=0)  # rows with a ready "Q: ...=?\nA: " prompt
    out = evaluate_model(model, tokenizer, rows, n=2, k_list=[1, 2], max_new_tokens=4, return_samples=True)
    assert out["problems"] == 3 and out["samples"][0]["prompt"] == rows[0]["prompt"]


def test_cli_without_model_fails_clearly(capsys):
    assert main(["eval"]) == 2
    assert "--model is required" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ report folder


class Failing:
    name = "failing"

    def generate(self, prompts, n, sampling):
        raise RuntimeError("the engine died")


def test_default_report_folder_is_unique_to_the_settings(tmp_path, monkeypatch):
    """Run twice with other settings: two folders, both fine; the same settings again resume their folder. An
    unknown benchmark is reported before any old output is looked at; a failed run leaves no folder behind."""
    monkeypatch.chdir(tmp_path)
    rows = tmp_path / "set.jsonl"
    rows.write_text("".join(json.dumps({"problem": f"{i}+1?", "answer": str(i + 1)}) + "\n" for i in range(3)))
    oracle = Oracle(lambda p: str(int(p.split("+")[0]) + 1))
    cfg = EvalConfig(model="oracle", benchmarks=[str(rows)], n=2, k=[1], progress=False)
    first = run_eval(cfg, backend=oracle)
    second = run_eval(EvalConfig(**{**cfg.__dict__, "n": 3}), backend=oracle)
    assert first["output_dir"] != second["output_dir"] and second["benchmarks"]["set"]["avg@3"] == 1.0
    assert Path(first["output_dir"]).parent == Path("reports") and Path(first["output_dir"]).name.startswith(
        "eval-oracle-"
    )
    assert run_eval(cfg, backend=oracle)["generated_problems"] == 0  # the same settings: resumed

    with pytest.raises(FileNotFoundError, match="unknown benchmark 'math5000'"):
        run_eval(
            EvalConfig(
                **{**cfg.__dict__, "benchmarks": ["math5000"], "output_dir": first["output_dir"], "temperature": 0.1}
            ),
            backend=oracle,
        )
    for output_dir in (None, "elsewhere/report"):
        with pytest.raises(RuntimeError):
            run_eval(EvalConfig(**{**cfg.__dict__, "seed": 7, "output_dir": output_dir}), backend=Failing())
    assert sorted(p.name for p in Path("reports").iterdir()) == sorted(
        {Path(first["output_dir"]).name, Path(second["output_dir"]).name}
    )
    assert not Path("elsewhere").exists()


def test_list_golds_and_templates_naming_fields(tmp_path, capsys):
    """A word problem split over two fields reaches the prompt whole (auto-detected, or by a template naming the
    fields); a list gold is a set of acceptable answers in the scoring."""
    path = tmp_path / "word.jsonl"
    path.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"Body": "Dan has \\frac{1}{2} cake.", "Question": "How much cake?", "Answer": ["$\\frac{1}{2}$"]},
                {"Body": "x^2 = 1.", "Question": "What is x?", "Answer": ["1", "-1"]},
            ]
        )
    )
    answers = {"Dan": "0.5", "x^2": "-1"}  # the second acceptable answer of the list scores too
    oracle = Oracle(lambda p: next(a for k, a in answers.items() if k in p))
    cfg = EvalConfig(
        model="oracle",
        benchmarks=[str(path)],
        n=1,
        k=[1],
        progress=False,
        chat_template="off",
        output_dir=str(tmp_path / "auto"),
    )
    res = run_eval(cfg, backend=oracle)
    samples = read_samples(tmp_path / "auto" / "samples.jsonl")
    assert samples[0]["prompt"].startswith("Dan has \\frac{1}{2} cake. How much cake?\n")
    assert res["benchmarks"]["word"]["avg@1"] == 1.0 and samples[1]["gold"] == ["1", "-1"]

    templated = EvalConfig(
        **{**cfg.__dict__, "prompt_template": "{Question} Context: {Body}", "output_dir": str(tmp_path / "templated")}
    )
    run_eval(templated, backend=oracle)
    samples = read_samples(tmp_path / "templated" / "samples.jsonl")
    assert [s["prompt"] for s in samples] == [
        "How much cake? Context: Dan has \\frac{1}{2} cake.",
        "What is x? Context: x^2 = 1.",
    ]
    assert "replaces the whole default prompt, its answer instruction included" in capsys.readouterr().err
    run_eval(
        EvalConfig(
            **{
                **templated.__dict__,
                "prompt_template": "{Question} {Body} The answer is",
                "output_dir": str(tmp_path / "asks"),
            }
        ),
        backend=oracle,
    )
    assert "answer instruction" not in capsys.readouterr().err  # a template that asks for the answer: no note
    with pytest.raises(ValueError, match=r"\{Qestion\}.*Body, Question, Answer, problem.*Did you mean \{Question\}"):
        run_eval(
            EvalConfig(**{**templated.__dict__, "prompt_template": "{Qestion}", "output_dir": str(tmp_path / "x")}),
            backend=oracle,
        )
    assert not (tmp_path / "x").exists()
