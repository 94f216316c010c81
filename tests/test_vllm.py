"""Generation through a real vLLM engine (vLLM's CPU build here; `make test-vllm` builds its environment).

`oarl eval --backend vllm` against the HF backend on the embedded tiny model, and OARTrainer / `oarl train` with
TRL's colocated vLLM engine. Skipped where vLLM is not installed, unless OARL_REQUIRE_VLLM=1 (`make test-vllm`),
where a vLLM that cannot be imported is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

if os.environ.get("OARL_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm", reason="vLLM is not installed (`make test-vllm` runs these tests)")
import vllm  # noqa: E402,F401  (with OARL_REQUIRE_VLLM=1 an import error fails the module)

from oarl.commands.eval import EvalConfig, read_samples, run_eval  # noqa: E402
from oarl.generation import HFBackend, VLLMBackend, use_vllm  # noqa: E402
from oarl.models.loading import load_model, load_tokenizer, model_directory  # noqa: E402

pytestmark = pytest.mark.vllm
TESTS = Path(__file__).parent
ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}


class Counting:
    """Wraps a backend: counts generate calls, raises after ``fail_after`` of them (an interruption)."""

    def __init__(self, backend, fail_after: int | None = None):
        self.backend, self.fail_after, self.calls, self.name = backend, fail_after, 0, backend.name

    def generate(self, prompts, n, sampling):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("interrupted")
        self.calls += 1
        return self.backend.generate(prompts, n, sampling)


@pytest.fixture(scope="module")
def engine():
    """(vLLM backend, HF backend, tokenizer) on the embedded tiny model: its cached warm start (trained on first use)."""
    path = model_directory("tiny")
    tokenizer = load_tokenizer(path)
    model, _ = load_model(path)
    backend = VLLMBackend.start(path, tokenizer, seed=0)
    yield backend, HFBackend(model, tokenizer, batch_size=16), tokenizer
    # Stop the engine's process now, not at interpreter exit (where vLLM kills it and logs to closed streams).
    backend.llm.llm_engine.engine_core.shutdown()


def cfg(tmp_path, name, **kw) -> EvalConfig:
    base = dict(
        model="tiny",
        benchmarks=["arithmetic"],
        limit=24,
        n=2,
        k=[1, 2],
        temperature=0.0,
        max_new_tokens=48,
        batch_size=8,
        output_dir=str(tmp_path / name),
        progress=False,
    )
    return EvalConfig(**{**base, **kw})


def by_key(samples):
    return {(s["id"], s["sample"]): s for s in samples}


def test_auto_is_hf_on_cpu_and_vllm_when_asked():
    import torch

    assert use_vllm("auto") is torch.cuda.is_available() and use_vllm("vllm") and not use_vllm("hf")


def test_greedy_answers_equal_between_backends(engine, tmp_path):
    vllm_backend, hf_backend, tokenizer = engine
    res_v = run_eval(cfg(tmp_path, "vllm"), backend=vllm_backend, tokenizer=tokenizer)
    res_h = run_eval(cfg(tmp_path, "hf"), backend=hf_backend, tokenizer=tokenizer)
    assert (res_v["backend"], res_h["backend"]) == ("vllm", "hf")
    # Same results schema.
    strip = lambda r: {k: v for k, v in r.items() if k not in ("backend", "output_dir", "wall_time_s", "created")}  # noqa: E731
    assert set(res_v) == set(res_h) and set(res_v["benchmarks"]["arithmetic"]) == set(res_h["benchmarks"]["arithmetic"])
    samples_v = by_key(read_samples(tmp_path / "vllm" / "samples.jsonl"))
    samples_h = by_key(read_samples(tmp_path / "hf" / "samples.jsonl"))
    assert samples_v.keys() == samples_h.keys() and len(samples_v) == 24 * 2
    for key, s in samples_v.items():
        assert set(s) == set(samples_h[key])
        # Greedy: the same completion, the same answer, the same length.
        assert (s["completion"], s["pred"], s["num_tokens"], s["finish_reason"]) == (
            samples_h[key]["completion"],
            samples_h[key]["pred"],
            samples_h[key]["num_tokens"],
            samples_h[key]["finish_reason"],
        ), key
    assert strip(res_v) == strip(res_h)  # the same numbers
    bench = res_v["benchmarks"]["arithmetic"]
    assert bench["avg@2"] >= 0.8 and bench["no_answer_frac"] == 0.0, bench  # the warm start solves most problems


def test_stop_strings_cut_alike(engine, tmp_path):
    vllm_backend, hf_backend, tokenizer = engine
    stop = cfg(tmp_path, "stop-vllm", stop=[". "], limit=8)
    run_eval(stop, backend=vllm_backend, tokenizer=tokenizer)
    run_eval(replace(stop, output_dir=str(tmp_path / "stop-hf")), backend=hf_backend, tokenizer=tokenizer)
    samples_v = by_key(read_samples(tmp_path / "stop-vllm" / "samples.jsonl"))
    samples_h = by_key(read_samples(tmp_path / "stop-hf" / "samples.jsonl"))
    for key, s in samples_v.items():
        assert ". " not in s["completion"] and s["finish_reason"] == "stop" and s["pred"] is None
        assert s["completion"] == samples_h[key]["completion"], key  # both cut at the first written step


def test_sampling_is_seeded_per_prompt_so_resume_is_exact(engine, tmp_path):
    vllm_backend, _, tokenizer = engine
    sampled = cfg(tmp_path, "whole", temperature=1.0, top_p=0.95, n=4, k=[1, 4], limit=16, batch_size=4)
    whole = by_key(
        read_samples(Path(run_eval(sampled, backend=vllm_backend, tokenizer=tokenizer)["output_dir"]) / "samples.jsonl")
    )
    assert len({s["completion"] for s in whole.values()}) > 16  # sampled: not n copies of one completion
    parted = replace(sampled, output_dir=str(tmp_path / "parted"))
    with pytest.raises(KeyboardInterrupt):
        run_eval(parted, backend=Counting(vllm_backend, fail_after=2), tokenizer=tokenizer)
    assert len(read_samples(tmp_path / "parted" / "samples.jsonl")) == 2 * 4 * 4
    again = Counting(vllm_backend)
    res = run_eval(parted, backend=again, tokenizer=tokenizer)
    assert again.calls == 2 and res["generated_problems"] == 8
    resumed = by_key(read_samples(tmp_path / "parted" / "samples.jsonl"))
    assert {k: s["completion"] for k, s in resumed.items()} == {k: s["completion"] for k, s in whole.items()}
    other_seed = replace(sampled, output_dir=str(tmp_path / "seed1"), seed=1)
    other = by_key(
        read_samples(
            Path(run_eval(other_seed, backend=vllm_backend, tokenizer=tokenizer)["output_dir"]) / "samples.jsonl"
        )
    )
    assert [s["completion"] for s in other.values()] != [s["completion"] for s in whole.values()]


def test_a_batch_larger_than_one_prefill_step_samples_seeded(engine):
    """More prompt tokens than vLLM prefills in one step (its default budget is 4,096 tokens per step): on the
    CPU build, a prompt prefilled in chunks used to kill the engine (its per-request generator cannot be
    rewound). Every prompt is sampled, and each with its own seed whatever the batch around it."""
    from oarl.generation import Sampling

    vllm_backend, _, tokenizer = engine
    prompts = [f"Q: ({a}+{b})-({b}+{a})=? " * 10 + f"Q: ({a}+{b})-(1+{a})=?" for a in range(1, 9) for b in range(1, 9)]
    assert sum(len(tokenizer(p)["input_ids"]) for p in prompts) * 2 > 4096
    sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=8, seed=0)
    every = vllm_backend.generate(prompts, 2, sampling)
    assert [len(g) for g in every] == [2] * len(prompts)
    some = vllm_backend.generate(prompts[::-5], 2, sampling)
    assert [[x["text"] for x in g] for g in some] == [[x["text"] for x in g] for g in every[::-5]]


def test_cli_backend_vllm(tmp_path, capsys):
    from oarl.cli import main

    out = tmp_path / "cli"
    args = [
        "eval",
        "--model",
        "tiny",
        "--benchmarks",
        "arithmetic",
        "--limit",
        "8",
        "--n",
        "2",
        "--temperature",
        "0",
        "--max-new-tokens",
        "48",
        "--backend",
        "vllm",
        "--output-dir",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["backend"] == "vllm" and results["benchmarks"]["arithmetic"]["problems"] == 8
    assert "backend=vllm" in (out / "results.md").read_text() and "| arithmetic |" in capsys.readouterr().out


def test_a_tokenizer_vllm_would_misread_is_refused(tmp_path):
    # A tiny-model directory written before the tokenizer became a Qwen2Tokenizer: AutoTokenizer (vLLM's) has other ids.
    from test_tiny_model import old_format_tiny_dir

    path = old_format_tiny_dir(tmp_path / "old")
    with pytest.raises(ValueError, match="build_tokenizer\\(\\).save_pretrained"):
        run_eval(
            EvalConfig(
                model=str(path),
                benchmarks=["arithmetic"],
                limit=2,
                backend="vllm",
                output_dir=str(tmp_path / "out"),
                progress=False,
            )
        )


def test_trainer_colocated_vllm(tmp_path):
    """OARTrainer(use_vllm=True, vllm_mode="colocate"): 3 steps of OAR-G on vLLM's completions (tests/vllm_train.py)."""
    proc = subprocess.run(
        [sys.executable, str(TESTS / "vllm_train.py"), str(tmp_path)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "VLLM-TRAIN-OK steps=3" in proc.stdout


def test_oarl_train_use_vllm(tmp_path):
    """`oarl train --use_vllm`: generation and the held-out evaluation through the colocated engine."""
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "oarl.cli",
        "train",
        "--use_vllm",
        "true",
        "--max_steps",
        "2",
        "--eval_size",
        "8",
        "--eval_samples",
        "2",
        "--per_device_train_batch_size",
        "16",
        "--generation_batch_size",
        "16",
        "--num_generations",
        "4",
        "--max_completion_length",
        "40",
        "--output_dir",
        str(run),
    ]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["heldout_backend"] == "vllm"
    assert set(summary["heldout_before"]) == set(summary["heldout_after"]) == {"test", "hard"}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "loss" in r]
    assert len(logged) == 2 and all(
        "credit/weight_std" in r and "sampling/sampling_logp_difference/max" in r for r in logged
    )
