"""OARTrainer in two processes on the CPU under DDP, DeepSpeed ZeRO-2, ZeRO-3 (zero3_init_flag true and false) and
FSDP2, every estimator, with the ranks unbalanced on purpose (tests/distributed_train.py says how).

Each backend is one `accelerate launch` of tests/distributed_train.py (gloo; one trainer per credit setting, 2 steps
each, activation checkpointing on): ZeRO-2 and FSDP2 with the recipes' accelerate configs (recipes/accelerate),
ZeRO-3 with a DeepSpeed config that shards every parameter. The test asserts that the launch finishes within its
time limit (a deadlock prints the stacks of both processes and fails), that the parameters really were sharded as
the backend shards them, that the ranks really ran different numbers of forwards in the credit pass (one rank none
at the first step), and that every credit pass of every rank equals a single-process recomputation on the same
completions with the parameters the pass saw (OAR-G: the same noise; rollout credit: the same continuations and
rewards, replayed).

DeepSpeed runs on the CPU with `DS_ACCELERATOR=cpu`; its first use on a machine compiles one op with g++ (about
70 s, cached in ~/.cache/torch_extensions). accelerate does not select FSDP on a CPU: the FSDP2 launch goes through
a test shim (distributed_train.fsdp2_shim).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from oarl.credit import token_advantages
from oarl.models.tiny import load_tiny
from oarl.trl_fixes import check_supported, zero3_start_of_forward_hook_off

from conftest import addition_prompts, threads
from distributed_train import CASES, MAX_STEPS

SCRIPT = Path(__file__).with_name("distributed_train.py")
RECIPES = Path(__file__).parents[1] / "recipes" / "accelerate"
HANG_S = 240  # a process stuck this long prints its stacks and exits (faulthandler): a deadlock fails, not hangs
LAUNCH_TIMEOUT_S = 900
# backend -> how `accelerate launch` starts it: an accelerate config of recipes/accelerate, or a DeepSpeed config
# (ZeRO stage, zero3_init_flag, settings); mixed precision. bf16 wherever the backend offers it, except one fp32
# ZeRO-3 run (DDP's bf16 is autocast, tested in one process by test_trainer).
BACKENDS = {
    "ddp": dict(precision="no"),
    "zero2": dict(recipe="zero2.yaml", precision="bf16"),
    # DeepSpeed replaces torch.nn.functional.linear with its own under ZeRO-3 (memory_efficient_linear), whose bf16
    # results differ in the last bits from torch's: off here, so that the bf16 credit can be compared exactly with
    # one computed by torch's; the fp32 run keeps it (its backward is what OAR-G differentiates through).
    "zero3": dict(stage=3, init_flag=True, precision="bf16", zero={"memory_efficient_linear": False}),
    "zero3-noinit": dict(stage=3, init_flag=False, precision="no"),
    "fsdp2": dict(recipe="fsdp2.yaml", precision="bf16"),  # through distributed_train.fsdp2_shim
}
# ZeRO parameters below stage3_param_persistence_threshold are kept whole on every rank (DeepSpeed's default is 1e5
# elements: the whole test model); 0 shards every parameter, as ZeRO-3 shards a 7B model's.
DEEPSPEED_CONFIG = {
    "zero_optimization": {"stage3_param_persistence_threshold": 0},
    "bf16": {"enabled": "auto"},
    "gradient_clipping": "auto",
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
}


def launch(backend: str, lm_dir: Path, out: Path) -> subprocess.CompletedProcess:
    spec = BACKENDS[backend]
    bindir = os.path.dirname(sys.executable)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(sys.path),
        "DS_ACCELERATOR": "cpu",
        "OARL_HANG_TIMEOUT": str(HANG_S),
        "ACCELERATE_MIXED_PRECISION": spec["precision"],
    }
    script = [str(SCRIPT), str(lm_dir), str(out), backend, ",".join(CASES)]
    # On a machine without GPUs, `accelerate launch --cpu` starts several processes only through mpirun; the
    # torchrun-based launchers (multi-GPU, DeepSpeed, FSDP) do it anywhere, and the script's use_cpu=True selects gloo.
    cmd = [
        os.path.join(bindir, "accelerate"),
        "launch",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        spec["precision"],
        "--dynamo_backend",
        "no",
    ]
    if "recipe" in spec:
        cmd += ["--config_file", str(RECIPES / spec["recipe"])]
    elif "stage" in spec:
        config = copy.deepcopy(DEEPSPEED_CONFIG)
        config["zero_optimization"].update(stage=spec["stage"], **spec.get("zero", {}))
        (out / "ds.json").write_text(json.dumps(config))
        cmd += [
            "--use_deepspeed",
            "--deepspeed_config_file",
            str(out / "ds.json"),
            "--zero3_init_flag",
            str(spec["init_flag"]).lower(),
        ]
    else:
        cmd.append("--multi_gpu")
    cmd += script
    if not os.path.exists(cmd[0]):
        pytest.fail(f"no {cmd[0]}: the launcher comes with the test environment (make install)")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)


def replay(calls: list):
    """A sampler or scorer that returns what the recorded one returned, for the same arguments."""
    calls = list(calls)

    def call(*args):
        recorded_args, result = calls.pop(0)
        assert list(args) == list(recorded_args)
        return result

    return call


def recompute(record: dict, lm_dir: Path):
    model, tokenizer = load_tiny(lm_dir)
    if "parameters" in record:
        # the parameters and buffers (RoPE's inverse frequencies) as the pass had them: bf16 where the backend cast them
        missing, unexpected = model.load_state_dict(record["parameters"], strict=False, assign=True)
        assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)  # tied to the embeddings
        model.tie_weights()
        for name, buffer in record["buffers"].items():
            module, _, attr = name.rpartition(".")
            setattr(model.get_submodule(module), attr, buffer)
    else:
        model = None  # rollout credit: no model pass
    generator = None
    if record["generator_state"] is not None:
        generator = torch.Generator()
        generator.set_state(record["generator_state"])
    sampler = replay(record["sampled"]) if record["sampled"] else None
    scorer = replay(record["scored"]) if record["scored"] else None
    autocast = record["autocast"]
    with threads(1), torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=bool(autocast)):
        return token_advantages(
            model,
            tokenizer,
            *record["inputs"],
            record["config"],
            truncated=record["truncated"],
            generator=generator,
            sampler=sampler,
            scorer=scorer,
            max_completion_length=record["max_completion_length"],
        )


@pytest.mark.slow
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_two_processes_unbalanced(backend, tiny_lm_dir, tmp_path):
    spec = BACKENDS[backend]
    if backend.startswith("zero") and shutil.which("g++") is None:
        pytest.fail("DeepSpeed on the CPU compiles one op with g++ at its first use: install g++ (build-essential)")
    proc = launch(backend, tiny_lm_dir, tmp_path)
    log = proc.stdout[-4000:] + proc.stderr[-8000:]
    assert proc.returncode == 0, log
    for case in CASES:
        assert f"CASE-OK {backend} {case} steps={MAX_STEPS}" in proc.stdout, log
        ranks = [torch.load(tmp_path / case / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
        for run in ranks:
            assert run["world"] == 2 and run["steps"] == MAX_STEPS
            assert run["backend"] == "DistributedType." + {"ddp": "MULTI_CPU", "fsdp2": "FSDP"}.get(
                backend, "DEEPSPEED"
            )
            layout = run["layout"]
            sharded = {"zero3": "zero3_partitioned", "zero3-noinit": "zero3_partitioned", "fsdp2": "dtensors"}
            for key in ("zero3_partitioned", "dtensors"):  # every parameter sharded, or none
                assert layout[key] == (layout["parameters"] if sharded.get(backend) == key else 0), layout
            if backend == "fsdp2":
                assert layout["fsdp_modules"] >= 3, layout  # the root and each decoder block
            assert run["built_partitioned"] == (backend == "zero3")  # built under deepspeed.zero.Init
        if case == "none":
            assert all(not run["records"] for run in ranks)
            continue
        assert all(len(run["records"]) == MAX_STEPS for run in ranks)  # rank 0 has signal at each step

        if case == "rollout":  # no prefix to sample on rank 1 at the first step (the sampler pads it up to rank 0)
            prefixes = [len(run["records"][0]["sampled"][0][0][0]) for run in ranks]
            assert prefixes[1] == 0 < prefixes[0], prefixes
        else:  # the ranks ran different numbers of forwards: none on rank 1 at the first step
            forwards = [[rec["forwards"] for rec in run["records"]] for run in ranks]
            assert forwards[1][0] == 0 and forwards[0][0] > 0 and forwards[0][1] != forwards[1][1] > 0, forwards
            dtypes = {p.dtype for run in ranks for rec in run["records"] for p in rec["parameters"].values()}
            assert dtypes == {torch.bfloat16 if spec["precision"] == "bf16" else torch.float32}, dtypes
            linear = {rec["linear"].split(".")[0] for run in ranks for rec in run["records"]}
            assert linear == {"deepspeed" if backend == "zero3-noinit" else "torch"}, linear
        reshaped = 0
        for rank, run in enumerate(ranks):
            for step, record in enumerate(run["records"]):
                out = recompute(record, tiny_lm_dir)
                where = f"{backend} {case} rank {rank} step {step}: "
                for key in ("advantages", "importance"):
                    torch.testing.assert_close(
                        getattr(out, key), record[key], rtol=0, atol=0, msg=lambda m: where + key + ": " + m
                    )
                reshaped += int((out.weights[out.segments.reasoning] != 1).sum())
        assert reshaped > 0 or case == "rollout"  # credit was assigned, not the uniform fallback everywhere


def oarl_train(recipe: str, lm_dir: Path, tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file recipes/accelerate/RECIPE -m oarl.cli train` (the recipes' command) with 2
    CPU processes (fp32: --mixed_precision no), the tiny model and a JSONL of its sums, run folder tmp_path/run."""
    data = tmp_path / "sums.jsonl"
    data.write_text(
        "".join(json.dumps({"problem": p["prompt"][3:6], "answer": p["answer"]}) + "\n" for p in addition_prompts(32))
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "accelerate"),
        "launch",
        "--config_file",
        str(RECIPES / recipe),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "-m",
        "oarl.cli",
        "train",
        "--model",
        str(lm_dir),
        "--dataset",
        str(data),
        "--prompt_template",
        "Q: {problem}=?\nA: ",
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "8",
        "--generation_batch_size",
        "16",
        "--num_generations",
        "4",
        "--max_completion_length",
        "32",
        "--output_dir",
        str(tmp_path / "run"),
        *flags,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)


def failure(proc: subprocess.CompletedProcess) -> str:
    """What a failed launch printed: the one-line errors of `oarl train` (a process that exits with one prints no
    traceback, and torchrun stops the other, whose traceback fills the end of stderr), then the end of each stream."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith(("oarl train:", "oarl:"))]
    return "\n".join([*errors, "--- stdout:", proc.stdout[-3000:], "--- stderr:", proc.stderr[-6000:]])


@pytest.mark.slow
def test_oarl_train_with_the_zero3_recipe_config(tiny_lm_dir, tmp_path):
    """The recipes' command under ZeRO-3 with 2 CPU processes: it trains with credit, checkpoints and writes
    final_model (gathered from both processes)."""
    proc = oarl_train("zero3.yaml", tiny_lm_dir, tmp_path, "--eval_size", "0")
    assert proc.returncode == 0, failure(proc)
    run = tmp_path / "run"
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
    assert (run / "final_model" / "model.safetensors").stat().st_size > 1e5  # the whole model, not a ZeRO-3 shard
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("credit/weight_std", 0) > 0 for r in rows)  # the credit pass ran and reshaped


@pytest.mark.parametrize("recipe", ["zero3.yaml", "fsdp2.yaml"])
def test_oarl_train_refuses_heldout_evaluation_under_sharded_backends(recipe, tiny_lm_dir, tmp_path):
    """Held-out evaluation generates on one process with the model outside the engine: under ZeRO-3 or FSDP with
    several processes it is refused at once (each process exits with the fix), before a run folder is written.
    (On this CPU machine accelerate would run DDP instead of FSDP; the refusal reads the launch's settings.)"""
    proc = oarl_train(recipe, tiny_lm_dir, tmp_path, "--eval_size", "4")
    assert proc.returncode != 0
    assert (
        proc.stderr.count(
            "held-out evaluation does not run under DeepSpeed ZeRO-3 or FSDP with several processes: set --eval_size 0"
        )
        == 2
    ), proc.stderr[-6000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name,kind", [("zero2", "DEEPSPEED"), ("zero3", "DEEPSPEED"), ("fsdp2", "FSDP")])
def test_accelerate_recipes_load(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(RECIPES / f"{name}.yaml"))
    assert config.distributed_type.value == kind and config.mixed_precision == "bf16"
    if kind == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2
    else:
        assert config.deepspeed_config["zero_stage"] == int(name[-1])


def test_unsupported_backends_are_refused():
    from types import SimpleNamespace

    from accelerate.utils import FullyShardedDataParallelPlugin

    # FSDP1 (accelerate does not select FSDP on a CPU: its state, as the Trainer's accelerator would hold it)
    fsdp1 = SimpleNamespace(
        state=SimpleNamespace(deepspeed_plugin=None, fsdp_plugin=FullyShardedDataParallelPlugin(fsdp_version=1))
    )
    with pytest.raises(ValueError, match="supports FSDP2, not FSDP1: set fsdp_version: 2"):
        check_supported(fsdp1)
    # a DeepSpeed engine without ZeRO-3's start-of-forward hook (another DeepSpeed version): a clear error, no hang
    with pytest.raises(RuntimeError, match=r"DeepSpeed .*: ZeRO-3's start-of-forward hook .* was not found"):
        with zero3_start_of_forward_hook_off(torch.nn.Linear(2, 2)):
            pass
