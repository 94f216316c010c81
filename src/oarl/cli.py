"""The ``oarl`` command: ``oarl train | eval | explain | compare``.

Each subcommand is a pair in ``COMMANDS``: ``add_<name>_args(subparser)`` declares its flags and
``run_<name>(args) -> int`` runs it (exit status). To add one, write the pair and add a line to COMMANDS.
Imports of heavy libraries (torch, transformers) happen inside the ``run_`` functions, so ``oarl --help``
is instant.

Errors a user can fix (a bad flag or value, a missing file or path, an unknown name) print one line, the
problem and the fix, and exit with status 2 (usage) or 1; ``--debug`` (anywhere on the command line) or
``OARL_DEBUG=1`` shows the traceback instead. Ctrl-C exits with status 130 and one line saying how to continue.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
from typing import Callable

from oarl.errors import (DiskFull, Interrupted, RaisingParserMixin, Terminated, UsageError, disk_full,
                         raise_terminated, stopped, unknown_flags_hint)

# ------------------------------------------------------------------------------------------------ eval


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_eval_args(p: argparse.ArgumentParser) -> None:
    from oarl.evaluate import DEFAULT_BENCHMARKS, EvalConfig

    d = EvalConfig()
    p.add_argument("--model", help="model directory, hub name, 'tiny', or an `oarl train` run directory (its final_model/)")
    p.add_argument("--benchmarks", default=",".join(DEFAULT_BENCHMARKS),
                   help="comma-separated: math500, gsm8k, aime24, amc23, minerva, arithmetic, arithmetic-hard, "
                        "a .jsonl path, or a hub dataset name (default: %(default)s)")
    p.add_argument("--data-dir", help="folder of benchmark files (default: $OARL_DATA_DIR, else ../shared/data/benchmarks)")
    p.add_argument("--limit", type=int, help="first N problems of each benchmark")
    p.add_argument("--n", type=int, default=d.n, help="samples per problem (default: %(default)s)")
    p.add_argument("--k", type=_int_list, default=None, help="pass@k values, comma-separated (default: 1 and n)")
    p.add_argument("--temperature", type=float, default=d.temperature, help="sampling temperature, 0 = greedy (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=d.top_p, help="nucleus sampling (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="completion length cap (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="sampling seed (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="problems per generate call, HF backend (default: %(default)s)")
    p.add_argument("--backend", choices=("auto", "hf", "vllm"), default=d.backend,
                   help="generation engine: hf (Hugging Face generate), vllm (a vLLM engine, on a GPU or with vLLM's CPU "
                        "build) or auto (vLLM if installed and a GPU is present, else HF)")
    p.add_argument("--dtype", help="model dtype (default float32 for HF; 'auto' = the checkpoint's)")
    p.add_argument("--device", help="device for the HF backend (default: cuda if available, else cpu)")
    p.add_argument("--prompt-template", help="prompt (plain) or user message (chat) made of the row's fields, in place "
                                             "of the default prompt and its answer instruction: {problem} (the "
                                             "detected problem) or any field, e.g. '{Body} {Question}'; LaTeX "
                                             "braces stay as they are, {{ and }} are literal braces")
    p.add_argument("--chat-template", choices=("auto", "on", "off"), default=d.chat_template,
                   help="use the tokenizer's chat template (auto: when it has one)")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable); completions are cut there")
    p.add_argument("--output-dir", help="report directory (default: <run>/eval-<hash> for a train run, else "
                                        "reports/eval-<model>-<hash>, the hash of the sampling settings)")
    p.add_argument("--overwrite", action="store_true", help="discard samples of an earlier run instead of resuming")
    p.add_argument("--problem-field", help="problem field of a .jsonl benchmark (default: auto-detected)")
    p.add_argument("--answer-field", help="gold answer field of a .jsonl benchmark (default: auto-detected)")
    p.add_argument("--strict", action="store_true", help="fail on malformed benchmark rows instead of skipping them")
    p.add_argument("--verify-timeout", type=float, default=d.verify_timeout_s, help="seconds per answer verification (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--compare", nargs="+", metavar="RUN",
                   help="instead of evaluating: one table with a column per report dir / results.json / train run")
    p.add_argument("--output", help="with --compare: also write the table to this file")


def run_eval(args: argparse.Namespace) -> int:
    from oarl.evaluate import EvalConfig, compare_markdown, run_eval as _run_eval

    if args.compare:
        table = compare_markdown(args.compare)
        print(table)
        if args.output:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write(table)
        return 0
    if not args.model:
        print("oarl eval: --model is required (or --compare RUN ...)", file=sys.stderr)
        return 2
    cfg = EvalConfig(
        model=args.model, benchmarks=[b.strip() for b in args.benchmarks.split(",") if b.strip()], data_dir=args.data_dir,
        limit=args.limit, n=args.n, k=args.k or sorted({1, args.n}), temperature=args.temperature, top_p=args.top_p,
        max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.batch_size, backend=args.backend,
        dtype=args.dtype, device=args.device, prompt_template=args.prompt_template, chat_template=args.chat_template,
        stop=args.stop, output_dir=args.output_dir, overwrite=args.overwrite, problem_field=args.problem_field,
        answer_field=args.answer_field, strict=args.strict, verify_timeout_s=args.verify_timeout, progress=not args.no_progress,
    )
    try:
        results = _run_eval(cfg)
    except KeyboardInterrupt as exc:  # samples so far are kept; the same command (same settings, same folder) resumes
        raise Interrupted(f"{stopped(exc)}; continue with: oarl {shlex.join(sys.argv[1:] or ['eval'])}") from exc
    except Exception as exc:  # a full disk: samples so far are kept, the same command continues
        if (why := disk_full(exc, cfg.output_dir or ".")) is None:
            raise
        raise DiskFull(f"{why} while writing the evaluation: free space on its disk, then continue with: "
                       f"oarl {shlex.join(sys.argv[1:] or ['eval'])}") from exc
    from oarl.evaluate import results_markdown

    print(results_markdown(results))
    print(f"wall time {results['wall_time_s']:.1f}s; outputs in {results['output_dir']}")
    return 0


# ------------------------------------------------------------------------------------------------ explain


DEFAULT_EXPLAIN_ESTIMATORS = "gradient,perturbation,entropy,grail,rollout"


def add_explain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny",
                   help="'tiny' (the embedded warm-started model), a model directory, an `oarl train` run directory "
                        "(its final_model/), 'smollm2-135m' or a hub name (default: %(default)s)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--demos", action="store_true",
                        help="only flawed warm-up demonstrations of the arithmetic task (their first wrong result is the "
                             "known wrong step: hit@1 is reported); default: N sampled completions and N flawed demos")
    source.add_argument("--completions", metavar="FILE.jsonl",
                        help="explain your own completions: JSONL rows with prompt and completion (optional: answer, the "
                             "gold answer rollout credit scores against; error_span = [start, end] characters of a "
                             "known wrong result; tool_spans = [[start, end], ...] characters a tool or an environment "
                             "wrote: no credit, shown as tool spans)")
    p.add_argument("--n", type=int, help="completions of each source (default: 32; with --completions: every row)")
    p.add_argument("--estimators",
                   help="comma-separated, among perturbation, gradient, entropy, grail, rollout; rollout credit is "
                        f"the reference the others are scored against (default: {DEFAULT_EXPLAIN_ESTIMATORS}; "
                        "without rollout for completions with tool_spans)")
    p.add_argument("--output", default="runs/explain",
                   help="folder for heatmap.html, agreement.json, agreement.png, credit.jsonl (default: %(default)s)")
    p.add_argument("--png", type=int, nargs="?", const=4, metavar="N",
                   help="also write heatmap.png, the heat map of the first N completions (default 4) rendered by "
                        "headless Chromium (needs chromium, chromedriver and selenium: `pip install 'oarl[browser]'`)")
    p.add_argument("--task", choices=("tree", "chain"), default="tree",
                   help="form of the arithmetic task of the demos, of the sampled problems and of --model tiny "
                        "(default: %(default)s)")
    p.add_argument("--split", choices=("train", "test", "hard"), default="test",
                   help="arithmetic split of the sampled problems (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="sampling temperature of the completions and of rollout credit's continuations, 0 = greedy "
                        "(default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=96,
                   help="completion length cap; continuations stop there too (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="problem / demo / sampling / noise seed (default: %(default)s)")
    p.add_argument("--advantage", type=float, default=1.0, help="the nonzero advantage each completion gets (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="completions per credit pass (default: %(default)s)")
    p.add_argument("--device", help="device of the model and of rollout credit's sampling (default: cuda if available, "
                                    "else cpu)")
    p.add_argument("--outcome", choices=("last", "answer_mean", "answer_joint"),
                   help="outcome distribution (default: last for perturbation, answer_mean otherwise)")
    p.add_argument("--rollouts", type=int, default=16,
                   help="rollout credit: continuations per step boundary; more than training's 4 by default, since "
                        "here it is the reference (default: %(default)s)")
    for flag, kind, text in (("--threshold", float, "Bi-Level threshold quantile q"), ("--beta", float, "Bi-Level boost"),
                             ("--floor", float, "Bi-Level weight floor"), ("--noise-std", float, "OAR-G embedding noise"),
                             ("--noise-samples", int, "OAR-G noise draws averaged"),
                             ("--chunk-size", int, "OAR-P variants per forward pass"),
                             ("--span", str, "reasoning steps: token, line or sentence (rollout's and the benchmark's)"),
                             ("--max-steps", int, "rollout credit: steps per completion, more are merged")):
        p.add_argument(flag, type=kind, help=f"{text} (default: CreditConfig's)")


def _explain_rows(args, regime, tokenizer, model, n: int) -> list[dict]:
    """The completions to explain: N sampled from the model and N flawed demos (or only demos with --demos),
    each with prompt, completion, answer (gold), source, and error_span for a flawed demo."""
    from oarl.data.arithmetic import demos, problems
    from oarl.evaluate import HFBackend, Sampling, build_prompt

    chat = getattr(tokenizer, "chat_template", None) is not None  # ask a chat model as `oarl train` does

    def prompt_of(row: dict) -> str:
        return build_prompt({"problem": f"{row['expression']} = ?"}, tokenizer) if chat else row["prompt"]

    rows = []
    if not args.demos:
        sampled = problems(args.split, n, seed=args.seed, task=regime.task)
        prompts = [prompt_of(r) for r in sampled]
        sampling = Sampling(temperature=args.temperature, top_p=1.0, max_new_tokens=args.max_new_tokens, seed=args.seed)
        generations = HFBackend(model, tokenizer, batch_size=args.batch_size, add_special_tokens=not chat).generate(
            prompts, 1, sampling)
        rows += [{"prompt": p, "completion": gen["text"], "answer": r["answer"], "source": "sampled"}
                 for r, p, (gen,) in zip(sampled, prompts, generations)]
    pool = 4 * n + 16
    while True:  # about a third of the demos are flawed
        flawed = [d for d in demos(pool, seed=args.seed, task=regime.task) if d["flawed"]][:n]
        if len(flawed) == n:
            break
        pool *= 2
    rows += [{"prompt": prompt_of(d), "completion": d["completion"], "answer": d["answer"], "source": "demo",
              "error_span": d["error_span"]} for d in flawed]
    return rows


def run_explain(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    import torch

    from oarl.checks import check_explain
    from oarl.credit import ESTIMATORS, CreditConfig
    from oarl.report.agreement import format_table, json_safe, summarize
    from oarl.report.heatmap import explain_batch, read_completions_jsonl, render_page

    def fail(message: str) -> int:
        print(f"oarl explain: {message}", file=sys.stderr)
        return 2

    estimators = [e.strip() for e in (args.estimators or DEFAULT_EXPLAIN_ESTIMATORS).split(",") if e.strip()]
    bad = [e for e in estimators if e not in ESTIMATORS or e == "none"]
    if not estimators or bad:
        return fail(f"--estimators must name some of {', '.join(e for e in ESTIMATORS if e != 'none')}; "
                    f"got {args.estimators!r}")
    try:
        check_explain(args)
    except UsageError as exc:
        return fail(str(exc))
    overrides = {k: getattr(args, k) for k in ("outcome", "threshold", "beta", "floor", "noise_std", "noise_samples",
                                                  "chunk_size", "rollouts", "span", "max_steps")
                 if getattr(args, k) is not None}
    overrides["temperature"] = args.temperature if args.temperature > 0 else 1.0  # GRAIL: the sampling temperature
    try:
        for name in estimators:
            CreditConfig(estimator=name, **overrides)
    except ValueError as exc:
        return fail(str(exc))
    if args.png is not None:  # before any long work: say now what is missing
        from oarl.report.browser import BrowserUnavailable, find_browser

        try:
            find_browser()
        except BrowserUnavailable as exc:
            return fail(f"--png: {exc}")

    rows = None
    if args.completions:  # read before loading a model: bad input fails fast
        try:
            rows = read_completions_jsonl(args.completions)[: args.n]
        except ValueError as exc:
            return fail(str(exc))
        for row in rows:
            row["source"] = "file"
        if "rollout" in estimators and any(row.get("tool_spans") for row in rows):
            if args.estimators is None:  # the default list: the estimators that take tool spans
                estimators.remove("rollout")
                print("oarl explain: completions with tool_spans: rollout credit left out (its continuations would "
                      "be sampled without the tool loop)", file=sys.stderr)
            else:
                return fail("rollout credit cannot explain completions with tool_spans (its continuations are "
                            "sampled without the tool loop): leave it out of --estimators")

    from oarl.data.arithmetic import REGIMES
    from oarl.devices import default_device
    from oarl.evaluate import resolve_model_path
    from oarl.models.loading import load_model

    regime = REGIMES[args.task]
    device = args.device or default_device()
    try:
        if args.model == "tiny":  # the warm start of the chosen task form
            from oarl.models.warmstart import warm_start

            path = warm_start(regime.warmstart_config(), use_cpu=torch.device(device).type == "cpu")
            model, tokenizer = load_model(path, device=device)
        else:
            model, tokenizer = load_model(resolve_model_path(args.model), device=device)
    except (ValueError, OSError) as exc:
        return fail(str(exc))

    started = time.perf_counter()
    if rows is None:
        rows = _explain_rows(args, regime, tokenizer, model, args.n or 32)

    from oarl.credit.answer import extract_answer
    from oarl.credit.segments import own_text
    from oarl.report.sampling import gold_scorer, generate_sampler

    headings = []
    for i, row in enumerate(rows):
        heading = f"{row['source']} {i}"
        if row.get("answer") is not None:
            stated = extract_answer(own_text(row["completion"], row.get("tool_spans") or []))
            verdict = "no answer" if stated is None else "correct" if stated.strip().rstrip(".") == str(row["answer"]) else "wrong"
            heading += f" - gold {row['answer']}, {verdict}"
        if row.get("error_span") is not None:
            heading += " - known wrong result outlined"
        headings.append(heading)
    pivots = [tuple(r["error_span"]) if r.get("error_span") is not None else None for r in rows]
    sampler = generate_sampler(model, tokenizer, args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    scorer = gold_scorer(tokenizer, [None if r.get("answer") is None else str(r["answer"]) for r in rows])
    source = "flawed demos" if args.demos else args.completions or f"sampled ({args.split} split, T={args.temperature}) and flawed demos"
    torch.manual_seed(args.seed)
    explained = explain_batch(
        model, tokenizer, [r["prompt"] for r in rows], [r["completion"] for r in rows], estimators,
        advantage=args.advantage, batch_size=args.batch_size, seed=args.seed, headings=headings, pivots=pivots,
        tool_spans=[r.get("tool_spans") for r in rows], title=f"oarl credit: {args.model} ({source})", sampler=sampler, scorer=scorer,
        max_completion_length=args.max_new_tokens, **overrides,
    )
    for row, data in zip(explained["completions"], rows):
        row.update(source=data["source"], error_span=data.get("error_span"), answer=data.get("answer"),
                   tool_spans=data.get("tool_spans"))
    report = summarize(explained, estimators)
    report.update(model=args.model, source=source, credit_config=overrides, wall_time_s=time.perf_counter() - started,
                  stats=explained["stats"])

    from oarl.report.plots import agreement_plot

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "heatmap.html").write_text(explained["html"], encoding="utf-8")
    with open(out / "agreement.json", "w", encoding="utf-8") as f:
        json.dump(json_safe(report), f, indent=2, allow_nan=False)
    with open(out / "credit.jsonl", "w", encoding="utf-8") as f:
        for row in explained["completions"]:
            f.write(json.dumps(json_safe(row), allow_nan=False) + "\n")
    agreement_plot(report, out / "agreement.png")
    written = [out / "heatmap.html", out / "agreement.json", out / "agreement.png", out / "credit.jsonl"]
    if args.png is not None:
        from oarl.report.browser import screenshot

        page = out / "heatmap_first.html"
        first = [section for own in explained["sections"][: args.png] for section in own]
        page.write_text(render_page(first, title=f"oarl credit: {args.model}"), encoding="utf-8")
        screenshot(page, out / "heatmap.png")
        page.unlink()
        written.append(out / "heatmap.png")
    print(format_table(report))
    no_answer = report["completions"] - report["with_answer"]
    if no_answer:
        print(f"{no_answer} completion(s) without a parsable answer: shown with uniform weights")
    print(f"wall time {report['wall_time_s']:.1f}s; wrote {', '.join(str(p) for p in written)}")
    return 0


# ------------------------------------------------------------------------------------------------ train


def run_train(argv: list[str]) -> int:
    """``oarl train [flags]``: the flags are TrainArgs + OARConfig (every GRPOConfig field), parsed the TRL way."""
    from oarl.train import main as train_main

    train_main(argv)
    return 0


def run_compare(argv: list[str]) -> int:
    """``oarl compare --credits none,gradient --seeds 0,1 [train flags]``: one run per (credit, seed), one table."""
    from oarl.compare import main as compare_main

    compare_main(argv)
    return 0


# ------------------------------------------------------------------------------------------------ dispatch

# Commands whose flags another parser owns (TRL's, with --config YAML support): argv after the name goes there.
PASSTHROUGH: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "train": (run_train, "train with OAR (default: the embedded tiny-model arithmetic job); --help lists all flags"),
    "compare": (run_compare, "train once per credit estimator (and seed) and compare held-out accuracy"),
}

# name -> (add_args(subparser), run(args) -> exit status, one-line help). train, explain, compare: to add.
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {
    "eval": (add_eval_args, run_eval, "evaluate a model on math benchmarks (pass@k, avg@n, maj@n)"),
    "explain": (add_explain_args, run_explain, "per-token credit heat map and estimator agreement (HTML + JSON)"),
}


class Parser(RaisingParserMixin, argparse.ArgumentParser):
    """argparse whose errors raise UsageError (one line with a "did you mean"), not the usage and an exit."""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="oarl", description="RL with verifiable rewards and token-level credit (OAR).",
                    epilog="--debug (anywhere) or OARL_DEBUG=1: show the traceback of an error.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in PASSTHROUGH.items():
        sub.add_parser(name, help=help_text, add_help=False)
    for name, (add_args, run, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(_run=run, _parser=p)
    return parser


# What a user can fix: printed as one line without a traceback (unless --debug). Anything else is a bug: traceback.
EXPECTED_ERRORS = (ValueError, OSError, ImportError)


def shared_cpu_defaults(environ=os.environ) -> None:
    """OpenMP's passive wait for the ``oarl`` command unless ``OMP_WAIT_POLICY`` is set: with torch's default,
    libgomp spins at every barrier, and beside one busy process a 2-thread step on 2 cores ran 2.0x slower than
    on one thread; with PASSIVE, 1.1x (``benchmarks/bench_threads.py``, docs/performance.md). Set
    ``OMP_WAIT_POLICY=ACTIVE`` on an otherwise idle machine for the spinning default. Must run before torch loads."""
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    command_line = argv is None  # this process is the `oarl` command (not a call from Python)
    if command_line:
        shared_cpu_defaults()
        signal.signal(signal.SIGTERM, raise_terminated)  # stop as on Ctrl-C: one line, the command that continues
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("OARL_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    command = argv[0] if argv and not argv[0].startswith("-") else None
    prefix = f"oarl {command}" if command in (*PASSTHROUGH, *COMMANDS) else "oarl"
    try:
        return _dispatch(argv)
    except (Interrupted, KeyboardInterrupt) as exc:
        _close_progress_bars()
        print(f"{prefix}: {exc if isinstance(exc, Interrupted) else stopped(exc)}", file=sys.stderr)
        status = 143 if isinstance(exc, Terminated) or isinstance(exc.__cause__, Terminated) else 130  # 128 + signal
        if command_line:
            _exit_now(status)
        return status
    except EXPECTED_ERRORS as exc:
        if debug:
            raise
        _close_progress_bars()
        print(f"{prefix}: error: {str(exc).strip() or type(exc).__name__}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1


def _exit_now(status: int) -> None:
    """Exit without the interpreter's teardown, which takes seconds once torch, transformers and TRL are imported
    (10 s measured on a loaded 2-core machine): the exit handlers still run (the math-verify worker is stopped,
    logs flushed); everything a run writes is already closed."""
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _close_progress_bars() -> None:
    """Close the bars a failed phase left open, so that the message is the last line (an open bar would be drawn
    again after it, when the interpreter exits)."""
    if "tqdm" in sys.modules:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in PASSTHROUGH:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        return PASSTHROUGH[argv[0]][0](argv[1:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # the subcommand's flags are what a misspelt one should be compared with
        raise UsageError(f"unknown argument {extra[0]}.{unknown_flags_hint(args._parser, extra)} "
                         f"(see `oarl {args.command} --help`)")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args._run(args)


if __name__ == "__main__":
    sys.exit(main())
