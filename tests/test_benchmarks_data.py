"""oarl.data.benchmarks: each shared benchmark file loads with its own schema and its gold answers verify
against themselves through math-verify; malformed rows are reported as file:line and skipped."""

import json
import re

import pytest

from oarl.data.benchmarks import BENCHMARKS, load_benchmark
from oarl.rewards import verify

from conftest import DATA_DIR, needs_data

ROWS = {"math500": 500, "gsm8k": 1319, "aime24": 30, "amc23": 40, "minerva": 272}  # from the data README


@needs_data
@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_loads_and_gold_verifies_against_itself(name):
    rows = load_benchmark(name, data_dir=DATA_DIR)
    assert len(rows) == ROWS[name] and rows.skipped == []
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        assert isinstance(r["problem"], str) and r["problem"].strip()
        assert isinstance(r["answer"], str) and r["answer"].strip()
        assert re.fullmatch(r".+\.jsonl:\d+", r["source"])
    # every pair goes through math-verify (the fast path would make this trivial)
    failures = [(r["source"], r["answer"]) for r in rows if not verify(r["answer"], r["answer"], use_fast_path=False)]
    rate = 1 - len(failures) / len(rows)
    print(f"\n{name}: gold-vs-gold {rate:.2%} of {len(rows)} rows")
    for source, gold in failures:
        print(f"  FAIL {source}: math-verify cannot verify gold {gold!r} against itself")
    assert rate >= 0.99


@needs_data
def test_each_schema_maps_its_gold_answer():
    assert load_benchmark("gsm8k", data_dir=DATA_DIR, limit=1)[0]["answer"] == "18"  # after ####
    assert load_benchmark("amc23", data_dir=DATA_DIR, limit=1)[0]["answer"] == "27"  # float 27.0
    assert load_benchmark("minerva_math", data_dir=DATA_DIR, limit=1)[0]["answer"] == "1.6"  # last \boxed{}
    assert load_benchmark("aime24", data_dir=DATA_DIR, limit=1)[0]["answer"] == "204"
    row = load_benchmark("math500", data_dir=DATA_DIR, limit=1)[0]
    assert row["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)" and row["source"].endswith("math500.jsonl:1")
    assert len(load_benchmark("gsm8k", data_dir=DATA_DIR, limit=7)) == 7


@needs_data
def test_data_dir_from_environment(monkeypatch):
    monkeypatch.setenv("OARL_DATA_DIR", str(DATA_DIR))
    assert len(load_benchmark("aime24")) == 30


def _write(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_malformed_rows_are_reported_with_file_line_and_skipped(tmp_path):
    path = _write(
        tmp_path / "set.jsonl",
        [
            {"problem": "1+1?", "answer": "2"},
            "{not json",
            {"problem": "2+2?"},  # no gold
            {"problem": "", "answer": "3"},  # no problem
            "",  # blank lines are fine
            {"problem": "3+3?", "answer": 6.0},
            {"problem": "4+4?", "answer": None},
        ],
    )
    rows = load_benchmark(str(path))
    assert [r["answer"] for r in rows] == ["2", "6"]
    assert [r["source"] for r in rows] == [f"{path}:1", f"{path}:6"]
    reasons = dict(rows.skipped)
    assert set(reasons) == {f"{path}:2", f"{path}:3", f"{path}:4", f"{path}:7"}
    assert (
        "invalid JSON" in reasons[f"{path}:2"]
        and "answer" in reasons[f"{path}:3"]
        and "problem" in reasons[f"{path}:4"]
    )
    with pytest.raises(ValueError, match=re.escape(f"{path}:3")):
        load_benchmark(str(path), strict=True)


def test_a_row_that_is_not_utf8_or_too_long_is_skipped_alone_with_file_line_and_reason(tmp_path, capsys):
    """Only the bad row is rejected (unless strict); a row over MAX_ROW_BYTES is skipped unread, and a file over
    PROGRESS_BYTES shows a bar while it is read (a 50 MB row stalled `oarl eval` with no output)."""
    from oarl.data.benchmarks import MAX_ROW_BYTES, PROGRESS_BYTES

    path = tmp_path / "set.jsonl"
    huge = json.dumps({"problem": "x" * PROGRESS_BYTES, "answer": "1"}).encode()
    path.write_bytes(
        b'{"problem": "1+1?", "answer": "2"}\n{"problem": "caf\xe9 1+2", "answer": "3"}\n'
        + huge
        + b'\n{"problem": "big", "answer": 1e400}\n{"problem": "2+2?", "answer": "4"}\n'
    )
    rows = load_benchmark(str(path))
    assert [r["answer"] for r in rows] == ["2", "4"] and rows[1]["source"] == f"{path}:5"
    reasons = dict(rows.skipped)
    assert reasons[f"{path}:2"] == "not UTF-8 text: byte 0xe9 at byte 17 of the line (save the file as UTF-8)"
    assert reasons[f"{path}:3"] == (
        f"a row of {len(huge) / 2**20:.1f} MiB, over the {MAX_ROW_BYTES >> 20} MiB limit "
        "of a row (oarl.data.benchmarks.MAX_ROW_BYTES)"
    )
    assert reasons[f"{path}:4"].startswith("'answer' is infinite (JSON's Infinity")
    assert "reading set.jsonl" in capsys.readouterr().err
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: not UTF-8 text")):
        load_benchmark(str(path), strict=True)


def test_jsonl_fields_given_or_detected(tmp_path):
    path = _write(tmp_path / "custom.jsonl", [{"q": "What is 6*7?", "gold": 42, "uid": "a"}])
    rows = load_benchmark(str(path), problem_field="q", answer_field="gold")
    assert rows == [
        {
            "problem": "What is 6*7?",
            "answer": "42",
            "id": "custom/1",
            "source": f"{path}:1",
            "fields": {"q": "What is 6*7?", "gold": 42, "uid": "a"},
        }
    ]
    # a GSM8K-style file and a MATH-style file (gold = last \boxed{} of the solution) are detected
    gsm = _write(tmp_path / "gsm.jsonl", [{"question": "q", "answer": "work\n#### 1,234"}])
    assert load_benchmark(str(gsm))[0]["answer"] == "1,234"
    math = _write(
        tmp_path / "math.jsonl",
        [{"problem": "p", "solution": "so $\\boxed{\\frac{1}{2}}$."}, {"problem": "p", "solution": "none"}],
    )
    rows = load_benchmark(str(math))
    assert [r["answer"] for r in rows] == ["\\frac{1}{2}"] and len(rows.skipped) == 1


def test_gold_answer_lists(tmp_path):
    """Olympiad-style lists: one element is that answer, more are acceptable alternatives; a row that is still
    rejected says why, truly."""
    path = _write(
        tmp_path / "olymp.jsonl",
        [
            {"question": "Half?", "final_answer": ["$\\frac{1}{2}$"]},
            {"question": "Roots of x^2=1?", "final_answer": ["$1$", "$-1$"]},
            {"question": "Empty?", "final_answer": []},
            {"question": "Nested?", "final_answer": [{"value": 3}]},
            {"question": "Blank?", "final_answer": [" "]},
        ],
    )
    rows = load_benchmark(str(path))
    assert [r["answer"] for r in rows] == ["\\frac{1}{2}", ["1", "-1"]]
    assert dict(rows.skipped) == {
        f"{path}:3": "'final_answer' is an empty list",
        f"{path}:4": "'final_answer'[0] is a dict, not an answer: {\"value\": 3}",
        f"{path}:5": "no answer in the list 'final_answer': [\" \"]",
    }


def test_a_problem_split_over_fields_keeps_both_and_says_so(tmp_path, caplog):
    """A story field before the question (SVAMP's Body + Question) is part of the problem; what was chosen, and
    what was left out, is reported once."""
    path = _write(
        tmp_path / "svamp.jsonl",
        [
            {
                "ID": "a",
                "Body": "Dan had $ 4.",
                "Question": "He spent $ 3. How much is left?",
                "Equation": "4-3",
                "Answer": 1.0,
            },
            {"ID": "b", "Body": "", "Question": "What is 2+2?", "Equation": "2+2", "Answer": 4.0},
        ],
    )
    with caplog.at_level("INFO", logger="oarl.data.benchmarks"):
        rows = load_benchmark(str(path))
    assert [r["problem"] for r in rows] == ["Dan had $ 4. He spent $ 3. How much is left?", "What is 2+2?"]
    assert [r["answer"] for r in rows] == ["1", "4"] and rows[0]["fields"]["Equation"] == "4-3"
    reports = [r.getMessage() for r in caplog.records if "problem =" in r.getMessage()]
    assert reports == [
        "svamp: problem = Body + Question, gold answer = Answer; not used: Equation "
        "(a prompt template can name any field)"
    ]
    rows = load_benchmark(str(path), problem_field="Question")  # named: exactly that field
    assert rows[0]["problem"] == "He spent $ 3. How much is left?"


def test_a_file_whose_every_row_is_skipped_is_an_error(tmp_path):
    path = _write(tmp_path / "lists.jsonl", [{"problem": f"p{i}", "answer": []} for i in range(15)])
    with pytest.raises(ValueError) as info:
        load_benchmark(str(path))
    assert (
        str(info.value)
        == f"lists: none of its 15 row(s) can be used; 15 of them: 'answer' is an empty list (first: {path}:1)"
    )
    with pytest.raises(ValueError, match="no rows"):
        load_benchmark(str(_write(tmp_path / "empty.jsonl", [""])))


def test_a_missing_data_dir_fails_at_once(tmp_path, monkeypatch):
    for where in ("argument", "environment"):
        monkeypatch.setenv("OARL_DATA_DIR", str(tmp_path / "nope") if where == "environment" else str(tmp_path))
        with pytest.raises(FileNotFoundError, match="does not exist"):
            load_benchmark("math500", data_dir=str(tmp_path / "nope") if where == "argument" else None)


def test_hub_code_path_with_a_local_dataset_folder(tmp_path):
    """A name that is not a file goes to datasets.load_dataset (the hub path; here a local folder)."""
    folder = tmp_path / "my_set"
    folder.mkdir()
    _write(folder / "test.jsonl", [{"Problem": "1+2?", "Answer": 3}, {"Problem": "2+2?", "Answer": 4}])
    rows = load_benchmark(str(folder), split="test")
    assert [(r["problem"], r["answer"]) for r in rows] == [("1+2?", "3"), ("2+2?", "4")]
    assert rows[0]["source"].startswith("hf:")


def test_unknown_names_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="unknown benchmark"):
        load_benchmark("not_a_benchmark")
    with pytest.raises(FileNotFoundError, match="no such benchmark file"):
        load_benchmark(str(tmp_path / "missing.jsonl"))
