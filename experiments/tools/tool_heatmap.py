"""A tool-using run's credit heat map: the tiny model calls a calculator through TRL's tool loop (oarl.data.calculator),
OARTrainer trains it a few steps with OAR-G, and the completions of its last generation batch are explained by every
estimator that takes tool masks (OAR-G, OAR-P, entropy, GRAIL), with the tool's spans marked.

    .venv/bin/python experiments/tools/tool_heatmap.py [--steps 4] [--out docs]

Writes OUT/tool-heatmap.html (and OUT/tool-heatmap.png with headless Chromium, when installed) and prints the run's
metrics and, per estimator, how much importance and weight the tool tokens got (0 by construction: the check) and the
mean weight of the model's call tokens against its pair results. The page's credit is computed with the trained
policy at a fixed advantage of +1 (``explain_batch``); each heading gives the completion's advantage in the run.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402

from oarl import OARConfig, OARTrainer  # noqa: E402
from oarl.data.calculator import calc, tool_prompts, warmstart_config  # noqa: E402
from oarl.models.tiny import load_tiny  # noqa: E402
from oarl.models.warmstart import warm_start  # noqa: E402
from oarl.report.explain import explain_batch  # noqa: E402
from oarl.rewards import accuracy  # noqa: E402

ESTIMATORS = ("gradient", "perturbation", "entropy", "grail")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="RL steps (default: %(default)s)")
    parser.add_argument("--shown", type=int, default=6, help="completions on the page (default: %(default)s)")
    parser.add_argument("--out", default="docs", help="folder of tool-heatmap.html / .png (default: %(default)s)")
    args = parser.parse_args()

    started = time.perf_counter()
    model, tokenizer = load_tiny(warm_start(warmstart_config()))
    config = OARConfig(
        output_dir="runs/tool-heatmap",
        per_device_train_batch_size=16,
        num_generations=4,
        max_completion_length=64,
        max_steps=args.steps,
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        bf16=False,
        activation_checkpointing=False,
        use_cpu=True,
        beta=0.0,
        disable_tqdm=True,
        credit="gradient",
    )
    trainer = PromptKeepingTrainer(
        model=model,
        reward_funcs=[accuracy],
        args=config,
        processing_class=tokenizer,
        tools=[calc],
        train_dataset=Dataset.from_list(tool_prompts(64, seed=1)),
    )
    trainer.train()
    for row in trainer.state.log_history:
        if "loss" in row:
            print(
                {
                    k: round(row[k], 4)
                    for k in (
                        "step",
                        "reward",
                        "tools/call_frequency",
                        "credit/no_answer_frac",
                        "credit/weight_std",
                        "credit/time_s",
                    )
                    if k in row
                }
            )

    batch, (prompt_ids, prompt_mask) = trainer.last_credit, trainer.last_prompts
    tool = batch.credit.segments.tool
    prompts, completions, spans, headings = [], [], [], []
    for b in sorted(range(len(batch.advantages)), key=lambda b: -abs(float(batch.advantages[b]))):
        if not tool[b].any():
            continue
        ids = batch.completion_ids[b][batch.completion_mask[b].bool()].tolist()
        pieces = [tokenizer.decode([t], skip_special_tokens=False) for t in ids]
        starts = [sum(len(p) for p in pieces[:i]) for i in range(len(pieces))]
        spans.append([[starts[i], starts[i] + len(pieces[i])] for i, w in enumerate(tool[b][: len(ids)].tolist()) if w])
        completions.append("".join(pieces))
        prompts.append(tokenizer.decode(prompt_ids[b][prompt_mask[b].bool()], skip_special_tokens=False))
        headings.append(f"completion {b} of the last generation batch: advantage {float(batch.advantages[b]):+.2f}")
        if len(completions) == args.shown:
            break
    explained = explain_batch(
        trainer.model,
        tokenizer,
        prompts,
        completions,
        ESTIMATORS,
        tool_spans=spans,
        headings=headings,
        title=f"oarl credit with a calculator tool: {args.steps} OAR-G steps of the tiny model",
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    page = out / "tool-heatmap.html"
    page.write_text(explained["html"], encoding="utf-8")
    for name in ESTIMATORS:  # tool tokens; the model's call "[calc expr=...]" against the pair results before it
        on_tool, on_call, on_steps = [], [], []
        for row in explained["completions"]:
            call = (row["completion"].find("[calc"), row["completion"].find("]") + 1)
            for (start, _), imp, w, seg in zip(
                row["spans"], row["importance"][name], row["weights"][name], row["segments"]
            ):
                if seg == "tool":
                    on_tool.append((imp, w))
                elif seg == "reasoning":
                    (on_call if call[0] <= start < call[1] else on_steps).append(w)
        print(
            f"{name:12s} tool tokens {len(on_tool)}: importance max {max(i for i, _ in on_tool):.3g}, weight max "
            f"{max(w for _, w in on_tool):.3g}; mean weight on the call {sum(on_call) / len(on_call):.2f} "
            f"({len(on_call)} tokens), on the pair results {sum(on_steps) / len(on_steps):.2f} ({len(on_steps)}); "
            f"time {explained['time_s'][name]:.2f}s"
        )
    try:
        from oarl.report.browser import BrowserUnavailable, screenshot

        screenshot(page, out / "tool-heatmap.png")
        print(f"wrote {page} and {out / 'tool-heatmap.png'}")
    except BrowserUnavailable as exc:
        print(f"wrote {page}; no PNG: {exc}")
    print(f"wall time {time.perf_counter() - started:.1f}s")


class PromptKeepingTrainer(OARTrainer):
    """Keeps the prompt ids of the last generation batch (the credit pass keeps the completions)."""

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        self.last_prompts = output["prompt_ids"], output["prompt_mask"]
        return output


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
