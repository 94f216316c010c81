"""Run by test_trainer.test_two_process_ddp under `accelerate launch --num_processes 2 --cpu`."""

import sys

from datasets import Dataset

from conftest import addition_prompts, addition_reward, load_tiny_lm
from oarl import OARConfig, OARTrainer

model_dir, out = sys.argv[1], sys.argv[2]
credit = sys.argv[3] if len(sys.argv) > 3 else "gradient"
# Rollout credit: token steps (the task has one sentence of reasoning); processes sample different numbers of
# prefixes, and the sampler and scorer must keep them in step (generation and reward gathering are collective).
extra = {"credit_span": "token", "credit_max_steps": 3, "credit_rollouts": 2} if credit == "rollout" else {}
model, tokenizer = load_tiny_lm(model_dir)
args = OARConfig(
    output_dir=out, per_device_train_batch_size=4, num_generations=4, max_completion_length=32, max_steps=2,
    logging_steps=1, save_strategy="no", report_to="none", seed=0, bf16=False, activation_checkpointing=False,
    use_cpu=True, beta=0.0, credit=credit, disable_tqdm=True, **extra,
)
trainer = OARTrainer(model=model, reward_funcs=[addition_reward], args=args,
                     train_dataset=Dataset.from_list(addition_prompts(16)), processing_class=tokenizer)
trainer.train()
last = trainer.last_credit
assert last is not None and last.credit.advantages.dim() == 2
# Each process reshaped its own slice: the local batch, not the global one.
assert last.credit.advantages.shape[0] == args.per_device_train_batch_size
if trainer.accelerator.is_main_process:
    print(f"DDP-OK world={trainer.accelerator.num_processes} steps={trainer.state.global_step} credit={credit}", flush=True)
