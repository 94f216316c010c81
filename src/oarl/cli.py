"""The ``oarl`` command: ``oarl train | eval | explain | compare``, dispatched to ``oarl.commands``.

Each subcommand is a module of ``oarl.commands`` with ``HELP`` (one line), ``add_args(parser)`` (its flags) and
``run(args) -> int`` (exit status), the shape of TRL's scripts; ``train`` and ``compare`` take their argv as it is
(TRL's parser owns their flags, with ``--config`` YAML). To add a command, write the module and add its name to
``COMMANDS`` or ``PASSTHROUGH``. Command modules import torch, transformers and TRL only when they run, so
``oarl --help`` and each command's ``--help`` are quick.

Errors a user can fix (a bad flag or value, a missing file or path, an unknown name) print one line, the
problem and the fix, and exit with status 2 (usage) or 1; ``--debug`` (anywhere on the command line) or
``OARL_DEBUG=1`` shows the traceback instead. Ctrl-C exits with status 130 and one line saying how to continue.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import signal
import sys

from oarl.commands import compare, explain, train
from oarl.commands import eval as eval_command
from oarl.errors import (
    Interrupted,
    RaisingParserMixin,
    Terminated,
    UsageError,
    raise_terminated,
    stopped,
    unknown_flags_hint,
)

# ------------------------------------------------------------------------------------------------ dispatch

# Commands whose flags another parser owns (TRL's, with --config YAML support): argv after the name goes to run(argv).
PASSTHROUGH = {"train": train, "compare": compare}
# Commands whose flags are argparse's: run(args) gets the parsed namespace.
COMMANDS = {"eval": eval_command, "explain": explain}


class Parser(RaisingParserMixin, argparse.ArgumentParser):
    """argparse whose errors raise UsageError (one line with a "did you mean"), not the usage and an exit."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``oarl`` parser; the flags of ``command`` only (the one on the command line): a command's flags may
    come from its library (``oarl explain``'s credit flags are ``CreditConfig``'s), which ``oarl --help`` and the
    other commands need not load."""
    parser = Parser(
        prog="oarl",
        description="RL with verifiable rewards and token-level credit (OAR).",
        epilog="--debug (anywhere) or OARL_DEBUG=1: show the traceback of an error.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in PASSTHROUGH.items():
        sub.add_parser(name, help=module.HELP, add_help=False)
    for name, module in COMMANDS.items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        if name == command:
            module.add_args(p)
        p.set_defaults(_run=module.run, _parser=p)
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
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _close_progress_bars() -> None:
    """Close the bars a failed phase left open, so that the message is the last line (an open bar would be drawn
    again after it, when the interpreter exits)."""
    if "tqdm" in sys.modules:
        from tqdm import tqdm  # lazy: only when a failed phase loaded it

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in PASSTHROUGH:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        return PASSTHROUGH[argv[0]].run(argv[1:])
    parser = build_parser(next((a for a in argv if a in COMMANDS), None))
    args, extra = parser.parse_known_args(argv)
    if extra:  # the subcommand's flags are what a misspelt one should be compared with
        raise UsageError(
            f"unknown argument {extra[0]}.{unknown_flags_hint(args._parser, extra)} (see `oarl {args.command} --help`)"
        )
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    return args._run(args)


if __name__ == "__main__":
    sys.exit(main())
