"""The default job (`oarl train`, 40 steps) run twice: once without interruption, once stopped by Ctrl-C (SIGINT)
right after its checkpoint at step K and resumed with the command it printed. Prints the largest difference of
the final parameters, the held-out numbers of both and the wall times. See experiments/resume/README.md.

    python experiments/resume/resume_default_job.py OUT [K] [extra `oarl train` flags]
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

out, k = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 10
extra = sys.argv[3:]
full, cut = out / "full", out / "cut"
oarl = [sys.executable, "-m", "oarl.cli", "train"]

started = time.time()
proc = subprocess.run([*oarl, *extra, "--output_dir", str(full)], capture_output=True, text=True)
assert proc.returncode == 0, proc.stderr[-3000:]
print(f"uninterrupted run: {time.time() - started:.0f} s")

proc = subprocess.Popen([*oarl, *extra, "--output_dir", str(cut)], stderr=subprocess.PIPE, text=True)
while not (cut / f"checkpoint-{k}" / "trainer_state.json").exists():
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    time.sleep(0.05)
proc.send_signal(signal.SIGINT)
sent = time.perf_counter()
stderr = proc.communicate()[1]
print(
    f"stopped {time.perf_counter() - sent:.2f} s after SIGINT, exit status {proc.returncode}: {stderr.splitlines()[-1]}"
)
resumed = subprocess.run([*oarl, "--resume", str(cut)], capture_output=True, text=True)
assert resumed.returncode == 0, resumed.stderr[-3000:]
print("'missing keys' warning on resume:", "missing keys" in resumed.stderr)

a, b = (load_file(d / "final_model" / "model.safetensors") for d in (full, cut))
print("max |parameter difference|:", max((a[n] - b[n]).abs().max().item() for n in a))
for d in (full, cut):
    s = json.loads((d / "summary.json").read_text())
    print(
        d.name,
        {split: round(r["avg"], 4) for split, r in s["heldout_after"].items()},
        f"wall {s['wall_time_s']:.0f} s over {s.get('sessions', 1)} session(s)",
    )
