"""`oarl train`: the default job end to end (shortened by flags), its run directory, resume, recipes."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import pytest
import torch
import yaml

from oarl.commands.train import parse_args
from oarl.jobs import JOBS
from oarl.runs import heldout_curve, resolved_config

from conftest import addition_prompts, needs_user_namespaces

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The default job, shortened: a short warm start (cached under OARL_CACHE), 3 RL steps, a small held-out eval.
SHORT = [
    "--sft_steps",
    "30",
    "--max_steps",
    "3",
    "--eval_size",
    "6",
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
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("oarl_cache")
    return {**os.environ, "OARL_CACHE": str(cache), "TOKENIZERS_PARALLELISM": "false"}


def oarl(args, env, **kw):
    return subprocess.run(
        [sys.executable, "-m", "oarl.cli", "train", *args], env=env, capture_output=True, text=True, timeout=900, **kw
    )


def test_default_job_writes_the_run_directory(tmp_path, env):
    from oarl.data.arithmetic import DEFAULT_REGIME
    from oarl.models import warmstart

    run = tmp_path / "run"
    short_warm_start = {**DEFAULT_REGIME.warmstart_config(), "steps": 30}
    warm_started = (Path(env["OARL_CACHE"]) / "warmstart" / warmstart.config_hash(short_warm_start)).is_dir()
    proc = oarl([*SHORT, "--output_dir", str(run), "--save_steps", "2"], env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"run directory: {run}" in proc.stdout
    assert "before" in proc.stdout and "after" in proc.stdout and "credit (gradient) overhead" in proc.stdout
    # Every phase shows a bar with its total: the warm start (said to run once), held-out evaluations, training.
    bars = proc.stderr.replace("\r", "\n")
    if not warm_started:
        assert "runs once" in bars and "warm start (once, then cached): 100%" in bars and "| 30/30" in bars
    for when in ("before", "after"):
        assert f"held-out test ({when}): 100%" in bars and f"held-out hard ({when}): 100%" in bars
    assert "oarl train: 100%" in bars and "| 3/3 [" in bars

    for name in ("config.yaml", "metrics.jsonl", "summary.json", "heldout_before.json"):
        assert (run / name).is_file(), name
    assert (run / "final_model" / "config.json").is_file()
    from test_tiny_model import assert_auto_tokenizer_ids

    assert_auto_tokenizer_ids(run / "final_model")  # what TRL and vLLM load has the ids the run trained with
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if "loss" in r]
    assert train_steps == [1, 2, 3]
    assert all("credit/overhead" in r and "credit/weight_std" in r for r in rows if "loss" in r)
    assert [r["step"] for r in rows if "heldout/test" in r] == [0, 3]

    plots = sorted((run / "plots").glob("*.png"))
    assert {p.name for p in plots} == {"reward.png", "heldout_accuracy.png", "credit_weights.png"}
    for p in plots:
        assert p.read_bytes()[:8] == PNG_MAGIC
        assert matplotlib.image.imread(p).ndim == 3

    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and set(summary["heldout_after"]) == {"test", "hard"}
    assert summary["heldout_curve"]["test"] == [
        [0, summary["heldout_before"]["test"]["avg"]],
        [3, summary["heldout_after"]["test"]["avg"]],
    ]

    # The resolved config re-loads into the same settings.
    train_args, config = parse_args(["--config", str(run / "config.yaml")])
    assert (train_args.sft_steps, config.max_steps, config.num_generations, config.credit) == (30, 3, 4, "gradient")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved_config(train_args, config, tuple(saved)) == saved


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, env, tiny_lm_dir):
    """(the arguments of a short run, the folder of that run trained without interruption)."""
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in addition_prompts(16)))
    args = [
        "--model",
        str(tiny_lm_dir),
        "--dataset",
        str(data),
        "--prompt_template",
        "{problem}",
        "--max_steps",
        "8",
        "--eval_size",
        "8",
        "--eval_samples",
        "2",
        "--learning_rate",
        "1e-4",
        "--per_device_train_batch_size",
        "8",
        "--generation_batch_size",
        "16",
        "--num_generations",
        "4",
        "--max_completion_length",
        "32",
        "--save_steps",
        "5",
    ]
    full = tmp_path / "full"
    proc = oarl([*args, "--output_dir", str(full)], env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return args, full


@pytest.mark.parametrize(
    "stop, status, said",
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated (SIGTERM)")],
    ids=["SIGINT", "SIGTERM"],
)
def test_ctrl_c_or_sigterm_then_resume_reproduces_the_uninterrupted_run(
    stop, status, said, tmp_path, env, uninterrupted
):
    """Ctrl-C (SIGINT) or a scheduler's SIGTERM stops the run at once with the command that continues it; the resumed
    run ends with the same parameters and metrics as a run that was never interrupted, down to the last row's
    train_loss (the whole run's mean). The checkpoint it resumes from (step 5) falls inside a generation batch
    (2 steps each) and in the second epoch (4 steps each), the two places where TRL's own resume diverged; OAR-G
    noise, sampling and generation random states all take part (the fixture model samples right and wrong sums, so
    every step learns)."""
    args, full = uninterrupted
    cut = tmp_path / "cut"

    # a shell that starts a job in the background (`make test &`, nohup) makes it ignore SIGINT, and Python then
    # installs no KeyboardInterrupt handler: give the run the default disposition, as a terminal's Ctrl-C finds it
    proc = subprocess.Popen(
        [sys.executable, "-m", "oarl.cli", "train", *args, "--output_dir", str(cut)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 600

    def checkpoint_written(path):  # trainer_state.json is written last, and whole (a Ctrl-C while it is being
        try:  # written leaves a checkpoint that resume rightly drops: test_resume_skips_a_half_written_checkpoint)
            return bool(json.loads(path.read_text()))
        except (OSError, ValueError):
            return False

    while not checkpoint_written(cut / "checkpoint-5" / "trainer_state.json"):
        assert proc.poll() is None, f"run ended before it could be interrupted: {proc.stderr.read()[-3000:]}"
        assert time.time() < deadline, "no checkpoint-5 within 10 minutes"
        time.sleep(0.05)
    proc.send_signal(stop)
    sent, sent_at = time.perf_counter(), time.time()
    stderr = proc.communicate(timeout=60)[1]
    stopped_after = time.perf_counter() - sent
    assert proc.returncode == status, stderr[-3000:]
    assert stderr.splitlines()[-1] == f"oarl train: {said}; continue with: oarl train --resume {cut}"
    assert "Traceback" not in stderr
    assert stopped_after < 5, f"took {stopped_after:.1f}s to stop"  # about 0.1 s on an idle machine
    first_session = json.loads((cut / "wall_time.json").read_text())
    assert first_session["saved_at"] >= sent_at  # the interrupted session is counted up to the Ctrl-C

    resumed = oarl(["--resume", str(cut)], env)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "missing keys" not in resumed.stderr  # the tied lm_head / embedding is restored as one tensor

    from safetensors.torch import load_file

    a, b = (load_file(d / "final_model" / "model.safetensors") for d in (full, cut))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "the resumed run ended elsewhere"
    rows = {d: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (full, cut)}
    train_rows = {d: [r for r in rows[d] if "loss" in r] for d in rows}
    assert [r["step"] for r in train_rows[cut]] == list(range(1, 9))  # none lost, none repeated
    assert any(r["loss"] != 0 for r in train_rows[full]) and any(0 < r.get("reward", 0) < 2 for r in train_rows[full])
    for x, y in zip(train_rows[full], train_rows[cut], strict=True):
        assert x.keys() == y.keys(), x["step"]  # generation batches at the same steps
        for key in ("loss", "reward", "credit/weight_std", "completions/mean_length"):
            if key in x:
                assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-9), (x["step"], key)
    [last_full], [last_cut] = ([r for r in rows[d] if "train_loss" in r] for d in (full, cut))
    assert last_full["train_loss"] == pytest.approx(last_cut["train_loss"], rel=1e-6, abs=1e-12)  # the whole run's mean
    summaries = [json.loads((d / "summary.json").read_text()) for d in (full, cut)]
    assert summaries[0]["heldout_after"] == summaries[1]["heldout_after"]
    assert summaries[1]["sessions"] == 2  # the wall and training times are the whole run's: both sessions
    train_seconds = json.loads((cut / "wall_time.json").read_text())["train_seconds"]
    assert len(train_seconds) == 2 and 0 < first_session["train_seconds"][0] <= train_seconds[0]
    assert summaries[1]["train_time_s"] == pytest.approx(sum(train_seconds))
    assert summaries[1]["wall_time_s"] > first_session["seconds"] + train_seconds[1]
    assert f"resuming {cut} from checkpoint-5 (step 5) to step 8" in resumed.stdout


def test_resume_of_a_finished_run(tmp_path, env, tiny_lm_dir):
    """`--resume` of a finished run trains and overwrites nothing (one line: complete, and how to train further);
    a --max_steps the run has reached is refused; a larger one continues from the last checkpoint; a run killed
    after its last checkpoint is finished without training (the same held-out numbers and weights). The training
    time in summary.json is every session's, as the wall time."""
    from safetensors.torch import load_file

    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in addition_prompts(16)))
    run = tmp_path / "run"
    proc = oarl(
        [
            "--model",
            str(tiny_lm_dir),
            "--dataset",
            str(data),
            "--prompt_template",
            "{problem}",
            "--max_steps",
            "2",
            "--eval_size",
            "4",
            "--eval_samples",
            "2",
            "--per_device_train_batch_size",
            "8",
            "--generation_batch_size",
            "8",
            "--num_generations",
            "4",
            "--max_completion_length",
            "24",
            "--save_steps",
            "1",
            "--output_dir",
            str(run),
        ],
        env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    def files():
        return {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}

    finished = files()
    again = oarl(["--resume", str(run)], env)
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stdout.splitlines() == [
        f"{run} is complete (2 steps; nothing trained or overwritten); to train "
        f"further: oarl train --resume {run} --max_steps N with N > 2 (in an "
        "`oarl compare` folder: the same compare command with --max_steps N, for "
        "every run)"
    ]
    assert files() == finished
    refused = oarl(["--resume", str(run), "--max_steps", "1"], env)
    assert refused.returncode == 2 and refused.stderr.splitlines()[-1] == (
        f"oarl train: error: --max_steps 1: {run} has already trained 2 steps; give more to train further "
        f"(oarl train --resume {run} --max_steps 3 or more)"
    )
    assert files() == finished

    more = oarl(["--resume", str(run), "--max_steps", "3"], env)
    assert more.returncode == 0, more.stderr[-4000:]
    assert f"resuming {run} from checkpoint-2 (step 2) to step 3" in more.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["sessions"] == 2 and (run / "checkpoint-3").is_dir()
    assert yaml.safe_load((run / "config.yaml").read_text())["max_steps"] == 3  # a later --resume goes on to 3
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert [r["step"] for r in rows if "heldout/test" in r] == [0, 2, 3]

    # killed after its last checkpoint, before the end: finished without training
    weights = load_file(run / "final_model" / "model.safetensors")
    (run / "summary.json").unlink()
    shutil.rmtree(run / "final_model")
    end = oarl(["--resume", str(run)], env)
    assert end.returncode == 0, end.stderr[-4000:]
    assert f"resuming {run}: checkpoint-3 reached step 3; finishing without training" in end.stdout
    assert "oarl train:" not in end.stderr  # no training bar
    ended = json.loads((run / "summary.json").read_text())
    assert ended["steps"] == 3 and ended["heldout_after"] == summary["heldout_after"]
    assert not (run / "checkpoint-4").exists()
    again = load_file(run / "final_model" / "model.safetensors")
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "heldout/test" in r] == [0, 2, 3]
    train_seconds = json.loads((run / "wall_time.json").read_text())["train_seconds"]
    assert len(train_seconds) == 3 and train_seconds[2] == 0 and all(t > 0 for t in train_seconds[:2])
    assert ended["train_time_s"] == pytest.approx(sum(train_seconds)) and ended["sessions"] == 3


def test_summary_counts_the_problems_of_each_split():
    from oarl.runs import format_summary

    def numbers(n):
        return {"avg": 0.5, "se": 0.01, "n_problems": n, "n_samples": 4}

    summary = {
        "heldout_before": {"test": numbers(256), "hard": numbers(128)},
        "steps": 3,
        "wall_time_s": 9.0,
        "credit": "gradient",
        "credit_overhead": 0.1,
        "run_dir": "runs/x",
        "heldout_after": {"test": numbers(256), "hard": numbers(128)},
    }
    assert "(avg@4 over 256 test, 128 hard problems, ± one standard error)" in format_summary(summary)
    summary["heldout_after"]["hard"] = numbers(256)
    assert "(avg@4 over 256 problems per split, ± one standard error)" in format_summary(summary)


@needs_user_namespaces
def test_a_full_disk_stops_with_one_line_and_the_run_resumes(tmp_path, env):
    """A real full disk: a 20 MiB tmpfs (mounted in a user namespace, no root needed), where a checkpoint of this run
    takes 12 MiB, so that the second one fails halfway (torch.save's writer says only "unexpected pos"). One line
    says "No space left on device" and how to continue; the half-written checkpoint is removed; once the disk has
    room, --resume finishes the run."""
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    run = disk / "run"
    train = [sys.executable, "-m", "oarl.cli", "train"]
    args = [
        "--sft_steps",
        "30",
        "--max_steps",
        "2",
        "--save_steps",
        "1",
        "--eval_size",
        "4",
        "--eval_samples",
        "1",
        "--per_device_train_batch_size",
        "8",
        "--generation_batch_size",
        "8",
        "--num_generations",
        "4",
        "--max_completion_length",
        "16",
        "--output_dir",
        str(run),
    ]
    script = (
        f"mount -t tmpfs -o size=20m tmpfs {disk} || exit 99; {shlex.join(train + args)} 2> {out}/full.err; "
        f"echo $? > {out}/full.rc; ls {run} > {out}/left; mount -o remount,size=200m {disk}; "
        f"{shlex.join(train + ['--resume', str(run)])} > /dev/null 2> {out}/resumed.err; echo $? > {out}/resumed.rc; "
        f"cp {run}/summary.json {out}/"
    )
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode != 99, proc.stderr
    err = (out / "full.err").read_text()
    assert (out / "full.rc").read_text().strip() == "1", err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert err.splitlines()[-1] == (
        f"oarl train: error: No space left on device while writing {run}: free space on its "
        "disk; a checkpoint of this run takes 12 MiB (--save_total_limit N keeps the last "
        f"N), then continue with: oarl train --resume {run}"
    )
    assert "checkpoint-1" in (out / "left").read_text().split() and "checkpoint-2" not in (out / "left").read_text()
    assert (out / "resumed.rc").read_text().strip() == "0", (out / "resumed.err").read_text()[-3000:]
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


def test_disk_full_reads_the_errno_from_a_real_failed_write(tmp_path):
    """/dev/full fails every write with ENOSPC: the error chain (one raised while handling another) says so."""
    from oarl.errors import disk_full

    try:
        try:
            with open("/dev/full", "w") as f:
                f.write("x")
        except OSError:
            raise RuntimeError("unexpected pos 1 vs 0")  # noqa: B904 (as torch.save's writer does when its file fails)
    except RuntimeError as exc:
        assert disk_full(exc, tmp_path) == "No space left on device"
    assert disk_full(RuntimeError("unexpected pos 1 vs 0"), tmp_path) is None  # tmp_path's disk has room
    assert disk_full(ValueError("x"), tmp_path) is None


def test_existing_run_is_not_overwritten(tmp_path, env):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("model: tiny\n")
    proc = oarl(["--output_dir", str(tmp_path / "run")], env)
    assert proc.returncode != 0 and "already holds a run" in proc.stderr


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_recipes_parse_into_oarconfig(recipe):
    # GPU-only settings are switched off here to parse on CPU; everything else comes from the recipe.
    train_args, config = parse_args(["--config", str(recipe), "--bf16", "false", "--use_cpu", "true"])
    raw = yaml.safe_load(recipe.read_text())
    assert train_args.model == raw["model"] and config.credit == raw.get("credit", "gradient")
    for key, value in raw.items():
        if key in ("bf16", "use_cpu", "report_to") or not hasattr(config, key):
            continue
        got = getattr(config, key)
        assert getattr(got, "value", got) == value, key


@pytest.mark.parametrize("job", JOBS, ids=[job.name for job in JOBS])
def test_each_recipe_equals_its_job(job):
    """recipes/<job.recipe> writes out every setting its job sets, and parsing it gives the run that `oarl train
    --model <job's model>` gives with no other flag: the same OARConfig and the same regime sizes."""
    recipe = RECIPES[0].parent / job.recipe
    raw = yaml.safe_load(recipe.read_text())
    assert not set(job.defaults()) - set(raw), "settings of the job missing from its recipe"
    cpu = ["--use_cpu", "true"]  # the SmolLM2 recipe is the CPU one; the job picks the GPU where there is one
    recipe_args, recipe_config = parse_args(["--config", str(recipe), *cpu])
    job_args, job_config = parse_args(["--model", job.model, *cpu])
    train_fields = set(dataclasses.asdict(job_args))
    as_run = lambda args, config: {k: v for k, v in resolved_config(args, config).items() if k not in train_fields}  # noqa: E731
    assert as_run(recipe_args, recipe_config) == as_run(job_args, job_config)
    regime = job.regime()
    for key, value in {
        "model": job.model,
        "dataset": job.dataset,
        "sft_steps": regime.sft_steps,
        "eval_size": regime.eval_problems,
        "eval_samples": regime.eval_samples,
    }.items():
        assert getattr(recipe_args, key) in (value, None), key  # None: the job's (the embedded recipe leaves the
        # warm start and held-out sizes to --task)


def test_compare_summary_by_hand():
    from oarl.commands.compare import summarize, to_markdown

    def run(before, after, se):
        return {
            "heldout_before": {"test": {"avg": before, "se": se}},
            "heldout_after": {"test": {"avg": after, "se": se}},
            "credit_overhead": 0.1,
            "wall_time_s": 10.0,
        }

    table = summarize({"none": [run(0.4, 0.5, 0.03), run(0.4, 0.7, 0.04)], "gradient": [run(0.4, 0.8, 0.03)]})
    none, grad = table["test"]["none"], table["test"]["gradient"]
    assert none["after"] == pytest.approx(0.6) and none["after_se"] == pytest.approx(0.025)  # sqrt(.03²+.04²)/2
    assert grad["vs_none"] == pytest.approx(0.2) and grad["vs_none_se"] == pytest.approx((0.03**2 + 0.025**2) ** 0.5)
    assert grad["gain"] == pytest.approx(0.4) and grad["gain_se"] == pytest.approx(0.03 * 2**0.5)
    assert "| gradient | 0.400 | 0.800 ± 0.030 | 0.800 | +0.400 ± 0.042 | +0.200 ± 0.039 |" in to_markdown(table, 2)
    assert "vs_none_seeds_se" not in grad  # one seed against two: no per-seed differences
    # per-seed differences 0.3 - 0.1 and 0.8 - 0.7 (0.2, 0.1): stdev 0.0707, over sqrt(2) seeds 0.05
    two = summarize(
        {"none": [run(0.4, 0.1, 0.03), run(0.4, 0.7, 0.03)], "gradient": [run(0.4, 0.3, 0.03), run(0.4, 0.8, 0.03)]}
    )
    assert two["test"]["gradient"]["vs_none_seeds_se"] == pytest.approx(0.05)
    assert "| +0.150 ± 0.030 (± 0.050) |" in to_markdown(two, 2)
    # steps to GRPO's final accuracy (0.55 here), from the mean curve over the steps every seed evaluated
    curve = lambda *points: {"heldout_curve": {"test": [list(p) for p in points]}}  # noqa: E731
    runs = {
        "none": [
            {**run(0.4, 0.5, 0.03), **curve((0, 0.4), (10, 0.5), (20, 0.5))},
            {**run(0.4, 0.6, 0.03), **curve((0, 0.4), (5, 0.9), (10, 0.4), (20, 0.6))},
        ],
        "gradient": [
            {**run(0.4, 0.7, 0.03), **curve((0, 0.4), (10, 0.7), (20, 0.7))},
            {**run(0.4, 0.5, 0.03), **curve((0, 0.4), (10, 0.5), (20, 0.5))},
        ],
        "entropy": [{**run(0.4, 0.5, 0.03), **curve((0, 0.4), (20, 0.5))}] * 2,
    }
    table = summarize(runs)["test"]
    assert table["none"]["steps_to_none_final"] == (20, 20)  # step 5: one seed only
    assert table["gradient"]["steps_to_none_final"] == (10, 20)  # (0.7 + 0.5) / 2 = 0.6 >= 0.55 at step 10
    assert table["entropy"]["steps_to_none_final"] == (None, 20)
    markdown = to_markdown({"test": table}, 2)
    assert "| 10 of 20 |" in markdown and "| not in 20 |" in markdown
    assert summarize({"none": [run(0.4, 0.5, 0.03)]})["test"]["none"]["steps_to_none_final"] is None  # no curve
    fell = {"none": [{**run(0.4, 0.3, 0.03), **curve((0, 0.4), (20, 0.3))}]}  # GRPO lost: reached at step 0, shown "-"
    assert summarize(fell)["test"]["none"]["steps_to_none_final"] is None


def test_heldout_gain_paired_by_hand():
    from oarl.commands.compare import summarize
    from oarl.runs import heldout_gain

    before = {"avg": 0.5, "se": 0.2, "per_problem": [0.0, 0.5, 1.0, 0.5]}
    after = {"avg": 0.75, "se": 0.14, "per_problem": [0.5, 0.5, 1.0, 1.0]}
    # differences 0.5, 0, 0, 0.5: mean 0.25, stdev sqrt(4 x 0.25² / 3), SE that / sqrt(4)
    gain, se = heldout_gain(before, after)
    assert gain == pytest.approx(0.25) and se == pytest.approx((0.25 / 3) ** 0.5 / 2)
    assert se < (0.2**2 + 0.14**2) ** 0.5  # the problems' spread cancels
    # without per-problem numbers, or on other problems: the unpaired SE
    assert heldout_gain({"avg": 0.5, "se": 0.03}, {"avg": 0.6, "se": 0.04})[1] == pytest.approx(0.05)
    assert heldout_gain(before, {**after, "per_problem": [1.0] * 3})[1] == pytest.approx((0.2**2 + 0.14**2) ** 0.5)
    runs = [
        {
            "heldout_before": {"test": before},
            "heldout_after": {"test": after},
            "credit_overhead": None,
            "wall_time_s": 1.0,
        }
    ] * 2
    assert summarize({"none": runs})["test"]["none"]["gain_se"] == pytest.approx(se / 2**0.5)
    # against GRPO: seed against seed, paired over problems (here: the 'after' above against the 'before' one)
    grpo = [{**runs[0], "heldout_after": {"test": before}}] * 2
    table = summarize({"none": grpo, "gradient": runs})["test"]
    assert table["gradient"]["vs_none"] == pytest.approx(0.25) and table["gradient"]["vs_none_se"] == pytest.approx(
        se / 2**0.5
    )
    assert "vs_none" not in table["none"]


def test_compare_interrupted_says_how_to_continue(tmp_path, monkeypatch):
    """Ctrl-C inside one of the runs: the message names the compare command's folder, not the one run."""
    import oarl.commands.train
    from oarl.commands.compare import main as compare_main
    from oarl.errors import Interrupted

    def interrupted(*args, **kwargs):
        raise Interrupted("interrupted; continue with: oarl train --resume <one run>")

    monkeypatch.setattr(oarl.commands.train, "run_train", interrupted)
    with pytest.raises(Interrupted, match=r"same command with --output_dir \S*cmp: finished runs are reused"):
        compare_main(["--credits", "none", "--output_dir", str(tmp_path / "cmp"), "--max_steps", "1"])


def test_compare_command(tmp_path, env):
    """Also the chain form of the task (the default job's test covers the tree form)."""
    out = tmp_path / "cmp"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "oarl.cli",
            "compare",
            "--credits",
            "none,entropy",
            "--output_dir",
            str(out),
            *SHORT,
            "--max_steps",
            "1",
            "--eval_size",
            "2",
            "--save_strategy",
            "no",
            "--task",
            "chain",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert {p.name for p in out.iterdir()} >= {"none-seed0", "entropy-seed0", "compare.md", "compare.json"}
    table = json.loads((out / "compare.json").read_text())["table"]
    assert set(table) == {"test", "hard"} and set(table["test"]) == {"none", "entropy"}
    assert "vs none" in (out / "compare.md").read_text()
    assert yaml.safe_load((out / "none-seed0" / "config.yaml").read_text())["task"] == "chain"
    # the second estimator's held-out accuracy before training is the first one's, not evaluated again
    assert "entropy-seed0: held-out accuracy before training taken from none-seed0" in proc.stdout
    before = [(out / f"{c}-seed0" / "heldout_before.json").read_text() for c in ("none", "entropy")]
    assert before[0] == before[1] and json.loads(before[0])["test"]["n_problems"] == 2
    assert heldout_curve(out / "entropy-seed0")["test"][0] == [0, json.loads(before[0])["test"]["avg"]]

    # called again on the same folder: the finished run is reused (not retrained), only the new seed trains
    summary = out / "none-seed0" / "summary.json"
    stamp = summary.stat().st_mtime_ns
    flags = [*SHORT, "--max_steps", "1", "--eval_size", "2", "--save_strategy", "no", "--task", "chain"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "oarl.cli",
            "compare",
            "--credits",
            "none",
            "--seeds",
            "0,1",
            "--output_dir",
            str(out),
            *flags,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert summary.stat().st_mtime_ns == stamp and "is complete" in proc.stdout
    assert json.loads((out / "compare.json").read_text())["seeds"] == [0, 1] and (out / "none-seed1").is_dir()
    # other settings on the same folder are refused before anything trains
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "oarl.cli",
            "compare",
            "--credits",
            "none",
            "--output_dir",
            str(out),
            *flags,
            "--learning_rate",
            "0.5",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 2 and "holds a run with other settings (learning_rate:" in proc.stderr, proc.stderr
    # ... and so is a new estimator with other settings: it would not join a like-for-like table
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "oarl.cli",
            "compare",
            "--credits",
            "gradient",
            "--output_dir",
            str(out),
            *flags,
            "--learning_rate",
            "0.5",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 2 and "-seed0 holds a run with other settings (learning_rate:" in proc.stderr
    assert not (out / "gradient-seed0").exists()
    from oarl.errors import UsageError

    with pytest.raises(UsageError, match=r"invalid choice: 'graph' \(choose from 'tree', 'chain'\)"):
        parse_args(["--task", "graph"])  # an unknown form is refused by the parser, with the choices


def test_compare_trains_further_with_a_larger_max_steps(tmp_path, env):
    """A larger --max_steps on a finished comparison continues each run from its checkpoint (not from step 0);
    a smaller one is refused, naming the setting."""
    out = tmp_path / "cmp"

    def compare(steps):  # None: no --max_steps, the job's default
        i = SHORT.index("--max_steps")
        steps_flags = [] if steps is None else ["--max_steps", str(steps)]
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "oarl.cli",
                "compare",
                "--credits",
                "none",
                "--output_dir",
                str(out),
                *SHORT[:i],
                *SHORT[i + 2 :],
                "--eval_size",
                "2",
                "--save_steps",
                "1",
                *steps_flags,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )

    assert compare(1).returncode == 0
    proc = compare(2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "from checkpoint-1 (step 1) to step 2" in proc.stdout, proc.stdout
    run = out / "none-seed0"
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
    assert yaml.safe_load((run / "config.yaml").read_text())["max_steps"] == 2
    assert json.loads((out / "compare.json").read_text())["runs"]["none"][0]["steps"] == 2
    proc = compare(1)
    assert proc.returncode == 2 and "(max_steps: 2 there, 1 now)" in proc.stderr, proc.stderr
    # leaving --max_steps out asks for the job's default (40 here): refused, not a silent extension
    proc = compare(None)
    assert proc.returncode == 2 and "(max_steps: 2 there, 40 now)" in proc.stderr, proc.stderr


def test_help_gives_the_jobs_defaults(capsys):
    """Flags whose default depends on the job say it in numbers (the regimes' own), with no "(default: None)"."""
    from oarl.data.arithmetic import REGIMES
    from oarl.data.word_problems import SMOLLM2_REGIME as smol

    tiny = REGIMES["tree"]
    with pytest.raises(SystemExit):
        parse_args(["--model", "smollm2-135m", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert (
        f"(default: the regime's, {tiny.sft_steps} for tiny, {REGIMES['chain'].sft_steps} with --task chain, "
        f"{smol.sft_steps} for smollm2-135m)"
    ) in text
    assert (
        tiny.eval_problems == smol.eval_problems
        and (f"(default: {smol.eval_problems} for the embedded job ({tiny.hard_eval_problems} hard ones)") in text
    )
    assert f"(default: {smol.eval_samples} on --dataset word-problems, else {tiny.eval_samples})" in text
    assert "held-out evaluation. (default: None)" not in text and "(default: 0.1)" in text
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # --credit_span's help gives its default ("Default: ...")
    assert "'sentence' for rollout." in text and "'sentence' for rollout. (default: None)" not in text


def test_resume_skips_a_half_written_checkpoint(tmp_path):
    from oarl.runs import last_complete_checkpoint

    for step, state in ((2, "{}"), (10, "{}"), (11, None), (12, ""), (13, '{"global_step": 1')):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if state is not None:  # "" and a cut JSON: interrupted while trainer_state.json was being written
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert not any((tmp_path / f"checkpoint-{step}").exists() for step in (11, 12, 13))
    assert last_complete_checkpoint(tmp_path / "nothing-here") is None


@pytest.mark.parametrize("task", ["tree", "chain"])
def test_task_form_reaches_training_and_heldout_problems(task, env, monkeypatch):
    from oarl.jobs import load_model_and_data

    monkeypatch.setenv("OARL_CACHE", env["OARL_CACHE"])  # the warm starts the subprocess tests cache
    train_args, config = parse_args([*SHORT, "--task", task, "--train_size", "20"])
    loaded = load_model_and_data(train_args, config)
    train, heldout = loaded.train, loaded.heldout
    prompts = list(train["prompt"]) + [r["problem"] for rows in heldout.values() for r in rows]
    assert len(prompts) == 20 + 6 + 6 and all(("(" in p) == (task == "tree") for p in prompts)


def test_train_on_a_jsonl_file_with_a_held_out_part(tmp_path, env, tiny_lm_dir):
    """`oarl train --dataset file.jsonl` detects the fields as `oarl eval` does (a story field kept before the
    question, a list gold), holds out a disjoint part for evaluation before and after, and shows a bar whose total
    is epochs x batches; the template names any field, for training and held-out prompts alike."""
    from oarl.data import load_train_dataset
    from oarl.jobs import TrainArgs, dataset_and_heldout

    data = tmp_path / "arith.jsonl"
    pairs = [divmod(i, 10) for i in random.Random(0).sample(range(100), 20)]  # 20 different sums
    data.write_text(
        "".join(
            json.dumps({"Body": "Add them.", "Question": f"Q: {a}+{b}=?\nA: ", "Answer": [str(a + b)]}) + "\n"
            for a, b in pairs
        )
    )
    args = [
        "--model",
        str(tiny_lm_dir),
        "--dataset",
        str(data),
        "--prompt_template",
        "{Question}",
        "--eval_fraction",
        "0.2",
        "--num_train_epochs",
        "1",
        "--per_device_train_batch_size",
        "8",
        "--num_generations",
        "4",
        "--generation_batch_size",
        "8",
        "--max_completion_length",
        "32",
        "--eval_samples",
        "2",
        "--save_strategy",
        "no",
        "--output_dir",
        str(tmp_path / "run"),
    ]
    proc = oarl(args, env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stderr.count("arith: problem = Body + Question, gold answer = Answer") == 1
    assert "| 8/8 [" in proc.stderr.replace("\r", "\n")  # 16 training prompts, 2 per step, one epoch
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["heldout_after"]["test"]["n_problems"] == 4
    assert summary["heldout_before"]["test"]["avg"] > 0  # the prompts are the ones the model knows
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "heldout/test" in r] == [0, 8] and "rewards/accuracy/mean" in rows[1]

    # the held-out part: disjoint from training, the same rows whatever the training seed
    def prompts(split, seed):
        return set(
            load_train_dataset(
                str(data), split=split, seed=seed, holdout=0.2, prompt_template="{Question}", conversational=False
            )["prompt"]
        )

    assert len(prompts("test", 0)) == 4 and prompts("test", 0) == prompts("test", 3)
    assert not prompts("test", 0) & prompts("train", 0) and len(prompts("train", 0)) == 16
    # or a file of its own, every row of it
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"question": f"{i}+1?", "answer": i + 1}) + "\n" for i in range(3)))
    train, heldout = dataset_and_heldout(
        TrainArgs(dataset=str(data), eval_dataset=str(other)), config=SimpleNamespace(seed=0), conversational=False
    )
    assert len(train) == 20 and [r["answer"] for r in heldout["test"]] == ["1", "2", "3"]


def test_no_empty_plots(tmp_path):
    """A run without held-out evaluation or credit pass gets no empty figure for them."""
    from oarl.report.plots import make_plots

    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "reward": 0.5, "reward_std": 0.1}) + "\n" for s in (1, 2))
    )
    assert [p.name for p in make_plots(tmp_path)] == ["reward.png"]
