"""The benchmark harness cannot rot: `benchmarks/run --smoke` (one short run
per proxy and per scenario; answers checked, speed not judged) must pass.
Skipped in sanitizer builds: it measures nothing there."""

import os
import subprocess
import sys
import tempfile

from wglib import BUILD, ROOT, SANITIZED


def test_benchmark_smoke_mode_passes():
    if SANITIZED:
        print("skipped: sanitizer build")
        return
    cp = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run"), "--smoke",
                         "--build", BUILD], capture_output=True, timeout=300)
    out = cp.stdout.decode(errors="replace") + cp.stderr.decode(errors="replace")
    assert cp.returncode == 0, out[-4000:]
    print(out[-1500:])


def test_benchmark_without_a_build_says_so():
    with tempfile.TemporaryDirectory() as empty:
        cp = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run"), "--smoke",
                             "--build", empty], capture_output=True, timeout=60)
    out = cp.stdout.decode(errors="replace") + cp.stderr.decode(errors="replace")
    assert cp.returncode != 0, out
    assert "no waygate binary at %s/waygate; run make build" % empty in out, out
