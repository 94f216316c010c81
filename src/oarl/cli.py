"""The ``oarl`` command: ``oarl train | eval | explain | compare``.

Each subcommand is a pair in ``COMMANDS``: ``add_<name>_args(subparser)`` declares its flags and
``run_<name>(args) -> int`` runs it (exit status). To add one, write the pair and add a line to COMMANDS.
Imports of heavy libraries (torch, transformers) happen inside the ``run_`` functions, so ``oarl --help``
is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

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
                   help="generation engine; auto = vLLM if installed and a GPU is present, else HF generate")
    p.add_argument("--dtype", help="model dtype (default float32 for HF; 'auto' = the checkpoint's)")
    p.add_argument("--device", help="device for the HF backend (default: cuda if available, else cpu)")
    p.add_argument("--prompt-template", help="prompt (plain) or user message (chat) with a literal {problem} placeholder")
    p.add_argument("--chat-template", choices=("auto", "on", "off"), default=d.chat_template,
                   help="use the tokenizer's chat template (auto: when it has one)")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable); completions are cut there")
    p.add_argument("--output-dir", help="report directory (default: <run>/eval for a train run, else reports/eval-<model>)")
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
    results = _run_eval(cfg)
    from oarl.evaluate import results_markdown

    print(results_markdown(results))
    print(f"wall time {results['wall_time_s']:.1f}s; outputs in {results['output_dir']}")
    return 0


# ------------------------------------------------------------------------------------------------ train


def run_train(argv: list[str]) -> int:
    """``oarl train [flags]``: the flags are TrainArgs + OARConfig (every GRPOConfig field), parsed the TRL way."""
    from oarl.train import main as train_main

    train_main(argv)
    return 0


# ------------------------------------------------------------------------------------------------ dispatch

# Commands whose flags another parser owns (TRL's, with --config YAML support): argv after the name goes there.
PASSTHROUGH: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "train": (run_train, "train with OAR (default: the embedded tiny-model arithmetic job); --help lists all flags"),
}

# name -> (add_args(subparser), run(args) -> exit status, one-line help). train, explain, compare: to add.
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {
    "eval": (add_eval_args, run_eval, "evaluate a model on math benchmarks (pass@k, avg@n, maj@n)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oarl", description="RL with verifiable rewards and token-level credit (OAR).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in PASSTHROUGH.items():
        sub.add_parser(name, help=help_text, add_help=False)
    for name, (add_args, run, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in PASSTHROUGH:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        return PASSTHROUGH[argv[0]][0](argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args._run(args)


if __name__ == "__main__":
    sys.exit(main())
