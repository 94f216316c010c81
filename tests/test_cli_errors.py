"""Errors a user can fix: one line with the problem and the fix, a non-zero exit, no traceback (unless --debug),
"did you mean" for misspelt names, and nothing left behind."""

import json
import os
import sys

import pytest

from oarl.cli import main
from oarl.errors import UsageError


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


CASES = [  # (argv, exit status, what the one line must say)
    (["train", "--credit", "gradiant"], 2, "invalid choice: 'gradiant' (choose from 'none', 'perturbation', "
                                           "'gradient', 'entropy'"),
    (["train", "--credit", "gradiant"], 2, "Did you mean gradient?"),
    (["train", "--learnig_rate", "1e-4"], 2, "unknown flag --learnig_rate. Did you mean --learning_rate?"),
    (["train", "--config", "{yaml}"], 2, "unknown key 'learnig_rate' in {yaml}. Did you mean learning_rate?"),
    (["train", "--max_steps", "0"], 2, "--max_steps 0 would still train one step"),
    (["train", "--max_steps", "-3"], 2, "--max_steps -3 would train num_train_epochs: give the number of steps (>= 1), "
                                        "or -1"),
    (["train", "--max_steps", "ten"], 2, "invalid int value: 'ten'"),
    (["train", "--benchmarks", "mine.jsonl"], 2, "unknown flag --benchmarks. Did you mean --eval_dataset?"),
    (["train", "--resume", "runs/nothing"], 2, "no config.yaml there"),
    (["train", "--model", "runs/nonexistent"], 1, "model 'runs/nonexistent': no such directory"),
    (["train", "--dataset", "missing.jsonl"], 1, "dataset file 'missing.jsonl' does not exist"),
    (["train", "--dataset", "{words}", "--prompt_template", "{Bdy} {Question}"], 1,
     "names the field {Bdy}, which words.jsonl does not have; its fields are Body, Question, Answer, problem. "
     "Did you mean {Body}?"),
    (["train", "--prompt_template", "{problem}"], 2, "--prompt_template apply to --dataset FILE or a named dataset"),
    (["eval", "--model", "tiny", "--benchmarks", "math5000"], 1, "unknown benchmark 'math5000'"),
    (["eval", "--model", "tiny", "--backend", "vlm"], 2, "Did you mean vllm?"),
    (["eval", "--model", "tiny", "--tempreature", "1"], 2, "unknown argument --tempreature. Did you mean --temperature?"),
    (["eval", "--model", "tiny", "--dataset", "mine.jsonl"], 2, "unknown argument --dataset. Did you mean --benchmarks?"),
    (["eval", "--model", "tiny", "--eval-size", "8"], 2, "unknown argument --eval-size. Did you mean --limit?"),
    (["eval", "--model", "runs/nonexistent", "--benchmarks", "arithmetic"], 1, "no such directory"),
    (["eval", "--model", "tiny", "--benchmarks", "math500", "--data-dir", "no/such/dir"], 1,
     "benchmark data dir no/such/dir (--data-dir) does not exist"),
    (["eval", "--model", "tiny", "--benchmarks", "{lists}"], 1,
     "lists: none of its 3 row(s) can be used; 3 of them: 'final_answer' is an empty list"),
    (["compare", "--credits", "none,gradiant"], 2, "Did you mean gradient?"),
]


@pytest.mark.parametrize("argv, status, expected", CASES, ids=[" ".join(c[0][:3]) for c in CASES])
def test_expected_errors_are_one_line(argv, status, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OARL_DEBUG", raising=False)
    files = {"yaml": "bad.yaml", "words": "words.jsonl", "lists": "lists.jsonl"}
    (tmp_path / "bad.yaml").write_text("learnig_rate: 0.1\n")
    jsonl(tmp_path / "words.jsonl", [{"Body": "Dan has 3.", "Question": "He gets 1. How many?", "Answer": 4}])
    jsonl(tmp_path / "lists.jsonl", [{"problem": f"p{i}", "final_answer": []} for i in range(3)])
    fill = lambda text: text.replace("{yaml}", files["yaml"]).replace("{words}", files["words"]).replace(  # noqa: E731
        "{lists}", files["lists"])
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


@pytest.mark.parametrize("preset, from_python, expected", [(None, False, "PASSIVE"), ("ACTIVE", False, "ACTIVE"),
                                                           (None, True, "unset")])
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
