"""Run by test_vllm.test_trainer_colocated_vllm in a process of its own (vLLM's colocated engine joins the process).

OARTrainer with use_vllm=True (colocate) on the cached tiny warm start and the arithmetic task: 3 steps of OAR-G on
vLLM-generated completions, every credit pass checked, then the engine's weights checked against the policy's.
"""

import copy
import os
import sys

import torch

from oarl import OARConfig
from oarl.data import arithmetic
from oarl.models.loading import load_model
from oarl.trainer import ACTIVATION_CHECKPOINTING
from test_trainer import RecordingOARTrainer, reshaped_completions


def policy_logprobs(model, ids: list[int], n_prompt: int) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    return torch.log_softmax(logits, -1)[torch.arange(n_prompt - 1, len(ids) - 1), torch.tensor(ids[n_prompt:])]


def engine_logprobs(trainer, prompt_ids: list[int]) -> tuple[list[int], torch.Tensor]:
    """A completion sampled by the engine (synced with the policy by generation_backend), and its log-probabilities."""
    from vllm import SamplingParams

    llm = trainer.generation_backend().llm
    params = SamplingParams(temperature=1.0, seed=0, max_tokens=24, logprobs=0)
    out = llm.generate([{"prompt_token_ids": prompt_ids}], params, use_tqdm=False)[0].outputs[0]
    return list(out.token_ids), torch.tensor([lp[t].logprob for t, lp in zip(out.token_ids, out.logprobs)])


def main(out_dir: str) -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # a fixed cache: the share of RAM may not be free here
    model, tokenizer = load_model("tiny")
    rows = arithmetic.problems("train", 32, seed=0)
    dataset = arithmetic.as_dataset([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])
    args = OARConfig(
        output_dir=out_dir, per_device_train_batch_size=16, num_generations=8, max_completion_length=48, max_steps=3,
        learning_rate=1e-4, logging_steps=1, save_strategy="no", report_to="none", seed=0, bf16=False,
        use_cpu=True, beta=0.0, temperature=1.0, dataloader_num_workers=0, disable_tqdm=True, credit="gradient",
        use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.2, **{ACTIVATION_CHECKPOINTING: False},
    )
    trainer = RecordingOARTrainer(model=model, reward_funcs=[arithmetic.reward], args=args, train_dataset=dataset,
                                  processing_class=tokenizer)
    trainer.train()
    assert trainer.state.global_step == 3, trainer.state.global_step
    logs = [r for r in trainer.state.log_history if "loss" in r]
    # TRL compares vLLM's sampling log-probabilities with the policy's: small when the engine holds the policy's weights
    # (not zero: TRL's engine runs the float32 checkpoint in bfloat16, vLLM's "auto").
    assert all(r["sampling/sampling_logp_difference/mean"] < 0.02 for r in logs), logs

    # The same invariants as with HF generation, on every credit pass.
    assert len(trainer.credit_passes) == 3
    reshaped = reshaped_completions(trainer.credit_passes)
    assert reshaped >= 4, f"only {reshaped} completions with an answer and a non-zero advantage in 3 steps"

    # Weight sync: the engine holds the policy's weights, and follows when they change (vLLM's in-place reload on its
    # CPU backend).
    prompt_ids = tokenizer(rows[0]["prompt"])["input_ids"]
    ids, engine = engine_logprobs(trainer, prompt_ids)
    assert (engine - policy_logprobs(trainer.model, prompt_ids + ids, len(prompt_ids))).abs().mean() < 0.05
    old_policy = copy.deepcopy(trainer.model)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.mul_(1.5)
    trainer.state.global_step += 1  # as if a step had changed the weights: generation_backend syncs them
    ids, engine = engine_logprobs(trainer, prompt_ids)
    new_error = (engine - policy_logprobs(trainer.model, prompt_ids + ids, len(prompt_ids))).abs().mean()
    stale_error = (engine - policy_logprobs(old_policy, prompt_ids + ids, len(prompt_ids))).abs().mean()
    assert new_error < 0.05 and stale_error > 0.2, (new_error, stale_error)
    print(f"VLLM-TRAIN-OK steps={trainer.state.global_step - 1} reshaped={reshaped}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
