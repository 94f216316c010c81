"""Shared fixtures: a tiny character-level Qwen2 language model, built and briefly trained in-process.

The model is ``oarl.models.tiny``'s (its character tokenizer, :func:`~oarl.models.tiny.build_tiny` with the
small :data:`FIXTURE_TINY` shape, saved with :func:`~oarl.models.tiny.save_tiny`), so the tests train the
tokenizer and model that the package ships. It learns the format ``Q: a+b=?\nA: a+b=c. The answer is c.``
(with some wrong sums) in a few seconds, so that sampled completions are parsable and a group of them has
mixed rewards: exactly what the trainer and estimator tests need, with no download.

No test may depend on which tests ran before it: every test starts from the same global random state
(``_seeded``), nothing changes the thread count for longer than one test (``one_thread``), and the fixture
model is trained with a fixed seed and one thread, so that it is the same whatever ran before and on any
machine. The suite runs in a random order (pytest-randomly; ``-p no:randomly`` turns it off).

Benchmark data: ``$OARL_DATA_DIR``, else ``../shared/data/benchmarks`` beside the repository. Tests that need
it skip without it, except under CI (``CI=true``), where a missing data directory is a failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import re
from pathlib import Path

import pytest
import torch

from oarl.models.tiny import TinyConfig, build_tiny, save_tiny

IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
DATA_DIR = Path(
    os.environ.get("OARL_DATA_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "benchmarks"
)


@pytest.fixture
def data_dir() -> Path:
    """The benchmark data directory; skips without it, fails under CI."""
    if DATA_DIR.is_dir():
        return DATA_DIR
    message = f"no benchmark data at {DATA_DIR} (set OARL_DATA_DIR)"
    if IN_CI:
        pytest.fail(f"CI=true and {message}")
    pytest.skip(message)


needs_data = pytest.mark.usefixtures("data_dir")


def _user_namespaces() -> bool:
    import shutil
    import subprocess

    return (
        shutil.which("unshare") is not None
        and subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0
    )


# A real full disk without root: a small tmpfs mounted in a user and mount namespace (`unshare -rm`)
needs_user_namespaces = pytest.mark.skipif(
    not _user_namespaces(), reason="needs `unshare -rm` (user and mount namespaces) to mount a small tmpfs"
)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global random state, whatever ran before it."""
    random.seed(0)
    torch.manual_seed(0)


@contextlib.contextmanager
def threads(n: int):
    """torch uses n threads inside the block; the previous count is restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """One torch thread for the test (tiny models run faster without threading overhead)."""
    with threads(1):
        yield


def addition_example(rng: random.Random, wrong_frac: float = 0.2) -> tuple[str, str, str]:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    c = a + b
    shown = c + rng.choice([-1, 1]) if rng.random() < wrong_frac else c
    return f"Q: {a}+{b}=?\nA: ", f"{a}+{b}={shown}. The answer is {shown}.", str(c)


# The fixture model's shape: 2 blocks of width 64 (the default tiny model has 4 of width 128), trained in seconds.
FIXTURE_TINY = TinyConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, max_position_embeddings=128)


def train_tiny_lm(steps: int = 300, seed: int = 0):
    """The same weights whatever ran before and on any machine (own seed, one thread, global RNG untouched)."""
    rng = random.Random(seed)
    with torch.random.fork_rng(devices=[]), threads(1):
        torch.manual_seed(seed)
        model, tokenizer = build_tiny(dataclasses.replace(FIXTURE_TINY, seed=seed))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(steps):
            texts = [p + c for p, c, _ in (addition_example(rng) for _ in range(32))]
            # right padding: every training sequence starts at position 0
            batch = tokenizer(
                [t + tokenizer.eos_token for t in texts], return_tensors="pt", padding=True, padding_side="right"
            )
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            model(**batch, labels=labels).loss.backward()
            opt.step()
            opt.zero_grad()
    return model.eval(), tokenizer


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """Directory of a saved tiny trained model and its tokenizer (:func:`oarl.models.tiny.save_tiny`; read it with
    :func:`oarl.models.tiny.load_tiny`, ``AutoTokenizer`` or ``oarl --model DIR``)."""
    path = tmp_path_factory.mktemp("tiny_lm")
    save_tiny(*train_tiny_lm(), path)
    return path


def addition_prompts(n: int, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": p, "answer": gold} for p, _, gold in (addition_example(rng) for _ in range(n))]


_ANSWER = re.compile(r"The answer is (-?\d+)")


def addition_reward(completions, answer, **kwargs):
    out = []
    for completion, gold in zip(completions, answer):
        m = _ANSWER.findall(completion)
        out.append(float(bool(m) and m[-1] == gold))
    return out


# The credit tests' BPE tokenizer and random model (tests/test_credit_fixtures.py says why not the tiny model's),
# one of each per test module.
@pytest.fixture(scope="module")
def tok():
    from test_credit_fixtures import bpe_tokenizer

    return bpe_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    from test_credit_fixtures import tiny_qwen2

    return tiny_qwen2(len(tok))
