"""Qwen2.5-Math-1.5B completions from a public write-up, saved as JSONL for ``corpus.py`` (issue 24).

The completions are real model text in the formats of the R1-Zero recipes (``... </think> <answer> ...
</answer>``, the prompt having opened ``<think>``) and of plain chat (``\\boxed{}``), with their GSM8K gold
answers, as printed by the evaluation logs of the public repository damek/assignment5-alignment (Stanford
CS336 assignment 5: Qwen2.5-Math-1.5B zero-shot and after GRPO, vLLM sampling), files
``cs336_alignment/outputs/{math_baseline_format_0,math_baseline_format_1_answer_0,grpo_prompt_ablation}.txt``
at commit 7438429. Only each block's generation text and its ``GT Answer`` are kept.

    python experiments/answers/public_samples.py PATH_TO_A_CHECKOUT_OF_THAT_REPOSITORY
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

OUT = Path(__file__).with_name("qwen_math_samples.jsonl")
FILES = ("math_baseline_format_1_answer_0", "math_baseline_format_0", "grpo_prompt_ablation")
BLOCK = re.compile(r"Generation:(.*?)\nMetrics:\s*\{.*?\}\s*\nGT Answer:\s*(.*?)\n", re.S)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkout", type=Path)
    args = ap.parse_args()
    with OUT.open("w") as out:
        for name in FILES:
            text = (args.checkout / "cs336_alignment" / "outputs" / f"{name}.txt").read_text()
            for i, (completion, gold) in enumerate(BLOCK.findall(text)):
                row = {"source": f"{name}#{i}", "gold": gold.strip(), "completion": completion.removeprefix(" ")}
                out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
