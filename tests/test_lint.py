"""ruff runs as part of the test suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_ruff_clean():
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-m", "ruff", "check", str(root)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
