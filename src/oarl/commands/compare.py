"""``oarl compare``: the same training job once per credit estimator (and seed), one table of held-out results.

    oarl compare --credits none,gradient,perturbation,entropy --seeds 0,1 [any `oarl train` flag]

Each (credit, seed) is an ordinary run directory under ``<runs_dir>/compare-<time>/``; the comparison goes
to ``compare.md`` and ``compare.json`` beside them. Called again with the same ``--output_dir`` (and the same
flags), it reuses the runs already there, finishes interrupted ones and trains only the new (credit, seed)
pairs: seeds can be added to a comparison, and a larger ``--max_steps`` (the only flag changed) trains every run
further from its last checkpoint, as ``oarl train --resume RUN --max_steps N`` does. A new run takes the held-out
accuracy before training from a run of the same seed. The difference of each estimator against ``none``
(plain GRPO) is given with its standard error, so a reader can tell a gain from noise, and so are the steps each
estimator needs to reach plain GRPO's final accuracy (mean over seeds, at the held-out evaluations of
``--eval_every``).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import time
from pathlib import Path

import yaml

from oarl.commands import train
from oarl.errors import Interrupted, RaisingParserMixin, UsageError, did_you_mean, removed_on_failure, stopped

HELP = "train once per credit estimator (and seed) and compare held-out accuracy"


def _mean_se(results: list[dict]) -> tuple[float, float]:
    """Mean accuracy over seeds, and its standard error (the runs' own SEs combined, independent runs)."""
    mean = sum(r["avg"] for r in results) / len(results)
    se = math.sqrt(sum(r["se"] ** 2 for r in results)) / len(results)
    return mean, se


def summarize(summaries: dict[str, list[dict]]) -> dict:
    """{credit: [summary per seed]} -> {split: {credit: {before, after, gain, gain_se, vs_none, vs_none_se,
    vs_none_seeds_se, steps_to_none_final}}}. ``gain_se`` and ``vs_none_se``: the seeds' own SEs combined, each
    paired over problems when the runs kept per-problem numbers (``oarl.runs.heldout_gain``; seed s against seed
    s for vs_none); ``vs_none_seeds_se``: over seeds (the spread of the per-seed differences), from 2 seeds on;
    ``steps_to_none_final``: (first step, last step) as ``_steps_to``, None where GRPO did not gain."""
    from oarl.runs import heldout_gain  # lazy: transformers loads when runs are compared, not for --help

    splits = sorted({s for runs in summaries.values() for r in runs for s in r["heldout_after"]})
    table: dict = {}
    for split in splits:
        row = {}
        for credit, runs in summaries.items():
            after, after_se = _mean_se([r["heldout_after"][split] for r in runs])
            before, _ = _mean_se([r["heldout_before"][split] for r in runs])
            gains = [heldout_gain(r["heldout_before"][split], r["heldout_after"][split]) for r in runs]
            row[credit] = {
                "before": before,
                "after": after,
                "after_se": after_se,
                "gain": after - before,
                "gain_se": math.sqrt(sum(se**2 for _, se in gains)) / len(gains),
                "after_per_seed": [r["heldout_after"][split]["avg"] for r in runs],
                "overhead": _mean([r["credit_overhead"] for r in runs]),
                "train_time_s": _mean([r.get("train_time_s", r["wall_time_s"]) for r in runs]),
            }
        if "none" in row:
            # only where GRPO gained: a final below the start would be "reached" before any training
            gained = row["none"]["after"] > row["none"]["before"]
            for credit, r in row.items():
                r["steps_to_none_final"] = _steps_to(summaries[credit], split, row["none"]["after"]) if gained else None
                if credit == "none":
                    continue
                r["vs_none"] = r["after"] - row["none"]["after"]
                mine, grpo = summaries[credit], summaries["none"]
                if len(mine) != len(grpo):
                    r["vs_none_se"] = math.hypot(r["after_se"], row["none"]["after_se"])
                    continue
                # seed s against seed s: the same warm start, scored on the same problems
                ses = [
                    heldout_gain(g["heldout_after"][split], c["heldout_after"][split])[1] for c, g in zip(mine, grpo)
                ]
                r["vs_none_se"] = math.sqrt(sum(se**2 for se in ses)) / len(ses)  # paired over problems
                if len(mine) >= 2:  # the spread of the per-seed differences includes training's randomness
                    diffs = [a - b for a, b in zip(r["after_per_seed"], row["none"]["after_per_seed"])]
                    r["vs_none_seeds_se"] = statistics.stdev(diffs) / math.sqrt(len(diffs))
        table[split] = row
    return table


def _steps_to(runs: list[dict], split: str, target: float) -> tuple[int | None, int] | None:
    """(first evaluated step at which the mean held-out accuracy over seeds reaches ``target``, or None if none
    does; the last step), over the steps every seed evaluated (``heldout_curve``, every ``--eval_every`` steps);
    None without curves."""
    curves = [dict(map(tuple, r.get("heldout_curve", {}).get(split, []))) for r in runs]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    if not steps:
        return None
    reached = [s for s in steps if sum(c[s] for c in curves) / len(curves) >= target - 1e-9]
    return (reached[0] if reached else None), steps[-1]


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def to_markdown(table: dict, n_seeds: int) -> str:
    lines = []
    for split, row in table.items():
        lines += [
            f"### {split} (mean of {n_seeds} seed(s), ± one standard error over problems; gain: paired over "
            "problems; vs none: ± paired over problems, then (in brackets) over seeds)",
            "",
            "| credit | before | after | after per seed | gain | vs none | steps to none's final | credit overhead "
            "| training time |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for credit, r in row.items():
            vs = f"{r['vs_none']:+.3f} ± {r['vs_none_se']:.3f}" if "vs_none" in r and credit != "none" else "-"
            if "vs_none_seeds_se" in r and credit != "none":
                vs += f" (± {r['vs_none_seeds_se']:.3f})"
            overhead = "-" if r["overhead"] is None else f"{r['overhead']:.1%}"
            per_seed = ", ".join(f"{a:.3f}" for a in r["after_per_seed"])
            steps = r.get("steps_to_none_final")
            steps = (
                "-" if steps is None else f"{steps[0]} of {steps[1]}" if steps[0] is not None else f"not in {steps[1]}"
            )
            lines.append(
                f"| {credit} | {r['before']:.3f} | {r['after']:.3f} ± {r['after_se']:.3f} | {per_seed} | "
                f"{r['gain']:+.3f} ± {r['gain_se']:.3f} | {vs} | {steps} | {overhead} | {r['train_time_s']:.0f} s |"
            )
        if any("steps_to_none_final" in r for r in row.values()):
            lines += [
                "",
                "steps to none's final: the first held-out evaluation (every --eval_every steps; with 0, only "
                "before and after training) at which the mean over seeds reaches none's final accuracy; - where "
                "none did not gain. training time: RL steps and the held-out evaluations during training "
                "(not the warm start, nor the evaluations before and after).",
            ]
        lines.append("")
    return "\n".join(lines)


class _Parser(RaisingParserMixin, argparse.ArgumentParser):
    pass


def _resumed_args(run_dir: Path, flags: list[str]):
    """(TrainArgs, OARConfig) that resume a run directory an earlier ``oarl compare`` left (complete or
    interrupted), if it was trained with the settings ``flags`` ask for, or with fewer ``max_steps`` than a
    ``--max_steps`` in ``flags`` and otherwise the same (then it trains further to that); else UsageError naming the first differing
    settings."""
    from oarl.runs import resolved_config  # lazy: transformers loads when runs are compared, not for --help

    resumed = train.parse_args(["--resume", str(run_dir)])
    saved, asked = resolved_config(*resumed), resolved_config(*train.parse_args(flags))
    differ = [k for k in sorted(saved.keys() | asked.keys()) if saved.get(k) != asked.get(k)]
    # only a --max_steps given now extends a run (not the job's default when a comparison set its own)
    asked_steps = any(f.split("=")[0] in ("--max_steps", "--max-steps") for f in flags)
    if differ == ["max_steps"] and asked_steps and 0 < saved["max_steps"] < asked["max_steps"]:
        return train.parse_args(["--resume", str(run_dir), "--max_steps", str(asked["max_steps"])])
    if differ:
        shown = ", ".join(f"{k}: {saved.get(k)!r} there, {asked.get(k)!r} now" for k in differ[:3])
        raise UsageError(
            f"{run_dir} holds a run with other settings ({shown}); give another --output_dir, or the "
            "same flags as that comparison"
        )
    return resumed


def _check_folder(out: Path, rest: list[str]) -> dict[Path, tuple]:
    """Every run already in a comparison folder, asked for now or not, was trained with the flags ``rest`` (its
    own credit and seed aside; a larger ``max_steps`` trains it further), so that new runs join a like-for-like
    table; else UsageError before anything trains. Returns {run directory: its ``_resumed_args``}."""
    checked = {}
    for run_dir in sorted(out.glob("*-seed*")) if out.is_dir() else ():
        if (run_dir / "config.yaml").is_file():
            saved = yaml.safe_load((run_dir / "config.yaml").read_text())
            checked[run_dir] = _resumed_args(
                run_dir,
                [*rest, "--credit", saved["credit"], "--seed", str(saved["seed"]), "--output_dir", str(run_dir)],
            )
    return checked


def _share_heldout_before(run_dir: Path, seed: int) -> None:
    """Held-out accuracy before training depends on the warm start, the held-out problems and the seed, not on the
    credit estimator: a new run takes it from a run of the same seed in the same folder (whose settings differ in
    credit settings and max_steps at most: ``_check_folder``), the numbers recomputing would give to the bit,
    instead of evaluating again."""
    from oarl.runs import HELDOUT_BEFORE, save_heldout_before  # lazy: transformers loads when runs are compared

    if (run_dir / HELDOUT_BEFORE).exists():
        return
    for sibling in sorted(run_dir.parent.glob(f"*-seed{seed}")):
        if (sibling / HELDOUT_BEFORE).is_file() and (sibling / "config.yaml").is_file():
            run_dir.mkdir(parents=True, exist_ok=True)
            save_heldout_before(run_dir, json.loads((sibling / HELDOUT_BEFORE).read_text()))
            print(
                f"{run_dir.name}: held-out accuracy before training taken from {sibling.name} (same warm start, "
                "problems and seed)"
            )
            return


def run(argv: list[str]) -> int:
    """``oarl compare --credits none,gradient --seeds 0,1 [train flags]``: one run per (credit, seed), one table."""
    main(argv)
    train.leave_together()
    return 0


def main(argv: list[str] | None = None) -> dict:
    pre = _Parser(prog="oarl compare", add_help=False)
    pre.add_argument(
        "--credits",
        default="none,gradient,perturbation,entropy",
        help="comma-separated estimators to train with (default: %(default)s)",
    )
    pre.add_argument("--seeds", default="0", help="comma-separated seeds, one run each (default: %(default)s)")
    pre.add_argument("--output_dir", help="folder of the comparison (default: <runs_dir>/compare-<time>)")
    pre.add_argument("-h", "--help", action="store_true")
    known, rest = pre.parse_known_args(argv)
    if known.help:
        pre.print_help()
        print("\nEvery other flag is an `oarl train` flag (see `oarl train --help`), applied to every run.")
        return {}
    from oarl.credit import ESTIMATORS  # lazy: torch loads when runs are compared, not for --help

    credits = [c.strip() for c in known.credits.split(",") if c.strip()]
    unknown = [c for c in credits if c not in ESTIMATORS]
    if not credits or unknown:
        raise UsageError(
            f"--credits {known.credits!r}: choose among {', '.join(ESTIMATORS)}."
            f"{did_you_mean(unknown[0], ESTIMATORS) if unknown else ''}"
        )
    try:
        seeds = [int(s) for s in known.seeds.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds {known.seeds!r}: expected comma-separated integers such as 0,1,2") from None
    train_args, _ = train.parse_args(rest)  # validates the shared flags once, before any run starts
    out = Path(known.output_dir or Path(train_args.runs_dir) / f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
    summaries: dict[str, list[dict]] = {c: [] for c in credits}
    checked = _check_folder(out, rest)
    try:
        _run_all(out, seeds, credits, rest, summaries, checked)
    except Interrupted as exc:  # Ctrl-C or SIGTERM (its cause)
        raise Interrupted(
            f"{stopped(exc.__cause__)}; to continue, run the same command with --output_dir "
            f"{shlex.quote(str(out))}: finished runs are reused and the interrupted one resumes"
        ) from exc.__cause__
    table = summarize(summaries)
    markdown = to_markdown(table, len(seeds))
    (out / "compare.md").write_text(markdown)
    (out / "compare.json").write_text(
        json.dumps({"credits": credits, "seeds": seeds, "table": table, "runs": summaries}, indent=2)
    )
    print(markdown)
    print(f"comparison: {out / 'compare.md'}")
    return table


def _run_all(
    out: Path, seeds: list[int], credits: list[str], rest: list[str], summaries: dict, checked: dict[Path, tuple]
) -> None:
    """Train (or reuse) every (credit, seed) run under ``out``, appending each summary to ``summaries``;
    ``checked``: the runs already there, as ``_check_folder`` returns them."""
    from oarl.runs import heldout_curve  # lazy: transformers loads when runs are compared, not for --help

    with removed_on_failure(out, keep=lambda: any(p.is_dir() for p in out.iterdir())):
        for seed in seeds:
            for credit in credits:
                run_dir = out / f"{credit}-seed{seed}"
                flags = [*rest, "--credit", credit, "--seed", str(seed), "--output_dir", str(run_dir)]
                resumed = checked.get(run_dir)  # a run of an earlier call is reused or finished
                if not resumed:
                    _share_heldout_before(run_dir, seed)
                summary = train.run_train(*(resumed or train.parse_args(flags)))
                if "heldout_curve" not in summary:  # runs written before summaries kept it
                    summary["heldout_curve"] = heldout_curve(run_dir)
                summaries[credit].append(summary)
