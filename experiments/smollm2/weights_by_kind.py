"""Mean Bi-Level weight by kind of reasoning token, per estimator, from `oarl explain`'s credit.jsonl:
digits of a written result (after '='), digits of operands, operators and '=', and words.

    python experiments/smollm2/weights_by_kind.py runs/explain-ws50/credit.jsonl
"""

import json
import sys
from collections import defaultdict


def kind(text: str, start: int, end: int) -> str:
    token = text[start:end]
    if token.strip().isdigit():
        before = text[:start].rstrip(" 0123456789")
        return "result digit" if before.endswith("=") else "operand digit"
    if token.strip() in {"+", "-", "="}:
        return "operator / ="
    return "word or punctuation"


sums = defaultdict(lambda: defaultdict(list))
for line in open(sys.argv[1]):
    row = json.loads(line)
    text, segments = row["completion"], row["segments"]  # one segment name per completion token
    for est, weights in row["weights"].items():
        for (a, b), segment, w in zip(row["spans"], segments, weights):
            if segment != "reasoning":
                continue
            sums[est][kind(text, a, b)].append(w)
for est, kinds in sums.items():
    print(est, {k: f"{sum(v) / len(v):.2f} (n={len(v)})" for k, v in sorted(kinds.items())})
