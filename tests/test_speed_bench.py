"""benchmarks/speed.py's probe lines at a tiny size, so that the script the README's figures come from cannot
rot: every shape's line comes out, with its ratio, its pick and its gap to the cold-started optima."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import speed


@pytest.mark.heavy
def test_the_probe_lines_come_out_for_every_shape(capsys):
    speed.main(["--only", "linear", "--linear-scale", "0.01", "--linear-gap-points", "2", "--linear-early-end", "3"])
    out = capsys.readouterr().out
    for shape in speed.LINEAR_SHAPES:
        verdict = next(line for line in out.splitlines() if line.startswith(f"[linear-{shape}]"))
        assert re.search(r"ratio \d+\.\d+x", verdict), verdict
        detail = next(line for line in out.splitlines() if line.startswith(f"linear-{shape}: ") and "gap" in line)
        gaps = re.search(r"objective (\S+) relative, weights (\S+) relative", detail)
        # nan: a cold reference fit did not converge in its budget (the line says so); never a wild gap
        assert gaps and all(math.isnan(float(g)) or float(g) < 1 for g in gaps.groups()), detail
        assert f"linear-{shape}: picked on val: ours penalty" in out
        assert re.search(rf"linear-{shape}: with early_end=3 .*\d+\.\d+x; penalties fitted: ours \d+, sklearn \d+ of 45",
                         out), out
