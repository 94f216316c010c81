"""Errors a user can fix, and the helpers that keep a failed command from leaving anything behind.

``oarl`` prints an expected error (bad flag or value, bad file, missing path, unknown name) as one or two
lines without a traceback; ``--debug`` or ``OARL_DEBUG=1`` shows it (see ``oarl.cli``).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import errno
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path


class Terminated(KeyboardInterrupt):
    """SIGTERM (what a scheduler or ``kill`` sends first), raised in the main thread where Ctrl-C raises
    KeyboardInterrupt, so that a run stops as it does on Ctrl-C: one line, the command that continues it, a
    resumable run (``oarl.cli.main`` installs the handler for the ``oarl`` command; exit status 143)."""


def raise_terminated(signum, frame) -> None:
    """The SIGTERM handler: raise ``Terminated`` in the main thread."""
    raise Terminated()


def stopped(exc: BaseException) -> str:
    """How a command was stopped, the first words of its last line: "terminated (SIGTERM)" or "interrupted"."""
    return "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"


class UsageError(ValueError):
    """A command line that cannot run as given (unknown flag, invalid value): the message says what to change."""


class Interrupted(Exception):
    """Ctrl-C: the message is the one line to print (what was kept, and the command that continues)."""


class DiskFull(OSError):
    """A write failed for want of space (``disk_full``): the message says where, and how to continue."""


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # no space left, quota exceeded, over ``ulimit -f``
# torch.save's C++ writer reports a failed write with these (and no errno): "basic_ios::clear: iostream error", then
# "unexpected pos N vs M" when it closes the file
TORCH_WRITE_FAILURES = ("iostream error", "unexpected pos", "file write failed")
LOW_SPACE_BYTES = 64 << 20  # a failed torch.save counts as a full disk when its folder has less than this free


def disk_full(exc: BaseException, folder: str | os.PathLike) -> str | None:
    """Why a write failed for want of space, if ``exc`` (or one it was raised from or while handling) says so: an
    OSError ENOSPC, EDQUOT or EFBIG (its ``strerror``, e.g. "No space left on device"), or torch.save's writer failing
    while ``folder``'s disk has less than LOW_SPACE_BYTES free ("No space left on device"); None otherwise."""
    chain: list[BaseException] = []
    while exc is not None and not any(exc is e for e in chain):
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for e in chain:
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return os.strerror(e.errno)
    if any(isinstance(e, RuntimeError) and any(m in str(e) for m in TORCH_WRITE_FAILURES) for e in chain):
        try:
            if shutil.disk_usage(folder).free < LOW_SPACE_BYTES:
                return os.strerror(errno.ENOSPC)
        except OSError:
            pass
    return None


def did_you_mean(name: str, choices: Iterable[str], prefix: str = "") -> str:
    """``" Did you mean --learning_rate?"`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" Did you mean {prefix}{close[0]}?" if close else ""


@contextlib.contextmanager
def removed_on_failure(path: Path, keep: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """Create the folder ``path`` (and its missing parents); if the block fails, remove what was created, unless
    ``keep()`` says it holds work worth keeping (samples or checkpoints to resume from)."""
    path = Path(path)
    top = path  # the outermost folder this creates
    while not top.parent.exists():
        top = top.parent
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if created and not keep():
            shutil.rmtree(top, ignore_errors=True)
        raise


class RaisingParserMixin:
    """For argparse parsers: an error raises UsageError with argparse's message, a "did you mean" for an invalid
    choice or an unknown flag and where to find the flags, instead of printing the whole usage and exiting."""

    def error(self, message):  # argparse.ArgumentParser.error
        raise UsageError(explain(self, message))


def explain(parser: argparse.ArgumentParser, message: str) -> str:
    """argparse's message plus a suggestion: the closest choice of an invalid value, the closest flag of an
    unrecognized one."""
    hint = ""
    choice = re.match(r"argument (\S+?)(?:/\S+)?: invalid choice: '(.*?)'", message)
    if choice:
        action = next((a for a in parser._actions if choice.group(1) in a.option_strings), None)
        if action is not None and action.choices:
            hint = did_you_mean(choice.group(2), [str(c) for c in action.choices])
    elif message.startswith("unrecognized arguments:"):
        hint = unknown_flags_hint(parser, message.split(":", 1)[1].split())
    return f"{message}{'.' if hint else ''}{hint} (see `{parser.prog} --help`)"


# Flags users bring from the other command, and what this one calls the same thing (used when the parser has
# the flag on the right): `oarl train` takes data as --dataset and held-out settings as --eval_*; `oarl eval`
# takes --benchmarks, --limit, --n, --max-new-tokens.
FLAG_ALIASES = {
    "--dataset": "--benchmarks",
    "--eval_dataset": "--benchmarks",
    "--eval_size": "--limit",
    "--eval_samples": "--n",
    "--num_generations": "--n",
    "--max_completion_length": "--max-new-tokens",
    "--output_dir": "--output-dir",
    "--benchmarks": "--eval_dataset",
    "--limit": "--eval_size",
    "--max-new-tokens": "--max_completion_length",
}


def unknown_flags_hint(parser: argparse.ArgumentParser, tokens: list[str]) -> str:
    """ "Did you mean" for the first token of ``tokens`` that looks like a flag: this parser's name for a flag of
    the other command (FLAG_ALIASES), else the closest of ``parser``'s flags."""
    flag = next((t.split("=", 1)[0] for t in tokens if t.startswith("-")), None)
    if flag is None:
        return ""
    flags = [s for a in parser._actions for s in a.option_strings]
    alias = FLAG_ALIASES.get(flag.replace("-", "_").replace("__", "--", 1)) or FLAG_ALIASES.get(flag)
    if alias in flags:
        return f" Did you mean {alias}?"
    return did_you_mean(flag, flags) or did_you_mean(flag.replace("-", "_"), flags)
