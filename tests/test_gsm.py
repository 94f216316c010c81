"""Training data by name: gsm-symbolic (splits disjoint), local JSONL (malformed rows as file:line), hub
datasets' gold answers (with a stand-in for the hub), and the unknown-name message."""

from __future__ import annotations

import json

import datasets
import pytest

from oarl.data import DATASET_CHOICES, load_train_dataset
from oarl.data.gsm import INSTRUCTION, gsm_symbolic, gsm_symbolic_rows, in_test_split


def _questions(rows):
    return {r["question"] for r in rows}


def test_gsm_symbolic_dataset_format():
    ds = gsm_symbolic(8, seed=0, split="train")
    assert isinstance(ds, datasets.Dataset) and ds.column_names == ["prompt", "answer"] and len(ds) == 8
    row = ds[0]
    assert [m["role"] for m in row["prompt"]] == ["user"]
    assert row["prompt"][0]["content"].endswith(INSTRUCTION)
    for answer in ds["answer"]:
        float(answer)  # gold answers are numbers written as strings
    assert gsm_symbolic(8, seed=0, split="train")["prompt"] == ds["prompt"]  # seeded
    assert gsm_symbolic(8, seed=1, split="train")["prompt"] != ds["prompt"]


def test_gsm_symbolic_splits_are_disjoint():
    train = gsm_symbolic_rows(600, seed=0, split="train")
    for test_seed in (0, 1):
        test = gsm_symbolic_rows(150, seed=test_seed, split="test")
        assert len(_questions(test)) == 150 and all(in_test_split(r["question"]) for r in test)
        assert not _questions(train) & _questions(test)
    assert len(_questions(train)) == 600 and not any(in_test_split(r["question"]) for r in train)
    with pytest.raises(ValueError, match="split"):
        gsm_symbolic_rows(1, split="validation")


def test_registry_gsm_symbolic_plain_text():
    ds = load_train_dataset("gsm-symbolic", split="test", size=4, seed=3, conversational=False, instruction="")
    assert len(ds) == 4 and all(isinstance(p, str) for p in ds["prompt"])
    assert ds["prompt"] == [r["question"] for r in gsm_symbolic_rows(4, seed=3, split="test")]


def test_registry_arithmetic():
    plain = load_train_dataset("arithmetic", size=3, conversational=False)
    assert plain["prompt"][0].startswith("Q: ") and plain["prompt"][0].endswith("=?\nA: ")
    chat = load_train_dataset("arithmetic", size=3)
    assert chat["answer"] == plain["answer"] and chat["prompt"][0][0]["role"] == "user"


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_local_jsonl(tmp_path):
    path = write_jsonl(
        tmp_path / "bench.jsonl",
        [{"question": "What is 6*7?", "gold": 42}, "", {"question": "What is 1/2?", "gold": "\\frac{1}{2}", "id": 7}],
    )
    ds = load_train_dataset(str(path), problem_field="question", answer_field="gold")
    assert ds["answer"] == ["42", "\\frac{1}{2}"]
    assert ds["prompt"][0][0]["content"].startswith("What is 6*7?\n") and "\\boxed{}" in ds["prompt"][0][0]["content"]
    assert len(load_train_dataset(path, problem_field="question", answer_field="gold", size=1)) == 1


@pytest.mark.parametrize(
    "bad_line, reason",
    [
        ('{"problem": "1+1?", "answer": 2', "JSON"),
        ('["1+1?", 2]', "JSON object"),
        ('{"problem": "1+1?"}', "'answer'"),
        ('{"problem": "", "answer": 2}', "'problem'"),
        ('{"problem": "1+1?", "answer": null}', "'answer'"),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path, bad_line, reason):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "2+2?", "answer": 4}, "", bad_line])
    with pytest.raises(ValueError) as info:
        load_train_dataset(str(path))
    assert f"{path}:3" in str(info.value) and reason in str(info.value)


def test_wrong_field_name_lists_a_few_rows(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": f"{i}+1?", "answer": i + 1} for i in range(30)])
    assert len(load_train_dataset(str(path))) == 30  # detected, as `oarl eval` does
    with pytest.raises(ValueError) as info:
        load_train_dataset(str(path), problem_field="problem")
    assert str(info.value) == f"q: none of its 30 row(s) can be used; 30 of them: no 'problem' text (first: {path}:1)"
    path = write_jsonl(
        tmp_path / "some.jsonl", [{"question": f"{i}+1?", "answer": i + 1 if i % 2 else None} for i in range(30)]
    )
    message = str(pytest.raises(ValueError, load_train_dataset, str(path)).value)  # training refuses broken rows
    assert f"{path}:1:" in message and "'answer'" in message and "and 5 more" in message
    assert len(message.splitlines()) == 12


def test_missing_jsonl_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_train_dataset(str(tmp_path / "nope.jsonl"))


def test_unknown_dataset_lists_choices():
    with pytest.raises(ValueError) as info:
        load_train_dataset("gsm-symbolc")
    message = str(info.value)
    assert all(repr(choice) in message for choice in DATASET_CHOICES) and ".jsonl" in message
    assert "Did you mean 'gsm-symbolic'" in message


def test_hub_datasets_gold_answers(monkeypatch):
    fake = {
        "openai/gsm8k": datasets.Dataset.from_dict(
            {"question": ["Tom has 3 apples..."], "answer": ["3 + 1,000 = <<3+1000=1003>>1003\n#### 1,003"]}
        ),
        "DigitalLearningGmbH/MATH-lighteval": datasets.Dataset.from_dict(
            {"problem": ["Find x.", "No box here."], "solution": ["So $x = \\boxed{\\frac{1}{2}}$.", "It is 3."]}
        ),
    }
    calls = []

    def load_dataset(path, config=None, split=None):
        calls.append((path, config, split))
        return fake[path]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    gsm8k = load_train_dataset("gsm8k")
    assert gsm8k["answer"] == ["1003"] and calls[-1] == ("openai/gsm8k", "main", "train")
    math = load_train_dataset("math", split="test")
    assert math["answer"] == ["\\frac{1}{2}"] and "\\boxed{}" in math["prompt"][0][0]["content"]

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match="work offline"):
        load_train_dataset("gsm8k")
