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
    assert cp.returncode == 0, why(out)
    print(out[-1500:])


def why(out):
    """What a failed smoke run says about its failure: every line that
    names one (from anywhere in the output, which the tail alone cut off
    once), then the tail."""
    words = ("error", "fail", "did not", "already", "traceback", "timed out", "exception")
    said = [l for l in out.splitlines()
            if any(w in l.lower() for w in words) and "| errors |" not in l]
    return "\n".join(said[:60]) + "\n---- tail ----\n" + out[-2500:]


def test_benchmark_without_a_build_says_so():
    with tempfile.TemporaryDirectory() as empty:
        cp = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run"), "--smoke",
                             "--build", empty], capture_output=True, timeout=60)
    out = cp.stdout.decode(errors="replace") + cp.stderr.decode(errors="replace")
    assert cp.returncode != 0, out
    assert "no waygate binary at %s/waygate; run make build" % empty in out, out
