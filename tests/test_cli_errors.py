"""Errors a user can fix: one line with the problem and the fix, a non-zero exit, no traceback (unless --debug),
"did you mean" for misspelt names, and nothing left behind."""

import json
import os
import re
import sys

import pytest

from oarl.cli import main
from oarl.errors import UsageError


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


CASES = [  # (argv, exit status, what the one line must say)
    (
        ["train", "--credit", "gradiant"],
        2,
        "invalid choice: 'gradiant' (choose from 'none', 'perturbation', 'gradient', 'entropy'",
    ),
    (["train", "--credit", "gradiant"], 2, "Did you mean gradient?"),
    (["train", "--learnig_rate", "1e-4"], 2, "unknown flag --learnig_rate. Did you mean --learning_rate?"),
    (["train", "--config", "{yaml}"], 2, "unknown key 'learnig_rate' in {yaml}. Did you mean learning_rate?"),
    (["train", "--max_steps", "0"], 2, "--max_steps 0 would still train one step"),
    (
        ["train", "--max_steps", "-3"],
        2,
        "--max_steps -3 would train num_train_epochs: give the number of steps (>= 1), or -1",
    ),
    (["train", "--max_steps", "ten"], 2, "invalid int value: 'ten'"),
    (["train", "--benchmarks", "mine.jsonl"], 2, "unknown flag --benchmarks. Did you mean --eval_dataset?"),
    (["train", "--resume", "runs/nothing"], 2, "no config.yaml there"),
    (["train", "--model", "runs/nonexistent"], 1, "model 'runs/nonexistent': no such directory"),
    (["train", "--dataset", "missing.jsonl"], 1, "dataset file 'missing.jsonl' does not exist"),
    (
        ["train", "--dataset", "{words}", "--prompt_template", "{Bdy} {Question}"],
        1,
        "names the field {Bdy}, which words.jsonl does not have; its fields are Body, Question, Answer, problem. "
        "Did you mean {Body}?",
    ),
    (["train", "--prompt_template", "{problem}"], 2, "--prompt_template apply to --dataset FILE or a named dataset"),
    (["eval", "--model", "tiny", "--benchmarks", "math5000"], 1, "unknown benchmark 'math5000'"),
    (["eval", "--model", "tiny", "--backend", "vlm"], 2, "Did you mean vllm?"),
    (
        ["eval", "--model", "tiny", "--tempreature", "1"],
        2,
        "unknown argument --tempreature. Did you mean --temperature?",
    ),
    (
        ["eval", "--model", "tiny", "--dataset", "mine.jsonl"],
        2,
        "unknown argument --dataset. Did you mean --benchmarks?",
    ),
    (["eval", "--model", "tiny", "--eval-size", "8"], 2, "unknown argument --eval-size. Did you mean --limit?"),
    (["eval", "--model", "runs/nonexistent", "--benchmarks", "arithmetic"], 1, "no such directory"),
    (
        ["eval", "--model", "tiny", "--benchmarks", "math500", "--data-dir", "no/such/dir"],
        1,
        "benchmark data dir no/such/dir (--data-dir) does not exist",
    ),
    (
        ["eval", "--model", "tiny", "--benchmarks", "{lists}"],
        1,
        "lists: none of its 3 row(s) can be used; 3 of them: 'final_answer' is an empty list",
    ),
    (["compare", "--credits", "none,gradiant"], 2, "Did you mean gradient?"),
    # issue 25: YAML that is not plain settings, numbers that mean nothing, models and data that cannot load
    (
        ["train", "--config", "{broken}"],
        2,
        "--config broken.yaml: invalid YAML at line 2, column 1: expected ',' or ']'",
    ),
    (
        ["train", "--config", "{tag}"],
        2,
        "--config tag.yaml: the YAML tag !!python/object/apply:os.system at line 1, "
        "column 16 is not read: a config holds plain values",
    ),
    (["train", "--config", "{listed}"], 2, "--learning_rate [1, 2]: must be a number"),
    (["train", "--num_generations", "0"], 2, "--num_generations 0: must be an integer >= 2"),
    (["train", "--per_device_train_batch_size", "0"], 2, "--per_device_train_batch_size 0: must be an integer >= 1"),
    (["train", "--learning_rate", "nan"], 2, "--learning_rate nan: must be a finite number"),
    (["train", "--max_grad_norm", "-1"], 2, "--max_grad_norm -1.0: must be a number >= 0 (0: no clipping)"),
    (["train", "--train_size", "0"], 2, "--train_size 0: must be the number of training problems, >= 1"),
    (["train", "--seed", "-1"], 2, "--seed -1: must be an integer in [0, 2**32)"),
    (["train", "--dataset", "{latin1}"], 1, "latin1.jsonl:2: not UTF-8 text: byte 0xe9 at byte 17 of the line"),
    (
        ["train", "--dataset", "{infinite}"],
        1,
        "infinite.jsonl:2: 'answer' is infinite (JSON's Infinity, or a number too large for a float such as 1e400)",
    ),
    (["train", "--model", "{notok}", "--dataset", "{words}"], 1, "notok has no tokenizer files"),
    (
        ["eval", "--model", "{emptyweights}", "--benchmarks", "arithmetic"],
        1,
        "model.safetensors is empty (0 bytes): the model was not saved or copied whole",
    ),
    (["eval", "--model", "tiny", "--n", "0"], 2, "--n 0: must be the number of samples per problem, >= 1"),
    (["eval", "--model", "tiny", "--k", "0"], 2, "--k 0: must be a list of integers >= 1"),
    (["eval", "--model", "tiny", "--batch-size", "0"], 2, "--batch-size 0: must be an integer >= 1"),
    (["eval", "--model", "tiny", "--temperature", "nan"], 2, "--temperature nan: must be a number >= 0"),
    (["eval", "--model", "tiny", "--top-p", "2"], 2, "--top-p 2.0: must be a probability in (0, 1]"),
    (["eval", "--model", "tiny", "--max-new-tokens", "0"], 2, "--max-new-tokens 0: must be an integer >= 1"),
    (["eval", "--model", "tiny", "--limit", "0"], 2, "--limit 0: must be an integer >= 1"),
    (
        ["eval", "--model", "tiny", "--verify-timeout", "nan"],
        2,
        "--verify-timeout nan: must be a number of seconds > 0",
    ),
    (
        ["train", "--dataset", "{words}", "--eval_dataset", "{words}", "--eval_size", "0"],
        2,
        "would not be used: --eval_size 0 turns held-out evaluation off; drop one of the two",
    ),
    # the embedded job's generation batch (4 steps of 64 completions) does not divide by another micro-batch
    (
        ["train", "--per_device_train_batch_size", "3", "--num_generations", "4"],
        2,
        "generation_batch_size (256) must be divisible by the global batch size (3): this job samples the completions "
        "of several steps in one generation call (generation_batch_size 256); with another --per_device_train_batch_size, "
        "give --generation_batch_size too",
    ),
]


@pytest.mark.parametrize("argv, status, expected", CASES, ids=[" ".join(c[0][:3]) for c in CASES])
def test_expected_errors_are_one_line(argv, status, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OARL_DEBUG", raising=False)
    files = {
        "yaml": "bad.yaml",
        "words": "words.jsonl",
        "lists": "lists.jsonl",
        "broken": "broken.yaml",
        "tag": "tag.yaml",
        "listed": "listed.yaml",
        "latin1": "latin1.jsonl",
        "infinite": "infinite.jsonl",
        "notok": "notok",
        "emptyweights": "emptyweights",
    }
    (tmp_path / "bad.yaml").write_text("learnig_rate: 0.1\n")
    (tmp_path / "broken.yaml").write_text("learning_rate: [1, 2\n")
    (tmp_path / "tag.yaml").write_text("learning_rate: !!python/object/apply:os.system ['touch pwned']\n")
    (tmp_path / "listed.yaml").write_text("learning_rate: [1, 2]\n")
    jsonl(tmp_path / "words.jsonl", [{"Body": "Dan has 3.", "Question": "He gets 1. How many?", "Answer": 4}])
    jsonl(tmp_path / "lists.jsonl", [{"problem": f"p{i}", "final_answer": []} for i in range(3)])
    (tmp_path / "latin1.jsonl").write_bytes(
        b'{"problem": "1+1", "answer": "2"}\n{"problem": "caf\xe9 1+2", "answer": "3"}\n'
    )
    (tmp_path / "infinite.jsonl").write_text('{"problem": "1+1", "answer": 2}\n{"problem": "big", "answer": 1e400}\n')
    for folder in ("notok", "emptyweights"):  # model folders that cannot load: refused before any loading
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "config.json").write_text('{"model_type": "qwen2"}')
        (tmp_path / folder / "model.safetensors").write_bytes(b"" if folder == "emptyweights" else b"x" * 64)
    (tmp_path / "emptyweights" / "tokenizer.json").write_text("{}")
    fill = lambda text: re.sub(r"\{(\w+)\}", lambda m: files.get(m[1], m[0]), text)  # noqa: E731
    argv = [fill(a) for a in argv]
    assert main(argv) == status
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith(("INFO ", "WARNING "))]
    assert lines == [lines[0]] and lines[0].startswith(f"oarl {argv[0]}: error: "), err
    assert fill(expected) in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files.values())  # no run or report folder


def test_debug_shows_the_traceback(monkeypatch):
    monkeypatch.delenv("OARL_DEBUG", raising=False)
    with pytest.raises(UsageError, match="did you mean|Did you mean"):
        main(["train", "--credit", "gradiant", "--debug"])
    monkeypatch.setenv("OARL_DEBUG", "1")
    with pytest.raises(ValueError, match="no such directory"):
        main(["eval", "--model", "./no/such/model", "--benchmarks", "arithmetic"])


@pytest.mark.parametrize(
    "preset, from_python, expected", [(None, False, "PASSIVE"), ("ACTIVE", False, "ACTIVE"), (None, True, "unset")]
)
def test_the_oarl_command_makes_openmp_wait_passively(preset, from_python, expected):
    """The `oarl` command (not a call of main() from Python) sets OMP_WAIT_POLICY=PASSIVE unless the user set it."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    call = "cli.main(['no-such-command'])" if from_python else "sys.argv = ['oarl', 'no-such-command']; cli.main()"
    code = f"import os, sys; from oarl import cli; {call}; print(os.environ.get('OMP_WAIT_POLICY', 'unset'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == expected, out.stderr
