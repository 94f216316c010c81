"""``oarl explain``: per-token credit heat map and estimator agreement (HTML + JSON).

    oarl explain [--model tiny] [--estimators gradient,perturbation,...] [--completions FILE.jsonl] [--png]

The model's own completions (sampled on arithmetic problems, and flawed warm-up demos whose first wrong result is the
known pivot) or a file of the user's, credited by each estimator on the same tokens; rollout credit is the reference
the others are scored against. The work is ``oarl.report.explain``; this module checks the flags (before any model
loads), loads the model and says what it wrote.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from oarl.checks import check_explain
from oarl.errors import UsageError

HELP = "per-token credit heat map and estimator agreement (HTML + JSON)"

DEFAULT_EXPLAIN_ESTIMATORS = "gradient,perturbation,entropy,grail,rollout"


def add_args(p: argparse.ArgumentParser) -> None:
    from oarl.credit.config import add_credit_flags  # lazy: the oarl.credit package loads torch (`oarl --help`)

    p.add_argument(
        "--model",
        default="tiny",
        help="'tiny' (the embedded warm-started model), a model directory, an `oarl train` run directory "
        "(its final_model/), 'smollm2-135m' or a hub name (default: %(default)s)",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--demos",
        action="store_true",
        help="only flawed warm-up demonstrations of the arithmetic task (their first wrong result is the "
        "known wrong step: hit@1 is reported); default: N sampled completions and N flawed demos",
    )
    source.add_argument(
        "--completions",
        metavar="FILE.jsonl",
        help="explain your own completions: JSONL rows with prompt and completion (optional: answer, the "
        "gold answer rollout credit scores against; error_span = [start, end] characters of a "
        "known wrong result; tool_spans = [[start, end], ...] characters a tool or an environment "
        "wrote: no credit, shown as tool spans)",
    )
    p.add_argument("--n", type=int, help="completions of each source (default: 32; with --completions: every row)")
    p.add_argument(
        "--estimators",
        help="comma-separated, among perturbation, gradient, entropy, grail, rollout; rollout credit is "
        f"the reference the others are scored against (default: {DEFAULT_EXPLAIN_ESTIMATORS}; "
        "without rollout for completions with tool_spans)",
    )
    p.add_argument(
        "--output",
        default="runs/explain",
        help="folder for heatmap.html, agreement.json, agreement.png, credit.jsonl (default: %(default)s)",
    )
    p.add_argument(
        "--png",
        type=int,
        nargs="?",
        const=4,
        metavar="N",
        help="also write heatmap.png, the heat map of the first N completions (default 4) rendered by "
        "headless Chromium (needs chromium, chromedriver and selenium: `pip install 'oarl[browser]'`)",
    )
    p.add_argument(
        "--task",
        choices=("tree", "chain"),
        default="tree",
        help="form of the arithmetic task of the demos, of the sampled problems and of --model tiny "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--split",
        choices=("train", "test", "hard"),
        default="test",
        help="arithmetic split of the sampled problems (default: %(default)s)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="sampling temperature of the completions and of rollout credit's continuations, 0 = greedy "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=96,
        help="completion length cap; continuations stop there too (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="problem / demo / sampling / noise seed (default: %(default)s)")
    p.add_argument(
        "--advantage", type=float, default=1.0, help="the nonzero advantage each completion gets (default: %(default)s)"
    )
    p.add_argument("--batch-size", type=int, default=8, help="completions per credit pass (default: %(default)s)")
    p.add_argument(
        "--device", help="device of the model and of rollout credit's sampling (default: cuda if available, else cpu)"
    )
    add_credit_flags(p)  # --outcome, --threshold, --beta, ...: the CreditConfig settings that have an explain flag


def run(args: argparse.Namespace) -> int:
    # lazy: torch, transformers and the estimators load when `oarl explain` runs, not for `oarl explain --help`
    import torch

    from oarl.credit import ESTIMATORS, CreditConfig
    from oarl.credit.config import SettingError, credit_overrides, flag_name
    from oarl.data.arithmetic import REGIMES
    from oarl.devices import default_device
    from oarl.jobs import EMBEDDED
    from oarl.models.loading import load_model
    from oarl.report import explain
    from oarl.report.agreement import format_table, summarize
    from oarl.report.sampling import generate_sampler, gold_scorer
    from oarl.runs import resolve_model_path

    def fail(message: str) -> int:
        print(f"oarl explain: {message}", file=sys.stderr)
        return 2

    estimators = [e.strip() for e in (args.estimators or DEFAULT_EXPLAIN_ESTIMATORS).split(",") if e.strip()]
    bad = [e for e in estimators if e not in ESTIMATORS or e == "none"]
    if not estimators or bad:
        return fail(
            f"--estimators must name some of {', '.join(e for e in ESTIMATORS if e != 'none')}; got {args.estimators!r}"
        )
    try:
        check_explain(args)
    except UsageError as exc:
        return fail(str(exc))
    overrides = credit_overrides(args)
    overrides["temperature"] = args.temperature if args.temperature > 0 else 1.0  # GRAIL: the sampling temperature
    try:
        for name in estimators:
            CreditConfig(estimator=name, **overrides)
    except SettingError as exc:
        return fail(f"{flag_name(exc.setting)} {exc.problem}")
    if args.png is not None:  # before any long work: say now what is missing
        from oarl.report.browser import BrowserUnavailable, find_browser  # lazy: selenium is optional

        try:
            find_browser()
        except BrowserUnavailable as exc:
            return fail(f"--png: {exc}")

    rows = None
    if args.completions:  # read before loading a model: bad input fails fast
        try:
            rows = explain.read_completions_jsonl(args.completions)[: args.n]
        except ValueError as exc:
            return fail(str(exc))
        for row in rows:
            row["source"] = "file"
        if "rollout" in estimators and any(row.get("tool_spans") for row in rows):
            if args.estimators is None:  # the default list: the estimators that take tool spans
                estimators.remove("rollout")
                print(
                    "oarl explain: completions with tool_spans: rollout credit left out (its continuations would "
                    "be sampled without the tool loop)",
                    file=sys.stderr,
                )
            else:
                return fail(
                    "rollout credit cannot explain completions with tool_spans (its continuations are "
                    "sampled without the tool loop): leave it out of --estimators"
                )

    device = args.device or default_device()
    try:
        if args.model == "tiny":  # the warm start of the chosen task form
            path = EMBEDDED.warm_start(args.task, use_cpu=torch.device(device).type == "cpu")
        else:
            path = resolve_model_path(args.model)
        model, tokenizer = load_model(path, device=device)
    except (ValueError, OSError) as exc:
        return fail(str(exc))

    started = time.perf_counter()
    if rows is None:
        rows = explain.explain_rows(
            model,
            tokenizer,
            args.n or 32,
            task=REGIMES[args.task].task,
            split=args.split,
            demos_only=args.demos,
            temperature=args.temperature,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
            batch_size=args.batch_size,
        )
    pivots = [tuple(r["error_span"]) if r.get("error_span") is not None else None for r in rows]
    sampler = generate_sampler(model, tokenizer, args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    scorer = gold_scorer(tokenizer, [None if r.get("answer") is None else str(r["answer"]) for r in rows])
    source = (
        "flawed demos"
        if args.demos
        else args.completions or f"sampled ({args.split} split, T={args.temperature}) and flawed demos"
    )
    torch.manual_seed(args.seed)
    explained = explain.explain_batch(
        model,
        tokenizer,
        [r["prompt"] for r in rows],
        [r["completion"] for r in rows],
        estimators,
        advantage=args.advantage,
        batch_size=args.batch_size,
        seed=args.seed,
        headings=explain.headings(rows),
        pivots=pivots,
        tool_spans=[r.get("tool_spans") for r in rows],
        title=f"oarl credit: {args.model} ({source})",
        sampler=sampler,
        scorer=scorer,
        max_completion_length=args.max_new_tokens,
        **overrides,
    )
    for row, data in zip(explained["completions"], rows):
        row.update(
            source=data["source"],
            error_span=data.get("error_span"),
            answer=data.get("answer"),
            tool_spans=data.get("tool_spans"),
        )
    report = summarize(explained, estimators)
    report.update(
        model=args.model,
        source=source,
        credit_config=overrides,
        wall_time_s=time.perf_counter() - started,
        stats=explained["stats"],
    )
    written = explain.write_report(Path(args.output), explained, report, f"oarl credit: {args.model}", png=args.png)
    print(format_table(report))
    no_answer = report["completions"] - report["with_answer"]
    if no_answer:
        print(f"{no_answer} completion(s) without a parsable answer: shown with uniform weights")
    print(f"wall time {report['wall_time_s']:.1f}s; wrote {', '.join(str(p) for p in written)}")
    return 0
