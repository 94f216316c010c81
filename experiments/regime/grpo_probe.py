"""Plain GRPO (or OAR via --credit) from a cached warm start; evaluates before and after.

    python experiments/regime/grpo_probe.py --sft-steps 300 --rl-steps 60 --lr 1e-4 [--credit none|gradient]

Prints avg@n at T=1 (SE over problems), greedy accuracy, the paired difference after-before with its
paired SE, and the wall times of RL and evaluation. Before-numbers are cached next to the warm start.
"""

import argparse
import json
import os
import time

import torch

from oarl.data.arithmetic import DEFAULT_REGIME, ArithmeticTask, as_dataset, problems, reward
from oarl.models.tiny import load_tiny
from oarl.models.warmstart import warm_start
from oarl.runs import heldout_gain

from common import evaluate, fmt

ap = argparse.ArgumentParser()
ap.add_argument("--sft-steps", type=int, default=DEFAULT_REGIME.sft_steps)
ap.add_argument("--sft-lr", type=float, default=DEFAULT_REGIME.sft_lr)
ap.add_argument("--flaw", type=float, default=None)
ap.add_argument("--max-value", type=int, default=None)
ap.add_argument("--sft-batch", type=int, default=None)
ap.add_argument("--ops", default=None)
ap.add_argument("--rl-steps", type=int, default=DEFAULT_REGIME.rl_steps)
ap.add_argument("--lr", type=float, default=DEFAULT_REGIME.rl_lr)
ap.add_argument("--G", type=int, default=DEFAULT_REGIME.num_generations)
ap.add_argument("--prompts", type=int, default=DEFAULT_REGIME.prompts_per_step)
ap.add_argument("--mcl", type=int, default=DEFAULT_REGIME.max_completion_length)
ap.add_argument("--loss", default=None, help="GRPOConfig.loss_type")
ap.add_argument("--scale", default=None, help="GRPOConfig.scale_rewards")
ap.add_argument("--credit", default="none")
ap.add_argument(
    "--gen-mult", type=int, default=1, help="generation batch = gen_mult x train batch (steps_per_generation)"
)
ap.add_argument("--iters", type=int, default=1, help="num_iterations")
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--eval-problems", type=int, default=DEFAULT_REGIME.eval_problems)
ap.add_argument("--n", type=int, default=DEFAULT_REGIME.eval_samples)
ap.add_argument("--hard", action="store_true")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--tag", default="")
a = ap.parse_args()
torch.set_num_threads(a.threads)

cfg = DEFAULT_REGIME.warmstart_config()
cfg.update(steps=a.sft_steps, learning_rate=a.sft_lr)
if a.ops:
    cfg["task"]["ops"] = a.ops
if a.flaw is not None:
    cfg["task"]["flaw_rate"] = a.flaw
if a.max_value:
    cfg["task"]["max_value"] = a.max_value
if a.sft_batch:
    cfg["batch_size"] = a.sft_batch
tk = dict(cfg["task"], steps=tuple(cfg["task"]["steps"]), hard_steps=tuple(cfg["task"]["hard_steps"]))
task = ArithmeticTask(**tk)
T0 = time.perf_counter()
path = warm_start(cfg)
t_ws = time.perf_counter() - T0
test = problems("test", a.eval_problems, seed=0, task=task)
hard = problems("hard", 128, seed=0, task=task) if a.hard else None
MCL_HARD = DEFAULT_REGIME.hard_max_new_tokens

# before (cached per warm start and eval size)
bfile = os.path.join(path, f"eval_before_{a.eval_problems}x{a.n}{'_hard' if a.hard else ''}.json")
if os.path.exists(bfile):
    before = json.load(open(bfile))
else:
    m0, tok0 = load_tiny(path)
    before = {"test": evaluate(m0, tok0, test, n=a.n, max_new_tokens=a.mcl)}
    if hard:
        before["hard"] = evaluate(m0, tok0, hard, n=a.n, max_new_tokens=MCL_HARD)
    json.dump(before, open(bfile, "w"))
print(f"[{a.tag}] warm start {path} ({t_ws:.1f}s)")
for k, v in before.items():
    print(f"[{a.tag}] before {k}: {fmt(v)}")

model, tok = load_tiny(path)
train = as_dataset(
    [
        {"prompt": r["prompt"], "answer": r["answer"]}
        for r in problems("train", DEFAULT_REGIME.n_rl_prompts, seed=1000 + a.seed, task=task)
    ]
)
common = dict(
    output_dir=f"/tmp/grpo_probe_{os.getpid()}",
    learning_rate=a.lr,
    max_steps=a.rl_steps,
    lr_scheduler_type="constant",
    num_generations=a.G,
    per_device_train_batch_size=a.prompts * a.G,
    generation_batch_size=a.gen_mult * a.prompts * a.G,
    num_iterations=a.iters,
    max_completion_length=a.mcl,
    temperature=1.0,
    beta=0.0,
    bf16=False,
    fp16=False,
    use_cpu=True,
    gradient_checkpointing=False,
    report_to="none",
    logging_steps=5,
    save_strategy="no",
    seed=a.seed,
    disable_tqdm=True,
    shuffle_dataset=True,
)
if a.loss:
    common["loss_type"] = a.loss
if a.scale:
    common["scale_rewards"] = a.scale
if a.credit == "none":
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(**common)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=train, processing_class=tok)
else:
    from oarl.trainer import OARConfig, OARTrainer

    args = OARConfig(credit=a.credit, **common)
    trainer = OARTrainer(model=model, reward_funcs=reward, args=args, train_dataset=train, processing_class=tok)
t0 = time.perf_counter()
trainer.train()
t_rl = time.perf_counter() - t0
hist = [h for h in trainer.state.log_history if "reward" in h]
print(f"[{a.tag}] rewards:", " ".join(f"{h['reward']:.2f}" for h in hist))
t1 = time.perf_counter()
after = {"test": evaluate(trainer.model, tok, test, n=a.n, max_new_tokens=a.mcl)}
if hard:
    after["hard"] = evaluate(trainer.model, tok, hard, n=a.n, max_new_tokens=MCL_HARD)
t_ev = time.perf_counter() - t1
for k, v in after.items():
    d, dse = heldout_gain(before[k], v)
    z = (v["avg"] - before[k]["avg"]) / before[k]["se"]
    print(f"[{a.tag}] after  {k}: {fmt(v)} | delta={d:+.3f} paired_se={dse:.3f} (delta/se_before={z:.1f})")
print(
    f"[{a.tag}] rl={t_rl:.1f}s ({t_rl / a.rl_steps:.2f}s/step) eval_after={t_ev:.1f}s total={time.perf_counter() - T0:.1f}s"
)
