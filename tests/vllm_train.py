"""Run by test_vllm.test_trainer_colocated_vllm in a process of its own (vLLM's colocated engine joins the process).

OARTrainer with use_vllm=True (colocate) on the cached tiny warm start and the arithmetic task: 3 steps of OAR-G on
vLLM-generated completions, every credit pass checked, then the engine's weights checked against the policy's.
"""

import os
import sys

import torch
from test_trainer import RecordingOARTrainer, reshaped_completions

from oarl import OARConfig
from oarl.data import arithmetic
from oarl.devices import ACTIVATION_CHECKPOINTING
from oarl.models.loading import load_model


def policy_logprobs(model, ids: list[int], n_prompt: int) -> torch.Tensor:
    """(T,) the float32 policy's log-probabilities of ids[n_prompt:], each given the ids before it."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    return torch.log_softmax(logits, -1)[torch.arange(n_prompt - 1, len(ids) - 1), torch.tensor(ids[n_prompt:])]


def engine_logprobs(trainer, ids: list[int], n_prompt: int) -> torch.Tensor:
    """(T,) the colocated engine's log-probabilities of the same tokens (vLLM's prompt log-probabilities), after
    generation_backend has synced the engine with the policy if a step changed it."""
    from vllm import SamplingParams

    llm = trainer.generation_backend().llm
    out = llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)[0]
    return torch.tensor([out.prompt_logprobs[i][ids[i]].logprob for i in range(n_prompt, len(ids))])


def check_sync(trainer, before: torch.Tensor, ids: list[int], n_prompt: int, what: str) -> float:
    """The engine scores a fixed completion as the current policy does, and not as the policy did before a change of
    its weights (``before``: its log-probabilities then); returns the engine's distance to ``before``. Tolerance: the
    engine runs the float32 policy in bfloat16 (vLLM's "auto"), 0.002-0.003 nats per token here; after the change of
    every weight below, an engine whose tied output projection kept its old packed copy is 0.14 away, a stale engine
    0.4-0.5."""
    engine = engine_logprobs(trainer, ids, n_prompt)
    error = (engine - policy_logprobs(trainer.model, ids, n_prompt)).abs().mean().item()
    stale = (engine - before).abs().mean().item()
    print(
        f"{what}: |engine - policy| = {error:.4f}, |engine - policy before| = {stale:.4f} (nats per token)", flush=True
    )
    assert error < 0.03, (what, error, stale)
    return stale


def main(out_dir: str) -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # a fixed cache: the share of RAM may not be free here
    model, tokenizer = load_model("tiny")
    rows = arithmetic.problems("train", 32, seed=0)
    dataset = arithmetic.as_dataset([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])
    args = OARConfig(
        output_dir=out_dir,
        per_device_train_batch_size=16,
        num_generations=8,
        max_completion_length=48,
        max_steps=3,
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        bf16=False,
        use_cpu=True,
        beta=0.0,
        temperature=1.0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        credit="gradient",
        use_vllm=True,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=0.2,
        **{ACTIVATION_CHECKPOINTING: False},
    )
    trainer = RecordingOARTrainer(
        model=model, reward_funcs=[arithmetic.reward], args=args, train_dataset=dataset, processing_class=tokenizer
    )
    # The fixed completion: the policy's greedy answer to another problem, which it finds unlikely here (its own
    # answer has log-probabilities near 0 that no change of the weights moves).
    prompt_ids, other_ids = (tokenizer(row["prompt"])["input_ids"] for row in rows[:2])
    with torch.no_grad():
        other = model.generate(torch.tensor([other_ids]), max_new_tokens=24, do_sample=False)[0]
    ids = prompt_ids + other[len(other_ids) :].tolist()
    initial = policy_logprobs(model, ids, len(prompt_ids))  # (T,) before training
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

    # Weight sync: after the last optimizer step, and after a change of every weight (the tied embedding included),
    # the engine scores a fixed completion as the current policy does (vLLM's in-place reload on its CPU backend).
    # (Log-probabilities, not a copy of the model: a deep copy of the model that accelerate prepared keeps calling the
    # original's forward.)
    check_sync(trainer, initial, ids, len(prompt_ids), "after 3 optimizer steps")
    before = policy_logprobs(trainer.model, ids, len(prompt_ids))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(p.std() * torch.randn(p.shape, generator=generator))  # noise the size of each weight's spread
    trainer.state.global_step += 1  # as if a step had changed the weights: generation_backend syncs them
    stale = check_sync(trainer, before, ids, len(prompt_ids), "after a change of every weight")
    assert stale > 0.2, stale  # the change is large enough for a stale engine to fail the check
    print(f"VLLM-TRAIN-OK steps={trainer.state.global_step - 1} reshaped={reshaped}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
