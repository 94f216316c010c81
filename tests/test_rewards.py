"""oarl.rewards: the verifiable math reward, its fast path, math-verify in a worker, bounded time per item."""

import signal
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oarl import rewards
from oarl.rewards import accuracy, answer_key, completion_text, gold_answers, is_correct, normalize_gold, verify

PATHOLOGICAL = "10^{10^{10^{10}}}"  # sympy tries to evaluate it and never returns


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("18", "18"),
        ("18.0", "18"),
        ("1,000", "1000"),
        ("$27$", "27"),
        ("0.5", "\\frac{1}{2}"),
        ("\\frac12", "1/2"),
        ("\\dfrac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}"),
        ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("50\\%", "50"),
        ("1,000 dollars", "1000"),  # a number with a unit in words
        ("\\$18 per day", "18"),
    ],
)
def test_verify_equivalent_answers(pred, gold):
    assert verify(pred, gold)


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("17", "18"),
        ("18.5", "18"),
        ("6 pi", "6"),
        ("5 and 6", "5"),
        ("\\frac{1}{3}", "0.5"),
        ("(1, 2)", "(2, 1)"),
        ("x^2", "x^3"),
        ("", "3"),
        ("3", ""),
    ],
)
def test_verify_wrong_answers(pred, gold):
    assert not verify(pred, gold)


def test_accuracy_and_format_on_right_wrong_and_missing_answers():
    completions = [
        "2+2=4. The answer is 4.",
        "2+2=5. The answer is 5.",
        "I do not know",
        "so \\boxed{\\frac{1}{2}}",
        "\\boxed{3",  # truncated: no answer
        "#### 7",
    ]
    gold = ["4", "4", "4", 0.5, "3", "The sum is 3+4=7.\n#### 7"]
    assert accuracy(completions, gold) == [1.0, 0.0, 0.0, 1.0, 0.0, 1.0]
    assert rewards.format(completions) == [1.0, 1.0, 0.0, 1.0, 0.0, 1.0]


def test_missing_gold_is_unscorable_none():
    assert accuracy(["The answer is 4.", "The answer is 4.", "The answer is 4."], [None, "", "  "]) == [
        None,
        None,
        None,
    ]


def test_conversational_completions():
    conv = [
        [{"role": "assistant", "content": "The answer is 12."}],
        [{"role": "assistant", "content": [{"type": "text", "text": "\\boxed{3}"}]}],
    ]
    assert completion_text(conv[1]) == "\\boxed{3}"
    assert accuracy(conv, ["12", "4"]) == [1.0, 0.0]
    assert rewards.format(conv) == [1.0, 1.0]


def test_normalize_gold():
    assert normalize_gold(27.0) == "27"
    assert normalize_gold(2.5) == "2.5"
    assert normalize_gold(204) == "204"
    assert normalize_gold("Janet sells 9 eggs.\n#### 18") == "18"
    assert normalize_gold(" $\\frac{1}{2}$ ") == "\\frac{1}{2}"
    assert normalize_gold(float("nan")) is None and normalize_gold(None) is None and normalize_gold("") is None


def test_gold_lists_are_sets_of_acceptable_answers():
    """A one-element list is that answer; a longer list is a set: any match scores, others do not."""
    assert gold_answers(["$\\frac{1}{2}$"]) == ["\\frac{1}{2}"] and gold_answers(" 3 ") == ["3"]
    assert gold_answers(["1", "$-1$", "1", "", None]) == ["1", "-1"] and gold_answers([]) == gold_answers(None) == []
    completions = ["\\boxed{\\dfrac12}", "\\boxed{-1}", "\\boxed{1}", "\\boxed{2}", "\\boxed{0.5}"]
    golds = [["$\\frac{1}{2}$"], ["1", "-1"], ["1", "-1"], ["1", "-1"], []]
    assert accuracy(completions, golds) == [1.0, 1.0, 1.0, 0.0, None]
    assert is_correct("\\boxed{-1}", ("1", "-1")) and not is_correct("\\boxed{3}", ["1", "-1"])


def test_is_correct_and_answer_key():
    assert is_correct("... so the answer is \\boxed{27}", 27.0)
    assert not is_correct("no answer here", "27")
    assert answer_key("1,000.0") == answer_key("1000") == "1000"
    assert answer_key("$x + 1$") == "x+1"


@settings(max_examples=40, deadline=None)
@given(st.integers(-(10**6), 10**6), st.integers(-(10**6), 10**6))
def test_integer_answers_property(a, b):
    """Integers are decided by the fast path (no worker): right iff equal, in any spelling."""
    assert accuracy([f"The answer is {a:,}."], [str(b)]) == [float(a == b)]
    assert verify(f"{a}.0", str(a))


def _warm_worker():
    # starts the worker (fractions are decided in-process: force math-verify): its start-up is not an item's time
    assert verify("\\frac{2}{4}", "\\frac{1}{2}", use_fast_path=False)


def test_pathological_expression_from_a_thread_is_bounded_and_scores_zero():
    """math-verify's own SIGALRM timeouts fail outside the main thread; ours must not, and must not hang."""
    _warm_worker()
    out, elapsed = {}, {}

    def score():
        t0 = time.perf_counter()
        out["bad"] = accuracy([f"The answer is {PATHOLOGICAL}."], ["5"], verify_timeout_s=1.0)
        elapsed["bad"] = time.perf_counter() - t0
        out["good"] = accuracy(
            ["The answer is \\sqrt{4}/4.", "The answer is \\sqrt{9}."], ["0.5", "4"], verify_timeout_s=1.0
        )

    timeouts_before = rewards.stats["timeouts"]
    thread = threading.Thread(target=score)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the reward hung"
    assert out["bad"] == [0.0]
    assert elapsed["bad"] < 1.0 + 1.5, elapsed  # the per-item deadline (plus slack for a busy machine)
    assert rewards.stats["timeouts"] == timeouts_before + 1
    assert out["good"] == [1.0, 0.0]  # the worker was restarted


def test_worker_that_dies_is_restarted():
    _warm_worker()
    rewards._worker.proc.kill()  # the worker dies (e.g. killed for memory)
    assert not verify("\\frac{1}{3}", "\\frac{1}{2}", use_fast_path=False)  # scores 0 or is scored by a new worker
    assert verify("\\frac{1}{3}", "\\frac{2}{6}", use_fast_path=False)


def test_many_threads_at_once():
    _warm_worker()
    results = [None] * 4

    def work(i):
        results[i] = accuracy([f"\\boxed{{\\frac{{\\sqrt{{{i * i}}}}}{{2}}}}", "\\boxed{x}"], [str(i / 2), "y"])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [[1.0, 0.0]] * 4


def test_think_format_is_the_r1_zero_structure():
    """open-r1's format_reward / R1-Zero's: <think>...</think> then <answer>...</answer>, nothing else; the opening
    <think> may be in the prompt (DeepSeek-R1's chat template, TinyZero's prompt)."""
    right = [
        "<think>\n2 + 2 = 4\n</think>\n<answer>\n4\n</answer>",
        "<think>2+2=4</think><answer>4</answer>",
        " Let me solve this step by step. 2 + 2 = 4 </think> <answer> 4 </answer>\n",
        [{"role": "assistant", "content": "<think>x</think>\n<answer>\\boxed{4}</answer>"}],
    ]
    wrong = [
        "<think>2 + 2 = 4</think>",
        "<answer>4</answer>",
        "<think>a</think><answer>4</answer> and more text",
        "<think>a</think><answer>4",
        "<think>a</think><answer> </answer>",
        "<think>a<think>b</think><answer>4</answer>",
        "<think>a</think><answer>4</answer><answer>5</answer>",
        "The answer is 4.",
        "<think>a</think>text<answer>4</answer>",
    ]
    assert rewards.think_format(right) == [1.0] * len(right)
    assert rewards.think_format(wrong) == [0.0] * len(wrong)
    assert accuracy(right, ["4"] * len(right)) == [1.0] * len(right)  # the answer inside the tags is what is scored


@pytest.mark.parametrize(
    "pred, gold, other",
    [
        ("5, 5", "5", "6, 5"),
        ("0.5, \\frac12", "\\frac{1}{2}", "0.5, \\frac13"),
        ("15\\frac{39}{40}, \\frac{639}{40}", "\\frac{639}{40}", "15, \\frac{639}{40}"),
    ],
)
def test_a_list_is_a_set_restating_one_answer_or_not(pred, gold, other):
    """Two boxes joined by "or" that restate one answer (MATH's ``\\boxed{15\\frac{39}{40}}, or
    \\boxed{\\frac{639}{40}}``) are that answer; a list with another item is not (math-verify's sets)."""
    assert verify(pred, gold) and verify(gold, pred)
    assert not verify(other, gold) and not verify(gold, other)


# ----------------------------------------------------------------------------------------------------------
# the worker dies with its parent, whatever the parent died of


def _gone(pid: int) -> bool:
    """The process no longer runs: it does not exist, or it is a zombie (dead, not yet reaped by init)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _wait_gone(pid: int, within_s: float) -> float:
    t0 = time.perf_counter()
    while not _gone(pid):
        assert time.perf_counter() - t0 < within_s, f"process {pid} still runs {within_s} s after its parent died"
        time.sleep(0.05)
    return time.perf_counter() - t0


# Starts the worker from a thread that ends at once (the worker must outlive the thread: Linux's parent-death signal
# belongs to the thread that started a process), gives it an item it works on for minutes, prints its pid.
PARENT = r"""
import sys, threading, time
from oarl import rewards
starter = threading.Thread(target=lambda: rewards.verify("\\frac{2}{4}", "\\frac{1}{2}", use_fast_path=False))
starter.start(); starter.join()
worker = rewards._worker.proc.pid
threading.Thread(target=lambda: rewards.verify(sys.argv[1], "3", timeout_s=600, use_fast_path=False), daemon=True).start()
print(worker, flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_worker_dies_with_a_parent_killed_by_sigkill():
    """A real parent process is killed (SIGKILL: nothing of it runs after) while its worker is busy on a hard item:
    the worker is gone within seconds, instead of running on for minutes reparented to init."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, PATHOLOGICAL], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        busy = _cpu_ticks(worker)
        time.sleep(1.0)
        assert _cpu_ticks(worker) > busy and parent.poll() is None  # on the hard item, after its starter thread ended
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        assert _wait_gone(worker, within_s=5.0) < 5.0
    finally:
        parent.kill()
        parent.wait()


# The fallback where Linux's signal is not there: a child that only watches its parent (watch_parent) and computes.
WATCHER = r"""
import runpy, sys
runpy.run_path(sys.argv[1])["watch_parent"](int(sys.argv[2]), 0.1)
print("watching", flush=True)
while True:
    sum(range(10**6))  # busy, as on a hard item
"""
MIDDLE = r"""
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], str(os.getpid())])
print(child.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_worker_watching_its_parent_dies_with_it_without_the_linux_signal():
    parent = subprocess.Popen(
        [sys.executable, "-c", MIDDLE, WATCHER, str(rewards.WORKER_SCRIPT)], stdout=subprocess.PIPE, text=True
    )
    try:
        child = int(parent.stdout.readline())
        assert parent.stdout.readline() == "watching\n"
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        assert _wait_gone(child, within_s=5.0) < 5.0
    finally:
        parent.kill()
        parent.wait()


# ----------------------------------------------------------------------------------------------------------
# a degenerate completion gets a verdict, never an error

# Longer than Python's 4,300-digit limit on int <-> str conversion, as a repetition loop writes them; and answers
# too long to read at all.
DEGENERATE = [
    "9" * 5000,
    "-" + "1" * 4400 + ".5",
    "\\frac{%s}{3}" % ("7" * 5000),
    "1" * 4400 + "/2",
    "12 " + "1" * 4400 + "/" + "2" * 4401,
    "1" * 4400 + "\\%",
    "3.2" + "0" * 4400 + " million",
    "1011" * 1200 + "_3",
    ", ".join(["1"] * 3000),
    "x+" * 20000 + "1",
    "\\sqrt{" * 3000 + "2" + "}" * 3000,
]


@pytest.mark.parametrize("answer", DEGENERATE, ids=lambda a: f"{a[:12]}..{len(a)}")
def test_degenerate_answers_get_a_verdict(answer):
    from oarl.evaluate import majority_correct

    assert accuracy([f"\\boxed{{{answer}}}", "The answer is 3."], ["3", answer]) == [0.0, 0.0]
    assert is_correct(f"The answer is ${answer}$.", "3") is False
    assert verify(answer, "3") is False and verify("3", answer) is False
    assert verify(answer, answer)  # the very same text needs no reading
    assert rewards.value_key(answer) is None
    assert answer_key(answer) == answer  # unread
    assert rewards.group_by_value([answer, "3", answer]) == [0, 1, 0]
    assert majority_correct([answer, answer, "3"], [False, False, True]) is False  # two equal wrong answers outvote


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4900), st.sampled_from(["{}", "-{}", "{}.5", "{}/7", "\\frac{{{}}}{{7}}", "{}\\%", "1{}e5"]))
def test_long_numbers_are_exact_within_the_answer_bound_and_wrong_past_it(digits, form):
    """In this process, never raising: within MAX_ANSWER_CHARS a long number is compared exactly (it differs from
    the same number with one digit less), past it it is wrong, even against itself written another way."""
    from oarl.notation import MAX_ANSWER_CHARS

    worker_calls = rewards.stats["math_verify"]
    number, shorter = form.format("7" * digits), form.format("7" * (digits - 1) or "0")
    assert not verify(number, shorter) and not verify(shorter, number)
    # the same number with a space between two of its digits (a thousands separator; "17 e5" is not "17e5"): read
    # when both are within the bound, wrong when either is past it
    spaced = number.replace("77", "7 7", 1)
    assert verify(number, spaced) == (len(spaced) <= MAX_ANSWER_CHARS)
    assert rewards.stats["math_verify"] == worker_calls  # the fast path decided
