"""Sample completions of a SmolLM2 model on held-out word problems into a JSONL that `oarl explain
--completions` reads (prompt as the chat-formatted text, completion, gold answer).

    PYTHONPATH=src python experiments/smollm2/sample_for_explain.py --model DIR --n 8 --out FILE.jsonl
"""

from __future__ import annotations

import argparse
import json

import torch

from oarl.data.word_problems import INSTRUCTION, SMOLLM2_REGIME, problems
from oarl.generation import HFBackend, Sampling, build_prompt
from oarl.models.loading import load_model

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--n", type=int, default=8)
ap.add_argument("--temperature", type=float, default=SMOLLM2_REGIME.temperature)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--out", required=True)
args = ap.parse_args()
torch.set_num_threads(1)
model, tok = load_model(args.model)
rows = problems("test", args.n, seed=SMOLLM2_REGIME.seed, **SMOLLM2_REGIME.task_kwargs())
prompts = [build_prompt({"problem": r["question"]}, tok, "{problem}\n" + INSTRUCTION, chat=True) for r in rows]
sampling = Sampling(
    temperature=args.temperature, top_p=1.0, max_new_tokens=SMOLLM2_REGIME.max_completion_length, seed=args.seed
)
gens = HFBackend(model, tok, batch_size=args.n, add_special_tokens=False).generate(prompts, 1, sampling)
with open(args.out, "w") as f:
    for r, p, (g,) in zip(rows, prompts, gens):
        f.write(json.dumps({"prompt": p, "completion": g["text"], "answer": r["answer"]}) + "\n")
print(open(args.out).read())
