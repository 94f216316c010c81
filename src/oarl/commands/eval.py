"""``oarl eval``: evaluate a model on math benchmarks into a report folder (pass@k, avg@n, maj@n).

    oarl eval --model RUN_OR_MODEL [--benchmarks math500,gsm8k,...] [--n 4 --k 1,4] ...
    run_eval(EvalConfig(...))      the same from Python: returns the results dict

A model is a path, a hub name, ``tiny``, or an ``oarl train`` run directory (its ``final_model``). Benchmarks come
from files (``--data-dir``, default ``$OARL_DATA_DIR`` or ``../shared/data/benchmarks``), the hub, or the embedded
arithmetic task. Outputs in the report folder: ``samples.jsonl`` (every sample, appended one batch of problems at a
time), ``results.json``, ``results.md`` (``oarl.report.tables``) and ``eval_config.json``.

Resume: a problem with all n samples in samples.jsonl is not generated again (a partly written problem is
regenerated). The settings that change samples are kept in ``eval_config.json``; resuming with other settings is
refused (use ``--overwrite``). The default report folder is named after those settings (``reports/eval-<model>-<hash>``,
``<run>/eval-<hash>``), so that a run with other settings starts its own folder and the same command resumes. With
the HF backend a resumed run is not bit-identical to an uninterrupted one (sampling is seeded per batch, and batches
start elsewhere); with vLLM it is (seeded per prompt).

Every flag is a field of :class:`EvalConfig` (its metadata holds the flag's help): the flags and the Python API
cannot drift apart. This module imports torch, transformers and the engines only when it runs (``oarl eval --help``
stays instant).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from oarl.checks import check_eval
from oarl.errors import DiskFull, Interrupted, disk_full, removed_on_failure, stopped
from oarl.report.tables import RESULTS_JSON, compare_markdown, results_markdown
from oarl.rewards import DEFAULT_TIMEOUT_S

logger = logging.getLogger(__name__)

HELP = "evaluate a model on math benchmarks (pass@k, avg@n, maj@n)"
DEFAULT_BENCHMARKS = ("math500", "gsm8k", "aime24", "amc23", "minerva")
SAMPLES_FILE, RESULTS_MD, CONFIG_FILE = "samples.jsonl", "results.md", "eval_config.json"
# settings that change the samples: resuming with any of them different is refused
RESUME_KEYS = (
    "model",
    "n",
    "temperature",
    "top_p",
    "max_new_tokens",
    "seed",
    "prompt_template",
    "chat_template",
    "stop",
)


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [b.strip() for b in text.split(",") if b.strip()]


def flag(help: str, **argparse_kwargs) -> dict:
    """The metadata of an EvalConfig field: its flag's help, and argparse settings where the field's type and
    default are not enough (``flag``: another flag name; ``type``: how the text becomes the value)."""
    return {"help": help, **argparse_kwargs}


@dataclass
class EvalConfig:
    """The settings of one ``oarl eval`` run; each field is the flag ``--<field-with-dashes>`` (or its metadata's
    ``flag``). Checked by ``oarl.checks.check_eval`` before any model is loaded."""

    model: str | None = field(
        default=None,
        metadata=flag("model directory, hub name, 'tiny', or an `oarl train` run directory (its final_model/)"),
    )
    benchmarks: list[str] = field(
        default_factory=lambda: list(DEFAULT_BENCHMARKS),
        metadata=flag(
            "comma-separated: math500, gsm8k, aime24, amc23, minerva, arithmetic, arithmetic-hard, a .jsonl path, or a "
            "hub dataset name (default: %(default)s)",
            type=_names,
            default=",".join(DEFAULT_BENCHMARKS),
        ),
    )
    data_dir: str | None = field(
        default=None,
        metadata=flag("folder of benchmark files (default: $OARL_DATA_DIR, else ../shared/data/benchmarks)"),
    )
    limit: int | None = field(default=None, metadata=flag("first N problems of each benchmark"))
    n: int = field(default=1, metadata=flag("samples per problem (default: %(default)s)"))
    k: list[int] = field(
        default_factory=lambda: [1],
        metadata=flag("pass@k values, comma-separated (default: 1 and n)", type=_int_list, default=None),
    )
    temperature: float = field(default=0.6, metadata=flag("sampling temperature, 0 = greedy (default: %(default)s)"))
    top_p: float = field(default=0.95, metadata=flag("nucleus sampling (default: %(default)s)"))
    max_new_tokens: int = field(default=1024, metadata=flag("completion length cap (default: %(default)s)"))
    seed: int = field(default=0, metadata=flag("sampling seed (default: %(default)s)"))
    batch_size: int = field(default=8, metadata=flag("problems per generate call, HF backend (default: %(default)s)"))
    backend: str = field(
        default="auto",
        metadata=flag(
            "generation engine: hf (Hugging Face generate), vllm (a vLLM engine, on a GPU or with vLLM's CPU build) or "
            "auto (vLLM if installed and a GPU is present, else HF)",
            choices=("auto", "hf", "vllm"),
        ),
    )
    dtype: str | None = field(
        default=None, metadata=flag("model dtype (default float32 for HF; 'auto' = the checkpoint's)")
    )
    device: str | None = field(
        default=None, metadata=flag("device for the HF backend (default: cuda if available, else cpu)")
    )
    prompt_template: str | None = field(
        default=None,
        metadata=flag(
            "prompt (plain) or user message (chat) made of the row's fields, in place of the default prompt and its "
            "answer instruction: {problem} (the detected problem) or any field, e.g. '{Body} {Question}'; LaTeX braces "
            "stay as they are, {{ and }} are literal braces"
        ),
    )
    chat_template: str = field(
        default="auto",
        metadata=flag("use the tokenizer's chat template (auto: when it has one)", choices=("auto", "on", "off")),
    )
    stop: list[str] = field(
        default_factory=list,
        metadata=flag("stop string (repeatable); completions are cut there", action="append", default=[]),
    )
    output_dir: str | None = field(
        default=None,
        metadata=flag(
            "report directory (default: <run>/eval-<hash> for a train run, else reports/eval-<model>-<hash>, the hash "
            "of the sampling settings)"
        ),
    )
    overwrite: bool = field(
        default=False, metadata=flag("discard samples of an earlier run instead of resuming", action="store_true")
    )
    problem_field: str | None = field(
        default=None, metadata=flag("problem field of a .jsonl benchmark (default: auto-detected)")
    )
    answer_field: str | None = field(
        default=None, metadata=flag("gold answer field of a .jsonl benchmark (default: auto-detected)")
    )
    strict: bool = field(
        default=False, metadata=flag("fail on malformed benchmark rows instead of skipping them", action="store_true")
    )
    verify_timeout_s: float = field(
        default=DEFAULT_TIMEOUT_S,
        metadata=flag(
            "seconds per answer verification (default: %(default)s)", flag="--verify-timeout", metavar="VERIFY_TIMEOUT"
        ),
    )
    progress: bool = field(default=True, metadata=flag("no progress bar", flag="--no-progress", action="store_false"))


def add_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``oarl eval``: one per EvalConfig field, then ``--compare`` and ``--output``."""
    kinds = {"str | None": str, "int | None": int, "int": int, "float": float, "str": str}
    for f in dataclasses.fields(EvalConfig):
        meta = dict(f.metadata)
        name = meta.pop("flag", "--" + f.name.replace("_", "-"))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kwargs = {"default": default, "dest": f.name, **meta}
        if "action" not in meta and "type" not in meta:
            kwargs["type"] = kinds[f.type]
        p.add_argument(name, **kwargs)
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="RUN",
        help="instead of evaluating: one table with a column per report dir / results.json / train run",
    )
    p.add_argument("--output", help="with --compare: also write the table to this file")


def run(args: argparse.Namespace) -> int:
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
    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(EvalConfig)}
    cfg = EvalConfig(**{**settings, "k": args.k or sorted({1, args.n})})
    again = f"oarl {shlex.join(sys.argv[1:] or ['eval'])}"
    try:
        results = run_eval(cfg)
    except KeyboardInterrupt as exc:  # samples so far are kept; the same command (same settings, same folder) resumes
        raise Interrupted(f"{stopped(exc)}; continue with: {again}") from exc
    except Exception as exc:  # a full disk: samples so far are kept, the same command continues
        if (why := disk_full(exc, cfg.output_dir or ".")) is None:
            raise
        raise DiskFull(
            f"{why} while writing the evaluation: free space on its disk, then continue with: {again}"
        ) from exc
    print(results_markdown(results))
    print(f"wall time {results['wall_time_s']:.1f}s; outputs in {results['output_dir']}")
    return 0


def default_output_dir(model: str, settings: dict) -> Path:
    """``<run>/eval-<hash>`` for a train run (its evaluation next to it), else ``reports/eval-<model>-<hash>``;
    the hash is of the settings that change samples (RESUME_KEYS): other settings, another folder."""
    tag = hashlib.sha256(json.dumps([settings[k] for k in RESUME_KEYS]).encode()).hexdigest()[:8]
    path = Path(model).expanduser()
    if (path / "final_model").is_dir():
        return path / f"eval-{tag}"
    return Path("reports") / f"eval-{(path.name or str(model)).replace('/', '_')}-{tag}"


def read_samples(path: Path) -> list[dict]:
    """Records of samples.jsonl; a torn last line (interrupted write) is ignored."""
    records = []
    if path.is_file():
        with path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    logger.warning("ignoring a torn line in %s", path)
    return records


def load_benchmark_rows(name: str, cfg: EvalConfig):
    """``(short name, rows)``: also the embedded arithmetic task as ``arithmetic`` / ``arithmetic-hard``."""
    # lazy: the datasets library loads when an evaluation runs, not for `oarl eval --help`
    from oarl.data import arithmetic
    from oarl.data.benchmarks import BenchmarkRows, load_benchmark

    if name in ("arithmetic", "arithmetic-test", "arithmetic-hard"):
        split = "hard" if name.endswith("hard") else "test"
        size = cfg.limit or (
            arithmetic.DEFAULT_REGIME.hard_eval_problems if split == "hard" else arithmetic.DEFAULT_REGIME.eval_problems
        )
        rows = [
            {
                "problem": f"What is {r['expression']}?",
                "prompt": r["prompt"],
                "answer": str(r["answer"]),
                "id": f"{name}/{i}",
                "source": f"arithmetic:{split}:seed{cfg.seed}:{i}",
            }
            for i, r in enumerate(arithmetic.problems(split, size, seed=cfg.seed))
        ]
        return name, BenchmarkRows(rows, name=name)
    rows = load_benchmark(
        name,
        data_dir=cfg.data_dir,
        limit=cfg.limit,
        problem_field=cfg.problem_field,
        answer_field=cfg.answer_field,
        strict=cfg.strict,
    )
    return (rows.name or Path(name).stem), rows


def run_eval(cfg: EvalConfig, backend=None, tokenizer=None) -> dict:
    """Evaluate ``cfg.model`` on ``cfg.benchmarks``; writes samples.jsonl, results.json, results.md in
    ``cfg.output_dir`` and returns the results dict. ``backend``/``tokenizer`` may be given (tests, reuse).
    Raises ValueError / FileNotFoundError for a bad argument (every setting: ``oarl.checks.check_eval``) before
    loading a model or writing anything; a run that fails before its first sample leaves no report folder behind."""
    # lazy: torch, transformers, datasets and the engines load when an evaluation runs, not for `oarl eval --help`
    from oarl.data.template import PromptTemplate
    from oarl.generation import CHAT_TEMPLATE, PLAIN_TEMPLATE, template_fields
    from oarl.models.loading import check_model_name
    from oarl.runs import resolve_model_path

    t0 = time.perf_counter()
    if cfg.model is None:
        raise ValueError("no model given")
    check_eval(cfg)
    model_path = resolve_model_path(cfg.model)
    check_model_name(model_path)
    k_list = sorted({k for k in cfg.k if k <= cfg.n})
    if len(k_list) < len(cfg.k):
        logger.warning("dropping k > n=%d from %s", cfg.n, cfg.k)
    chat = {"auto": None, "on": True, "off": False}[cfg.chat_template]
    # Every argument is checked (benchmarks read, the template's fields known) before any output is touched.
    benchmarks = [load_benchmark_rows(b, cfg) for b in cfg.benchmarks]
    if cfg.prompt_template:
        for name, rows in benchmarks:
            PromptTemplate(cfg.prompt_template, template_fields(rows[0]), source=name)
        if not re.search(r"answer|boxed", cfg.prompt_template, re.IGNORECASE):
            print(
                "note: --prompt-template replaces the whole default prompt, its answer instruction included "
                f'("{CHAT_TEMPLATE.split(chr(10))[-1]}" with a chat template, else '
                f'"{PLAIN_TEMPLATE.split(chr(10))[1]}"); yours asks for no final answer, and a completion '
                "without one scores 0",
                file=sys.stderr,
            )

    # resume: same settings, then the problems already complete in samples.jsonl
    settings = {
        "model": model_path,
        "n": cfg.n,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "max_new_tokens": cfg.max_new_tokens,
        "seed": cfg.seed,
        "prompt_template": cfg.prompt_template,
        "chat_template": cfg.chat_template,
        "stop": list(cfg.stop),
    }
    out_dir = Path(cfg.output_dir) if cfg.output_dir else default_output_dir(cfg.model, settings)
    with removed_on_failure(out_dir, keep=lambda: bool(read_samples(out_dir / SAMPLES_FILE))):
        return _run_eval(cfg, backend, tokenizer, t0, model_path, k_list, chat, benchmarks, settings, out_dir)


def _skip_over_context(chunk: list[dict], prompts: list[str], backend, rows) -> tuple[list[dict], list[str]]:
    """The rows of ``chunk`` (and their prompts) whose prompt leaves room for a completion (``over_context``); the
    others are skipped with their reason, listed in ``rows.skipped`` (a benchmark's skipped rows) and logged."""
    from oarl.generation import over_context  # lazy: torch loads when an evaluation runs (see run_eval)

    kept: tuple[list, list] = ([], [])
    for row, prompt in zip(chunk, prompts, strict=True):
        reason = over_context(backend, prompt)
        if reason is None:
            kept[0].append(row)
            kept[1].append(prompt)
            continue
        logger.warning("skipping %s: %s", row.get("source") or row["id"], reason)
        if hasattr(rows, "skipped"):
            rows.skipped.append((row.get("source") or row["id"], reason))
    return kept


def _run_eval(cfg, backend, tokenizer, t0, model_path, k_list, chat, benchmarks, settings, out_dir) -> dict:
    # lazy: torch, transformers and the engines load when an evaluation runs (see run_eval)
    from oarl.evaluate import benchmark_metrics, score_generations
    from oarl.generation import CHAT_TEMPLATE, PLAIN_TEMPLATE, Sampling, build_prompt, load_backend

    samples_path, config_path = out_dir / SAMPLES_FILE, out_dir / CONFIG_FILE
    if cfg.overwrite:
        for name in (SAMPLES_FILE, RESULTS_JSON, RESULTS_MD, CONFIG_FILE):
            (out_dir / name).unlink(missing_ok=True)
    old: dict = {}
    if config_path.is_file():
        old = json.loads(config_path.read_text())
        diff = {k: (old.get(k), settings[k]) for k in RESUME_KEYS if old.get(k) != settings[k]}
        if diff:
            raise ValueError(
                f"{out_dir} holds samples made with other settings {diff}; use --overwrite or another --output-dir"
            )
    config_path.write_text(json.dumps(settings, indent=2))
    previous = read_samples(samples_path)
    done: dict[tuple[str, str], list[dict]] = {}
    for s in previous:
        done.setdefault((s["benchmark"], s["id"]), []).append(s)
    done = {key: v for key, v in done.items() if len({s["sample"] for s in v}) >= cfg.n}
    if previous and len(done) * cfg.n != len(previous):  # drop partly written problems from the file
        with samples_path.open("w", encoding="utf-8") as f:
            for v in done.values():
                for s in sorted(v, key=lambda s: s["sample"])[: cfg.n]:
                    f.write(json.dumps(s) + "\n")

    todo = {name: [r for r in rows if (name, r["id"]) not in done] for name, rows in benchmarks}
    num_todo = sum(len(v) for v in todo.values())
    if num_todo and backend is None:
        if not cfg.progress:  # --no-progress: no bar of transformers' either (loading the weights)
            from transformers.utils import logging as hf_logging  # lazy: a run loads transformers, --help does not

            hf_logging.disable_progress_bar()
        backend, tokenizer, chat = load_backend(
            model_path,
            cfg.backend,
            chat=chat,
            dtype=cfg.dtype,
            device=cfg.device,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
        )
    elif chat is None:
        chat = (
            (getattr(tokenizer, "chat_template", None) is not None)
            if tokenizer is not None
            else old.get("chat_resolved", False)
        )
    config_path.write_text(json.dumps({**settings, "chat_resolved": chat}, indent=2))
    sampling = Sampling(cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.seed, list(cfg.stop))
    batch = max(1, cfg.batch_size)
    logger.info("eval: %d problems to generate (%d already in %s)", num_todo, len(done), samples_path)

    bar = tqdm(total=num_todo, desc="eval", unit="problem", disable=not cfg.progress or num_todo == 0)
    example_prompt = {}
    with samples_path.open("a", encoding="utf-8") as f:
        for name, rows in benchmarks:
            if rows:
                example_prompt[name] = (
                    build_prompt(rows[0], tokenizer, cfg.prompt_template, chat)
                    if tokenizer is not None or not chat
                    else None
                )
            bar.set_description(name)
            for start in range(0, len(todo[name]), batch):
                batch_rows = todo[name][start : start + batch]
                prompts = [build_prompt(r, tokenizer, cfg.prompt_template, chat) for r in batch_rows]
                chunk, prompts = _skip_over_context(batch_rows, prompts, backend, rows)
                bar.update(len(batch_rows) - len(chunk))
                if not chunk:
                    continue
                records = score_generations(
                    chunk, prompts, backend.generate(prompts, cfg.n, sampling), name, cfg.verify_timeout_s
                )
                f.write("".join(json.dumps(r) + "\n" for r in records))
                f.flush()
                for r in records:
                    done.setdefault((name, r["id"]), []).append(r)
                bar.update(len(chunk))
    bar.close()

    per_benchmark = {}
    for name, rows in benchmarks:
        ids = {r["id"] for r in rows}
        samples = [s for (b, i), v in done.items() if b == name and i in ids for s in v]
        metrics = benchmark_metrics(samples, cfg.n, k_list)
        metrics["skipped_rows"] = [{"source": src, "reason": why} for src, why in getattr(rows, "skipped", [])]
        metrics["example_prompt"] = example_prompt.get(name)
        per_benchmark[name] = metrics
    results = {
        "model": cfg.model,
        "model_path": model_path,
        "output_dir": str(out_dir),
        "backend": getattr(backend, "name", None) or "resumed",
        "settings": {
            **settings,
            "k": k_list,
            "batch_size": cfg.batch_size,
            "benchmarks": cfg.benchmarks,
            "limit": cfg.limit,
            "prompt_format": "chat template" if chat else "plain",
            "prompt_template_used": cfg.prompt_template or (CHAT_TEMPLATE if chat else PLAIN_TEMPLATE),
            "own_prompt_benchmarks": [
                name
                for name, rows in benchmarks
                if rows and "prompt" in rows[0] and not chat and cfg.prompt_template is None
            ],
            "verify_timeout_s": cfg.verify_timeout_s,
        },
        "benchmarks": per_benchmark,
        "wall_time_s": time.perf_counter() - t0,
        "generated_problems": num_todo,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (out_dir / RESULTS_JSON).write_text(json.dumps(results, indent=2))
    (out_dir / RESULTS_MD).write_text(results_markdown(results))
    return results
