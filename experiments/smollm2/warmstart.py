"""Train (or find cached) the SmolLM2 warm start of a regime variant, then print its directory.

PYTHONPATH=src python experiments/smollm2/warmstart.py --sft-steps 50 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import torch

from oarl.data.word_problems import SMOLLM2_REGIME
from oarl.models.warmstart import warm_start

ap = argparse.ArgumentParser()
ap.add_argument("--sft-steps", type=int, default=SMOLLM2_REGIME.sft_steps)
ap.add_argument("--sft-lr", type=float, default=SMOLLM2_REGIME.sft_lr)
ap.add_argument("--sft-batch-size", type=int, default=SMOLLM2_REGIME.sft_batch_size)
ap.add_argument("--threads", type=int, default=1)
args = ap.parse_args()
torch.set_num_threads(args.threads)
regime = dataclasses.replace(
    SMOLLM2_REGIME, sft_steps=args.sft_steps, sft_lr=args.sft_lr, sft_batch_size=args.sft_batch_size
)
load0, t0 = os.getloadavg()[0], time.perf_counter()
path = warm_start(regime.warmstart_config(), log_every=5)
info = json.load(open(os.path.join(path, "warmstart.json")))
print(
    json.dumps(
        {
            "path": path,
            "train_seconds": info["train_seconds"],
            "wall_s": round(time.perf_counter() - t0, 1),
            "final_loss": info["final_loss"],
            "losses": info["loss_history"],
            "load": [round(load0, 1), round(os.getloadavg()[0], 1)],
        }
    )
)
