"""Rerun a kernel test file's Triton tests in a fresh process that imports triton in interpreter mode
(TRITON_INTERPRET=1 must be set before triton is first imported, so the main test process cannot)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

SUMMARY = re.compile(r"^=*\s*(\d+) passed\b.*$", re.MULTILINE)


def run_interpreted(test_file: str, select: str, *, timeout: int) -> tuple[int, str]:
    """(tests passed, pytest's summary line) of `pytest test_file -k select` in interpreter mode.

    The summary is read from stdout alone: whatever the process writes to stderr (a library's
    warning at exit) must not hide it."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file, "-k", select],
        env=env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    summaries = list(SUMMARY.finditer(proc.stdout))
    assert summaries, f"no 'N passed' summary in the interpreter-mode run's output:\n{output[-6000:]}"
    return int(summaries[-1].group(1)), summaries[-1].group(0).strip()
