"""Warm start with a given config, then evaluate it: avg@n at T=1 and greedy on test and hard.

python experiments/regime/sft_probe.py --steps 300 --lr 2e-3 [--ops +-*] [--flaw 0.3] [--hidden 128 ...]
"""

import argparse
import json
import time

import torch

from oarl.data.arithmetic import DEFAULT_REGIME, REGIMES, ArithmeticTask, problems
from oarl.models.tiny import load_tiny, num_parameters
from oarl.models.warmstart import warm_start

from common import evaluate, fmt

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=DEFAULT_REGIME.sft_steps)
ap.add_argument("--batch", type=int, default=DEFAULT_REGIME.sft_batch_size)
ap.add_argument("--lr", type=float, default=DEFAULT_REGIME.sft_lr)
ap.add_argument("--ops", default=None)
ap.add_argument("--flaw", type=float, default=None)
ap.add_argument("--max-value", type=int, default=None)
ap.add_argument("--task-steps", default=None, help="e.g. 2,3")
ap.add_argument("--form", choices=sorted(REGIMES), default="tree", help="task form; its regime is the base config")
ap.add_argument("--hidden", type=int, default=None)
ap.add_argument("--layers", type=int, default=None)
ap.add_argument("--inter", type=int, default=None)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--eval-problems", type=int, default=256)
ap.add_argument("--n", type=int, default=4)
ap.add_argument("--no-hard", action="store_true")
a = ap.parse_args()
torch.set_num_threads(a.threads)

cfg = REGIMES[a.form].warmstart_config()
cfg.update(steps=a.steps, batch_size=a.batch, learning_rate=a.lr)
if a.ops:
    cfg["task"]["ops"] = a.ops
if a.flaw is not None:
    cfg["task"]["flaw_rate"] = a.flaw
if a.max_value:
    cfg["task"]["max_value"] = a.max_value
if a.task_steps:
    lo, hi = map(int, a.task_steps.split(","))
    cfg["task"]["steps"] = (lo, hi)
    cfg["task"]["hard_steps"] = (hi + 1, hi + 2)
for k, v in (("hidden_size", a.hidden), ("num_layers", a.layers), ("intermediate_size", a.inter)):
    if v:
        cfg["model"][k] = v
t0 = time.perf_counter()
path = warm_start(cfg)
info = json.load(open(path + "/warmstart.json"))
model, tok = load_tiny(path)
print(
    f"warm start {path} params={num_parameters(model)} train={info['train_seconds']:.1f}s (wall {time.perf_counter() - t0:.1f}s) final_loss={info['final_loss']}"
)
tk = dict(cfg["task"], steps=tuple(cfg["task"]["steps"]), hard_steps=tuple(cfg["task"]["hard_steps"]))
task = ArithmeticTask(**tk)
test = problems("test", a.eval_problems, seed=0, task=task)
r = evaluate(model, tok, test, n=a.n, max_new_tokens=DEFAULT_REGIME.max_completion_length)
print("test", fmt(r), "|", repr(r["example"]))
if not a.no_hard:
    hard = problems("hard", 128, seed=0, task=task)
    r = evaluate(model, tok, hard, n=a.n, max_new_tokens=DEFAULT_REGIME.hard_max_new_tokens)
    print("hard", fmt(r), "|", repr(r["example"]))
