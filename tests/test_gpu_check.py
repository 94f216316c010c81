"""The GPU check's code (benchmarks/gpu_check.py) on tiny shapes on the CPU (--smoke), so that it cannot rot between
the rare runs on a GPU: every part runs and writes its report."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke(tmp_path):
    report = tmp_path / "gpu_check.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--output", str(report)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(report.with_suffix(".json").read_text())
    parts = results["parts"]
    assert sorted(parts) == ["a", "b", "c", "d"] and all(p["status"] == "ok" for p in parts.values())
    text = report.read_text()
    assert "# oarl GPU check (smoke" in text and "FAILED" not in text

    # (a) the default job ran on the device oarl.devices picked here, end to end
    assert parts["a"]["steps"] == 1 and parts["a"]["device"].startswith("cpu")
    # (b) every estimator trained through OARTrainer in bf16 with checkpointing, and reshaped some completions
    estimators = parts["b"]["estimators"]
    assert set(estimators) == {"none", "gradient", "perturbation", "entropy", "grail", "rollout"}
    for name, row in estimators.items():
        assert row["steps"] == 2 and row["bf16"] and row["loss_finite"] and row["device"] == "cpu", (name, row)
        assert (row["reshaped"] or 0) > 0 if name != "none" else not row["reshaped"], (name, row)
    # (c) oarl eval's HF backend scored the trained model
    assert parts["c"]["results"]["benchmarks"]["arithmetic"]["problems"] == 4
    # (d) every pass of every cell, with its ratio to the training step
    cells = parts["d"]["cells"]
    assert len(cells) == 2 and not parts["d"]["skipped"]
    for cell in cells:
        ratios = {name: p["x_time"] for name, p in cell["passes"].items() if "x_time" in p}
        assert len(ratios) == 10 and all(r > 0 for r in ratios.values()), cell
