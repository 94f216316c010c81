"""The embedded default job end to end, timed: warm start (cached), evaluation before, RL, evaluation after.

    OARL_CACHE=/tmp/fresh python experiments/regime/default_run.py [--credit none|gradient] [--threads 2]

Uses DEFAULT_REGIME exactly (oarl.data.arithmetic). Prints one table: avg@n at T=1 and greedy, before and
after, per split, with SE and n; the paired difference with its SE; and the wall time of every phase.
"""

import argparse
import json
import os
import time

T_START = time.perf_counter()

import torch  # noqa: E402

from oarl.data.arithmetic import DEFAULT_REGIME as R  # noqa: E402
from oarl.data.arithmetic import as_dataset, problems, reward  # noqa: E402
from oarl.models.tiny import load_tiny  # noqa: E402
from oarl.models.warmstart import is_cached, warm_start  # noqa: E402
from oarl.runs import heldout_gain  # noqa: E402

from common import evaluate, fmt  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--credit", default="none")
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--rl-steps", type=int, default=R.rl_steps)
ap.add_argument("--seed", type=int, default=R.seed)
ap.add_argument("--no-hard", action="store_true")
a = ap.parse_args()
torch.set_num_threads(a.threads)
times = {"imports": time.perf_counter() - T_START}

cfg = R.warmstart_config()
cached = is_cached(cfg)
t = time.perf_counter()
path = warm_start(cfg)
times["warm_start"] = time.perf_counter() - t
test = problems("test", R.eval_problems, seed=R.seed)
hard = None if a.no_hard else problems("hard", R.hard_eval_problems, seed=R.seed)


def run_eval(model, tok):
    out = {
        "test": evaluate(
            model, tok, test, n=R.eval_samples, temperature=R.temperature, max_new_tokens=R.max_completion_length
        )
    }
    if hard:
        out["hard"] = evaluate(
            model, tok, hard, n=R.eval_samples, temperature=R.temperature, max_new_tokens=R.hard_max_new_tokens
        )
    return out


# The warm start's own evaluation is cached next to it (it depends only on the warm start and the eval sizes).
t = time.perf_counter()
bfile = os.path.join(path, f"eval_{R.eval_problems}x{R.eval_samples}_{R.hard_eval_problems if hard else 0}.json")
if os.path.exists(bfile):
    before = json.load(open(bfile))
else:
    before = run_eval(*load_tiny(path))
    json.dump(before, open(bfile, "w"))
times["eval_before"] = time.perf_counter() - t

model, tok = load_tiny(path)
train = as_dataset(
    [{"prompt": r["prompt"], "answer": r["answer"]} for r in problems("train", R.n_rl_prompts, seed=R.seed + 1)]
)
kw = dict(
    R.grpo_kwargs(),
    max_steps=a.rl_steps,
    seed=a.seed,
    output_dir=f"/tmp/oarl_default_{os.getpid()}",
    lr_scheduler_type="constant",
    bf16=False,
    fp16=False,
    use_cpu=True,
    gradient_checkpointing=False,
    report_to="none",
    logging_steps=5,
    save_strategy="no",
    disable_tqdm=True,
)
if a.credit == "none":
    from trl import GRPOConfig as Cfg
    from trl import GRPOTrainer as Trainer
else:
    from oarl.trainer import OARConfig as Cfg
    from oarl.trainer import OARTrainer as Trainer

    kw["credit"] = a.credit
t = time.perf_counter()
trainer = Trainer(model=model, reward_funcs=reward, args=Cfg(**kw), train_dataset=train, processing_class=tok)
trainer.train()
times["rl"] = time.perf_counter() - t
t = time.perf_counter()
after = run_eval(trainer.model, tok)
times["eval_after"] = time.perf_counter() - t
times["total"] = time.perf_counter() - T_START

rewards = [round(h["reward"], 3) for h in trainer.state.log_history if "reward" in h]
overhead = [h["credit/overhead"] for h in trainer.state.log_history if "credit/overhead" in h]
print(f"credit={a.credit} warm start {'cached' if cached else 'trained'}: {path}")
print("train reward every 5 steps:", rewards)
if overhead:
    print(f"credit overhead (mean of logged): {sum(overhead) / len(overhead):.3f}")
for split in before:
    b, f = before[split], after[split]
    d, dse = heldout_gain(b, f)
    print(f"{split:5s} before {fmt(b)}")
    print(f"{split:5s} after  {fmt(f)}")
    print(f"{split:5s} delta avg@{f['n_samples']} = {d:+.3f} (paired SE {dse:.3f}; {d / b['se']:.1f} x SE_before)")
print("times (s):", {k: round(v, 1) for k, v in times.items()})
