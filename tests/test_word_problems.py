"""The word-problems task (oarl.data.word_problems) and the SmolLM2 job that `oarl train --model smollm2-135m`
picks by default: problems are right by construction, splits disjoint, the regime's settings reach the config."""

from __future__ import annotations

import re

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from oarl.answer import extract_answer
from oarl.data import load_train_dataset
from oarl.data.word_problems import INSTRUCTION, SMOLLM2_REGIME, Regime, in_test_split, problems
from oarl.rewards import is_correct


def _evaluate_solution(solution: str) -> int:
    """The worked solution's arithmetic, re-done from its written equations ('a + b = c', 'a x b = c')."""
    last = None
    for a, op, b, c in re.findall(r"(\d+) ([-+x]) (\d+) = (\d+)", solution):
        a, b, c = int(a), int(b), int(c)
        assert c == (a + b if op == "+" else a - b if op == "-" else a * b), solution
        last = c
    return last


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), steps=st.integers(1, 3), ops=st.sampled_from(["+", "-", "+-", "+-*"]))
def test_problems_are_right_by_construction(seed, steps, ops):
    for row in problems("train", 5, seed=seed, steps=(steps, steps), ops=ops):
        assert row["num_steps"] == steps
        assert _evaluate_solution(row["solution"]) == int(row["answer"])
        assert 0 <= int(row["answer"]) <= 50
        assert extract_answer(row["solution"]) == row["answer"]
        assert is_correct(row["solution"], row["answer"])
        assert row["question"].endswith("have now?")


def test_splits_are_disjoint_and_seeded():
    train = problems("train", 400, seed=0)
    test = problems("test", 100, seed=0)
    assert len({r["question"] for r in test}) == 100 and all(in_test_split(r["question"]) for r in test)
    assert not any(in_test_split(r["question"]) for r in train)
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    assert problems("test", 100, seed=0) == test and problems("test", 100, seed=1) != test
    with pytest.raises(ValueError, match="split"):
        problems("validation", 1)
    with pytest.raises(ValueError, match="ops"):
        problems("train", 1, ops="/")


def test_dataset_by_name_is_the_regime_task():
    ds = load_train_dataset("word-problems", size=6, seed=0)
    assert ds.column_names == ["prompt", "answer"] and len(ds) == 6
    content = ds[0]["prompt"][0]["content"]
    assert content.endswith(INSTRUCTION)
    rows = problems("train", 6, seed=0, **SMOLLM2_REGIME.task_kwargs())
    assert [r["answer"] for r in rows] == ds["answer"] and content.startswith(rows[0]["question"])


def test_regime_batches():
    kw = SMOLLM2_REGIME.grpo_kwargs()
    per_step = SMOLLM2_REGIME.prompts_per_step * SMOLLM2_REGIME.num_generations
    assert kw["per_device_train_batch_size"] * kw["gradient_accumulation_steps"] == per_step
    with pytest.raises(ValueError, match="multiple of micro_batch_size"):
        Regime(prompts_per_step=3, num_generations=3, micro_batch_size=2).grpo_kwargs()


def test_smollm2_picks_its_regime_and_flags_win():
    from oarl.commands.train import parse_args

    train_args, config = parse_args(["--model", "smollm2-135m"])
    assert train_args.dataset == "word-problems"
    for key, value in SMOLLM2_REGIME.grpo_kwargs().items():
        got = getattr(config, key)
        assert (got.value if hasattr(got, "value") else got) == value, key
    assert config.max_completion_length <= 256  # a laptop CPU budget, not a GPU one
    from oarl.devices import cpu_has_bf16, mixed_precision

    # on a CPU, bf16 autocast only where the CPU runs it natively; on a GPU, where the GPU has bf16
    assert config.bf16 == mixed_precision(cpu_bf16=cpu_has_bf16())["bf16"] and not config.fp16
    assert not parse_args(["--model", "smollm2-135m", "--bf16", "false"])[1].bf16
    _, config = parse_args(["--model", "smollm2-135m", "--learning_rate", "3e-6", "--max_steps", "2"])
    assert config.learning_rate == 3e-6 and config.max_steps == 2
    train_args, config = parse_args(["--model", "smollm2-135m", "--dataset", "gsm-symbolic"])
    assert train_args.dataset == "gsm-symbolic" and config.max_steps != SMOLLM2_REGIME.rl_steps


@pytest.mark.slow
def test_smollm2_job_end_to_end(tmp_path):
    """`oarl train --model smollm2-135m`, shortened by flags: the warm start (one SFT step, cached), one RL
    step with OAR-G in bf16 (autocast; the SFT before it in fp32, in the same process), held-out accuracy before
    and after, every phase with a progress line."""
    import json
    import os
    import subprocess
    import sys

    from oarl.models import loading

    try:
        gguf = loading.smollm2_gguf_path()
    except ImportError as exc:
        pytest.skip(str(exc))
    cache = tmp_path / "cache"
    converted = loading.cache_dir() / "models" / "smollm2-135m"
    if (converted / "oarl_source.json").is_file():  # reuse the float32 conversion, not the warm start
        (cache / "models").mkdir(parents=True)
        (cache / "models" / "smollm2-135m").symlink_to(converted)
    env = {**os.environ, "OARL_CACHE": str(cache), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    args = [
        "--model",
        "smollm2-135m",
        "--sft_steps",
        "1",
        "--max_steps",
        "1",
        "--num_generations",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--gradient_accumulation_steps",
        "1",
        "--max_completion_length",
        "24",
        "--eval_size",
        "2",
        "--eval_samples",
        "1",
        "--bf16",
        "true",
        "--output_dir",
        str(run),
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "oarl.cli", "train", *args], env=env, capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert gguf.is_file()
    for phase in (
        "runs once",
        "warm start (once, then cached): 100%",
        "held-out test (before): 100%",
        "held-out test (after): 100%",
        "oarl train:",
    ):
        assert phase in proc.stdout + proc.stderr, phase
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["credit"] == "gradient"
    for when in ("heldout_before", "heldout_after"):
        assert summary[when]["test"]["n_problems"] == 2 and 0.0 <= summary[when]["test"]["avg"] <= 1.0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["dataset"] == "word-problems" and config["sft_steps"] == 1 and config["bf16"] is True
    assert len(list((cache / "warmstart").iterdir())) == 1  # the warm start is cached
