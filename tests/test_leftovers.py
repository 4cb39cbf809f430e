"""Nothing is left behind: no lock after a failed download, no `.running` marker of a killed cell once the
cell is done, no folder made by `seabench table --results-dir <a folder that does not exist>`. (A cache lock
left by a kill between an entry's rename and its release: tests/test_faulted_runs.py; a local launcher's
jobs after their sweep is killed: tests/test_sweeps.py.)"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from bench import UserError, fetch

CHEAP = ["dataset=digits", "backbone=pixels", "method=linear", "method.grid.penalty=[1.0]", "seeds=1"]


def test_a_failed_download_leaves_no_lock_and_a_good_one_neither(tmp_path):
    dest = tmp_path / "checkpoints" / "weights.pth"
    with pytest.raises(UserError, match="cannot download weights.pth"):
        fetch.download((tmp_path / "nowhere.pth").as_uri(), dest)
    assert list(dest.parent.iterdir()) == []  # no 0-byte weights.pth.lock, no temporary
    source = tmp_path / "published.pth"
    source.write_bytes(b"weights" * 100)
    fetch.download(source.as_uri(), dest)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["weights.pth", "weights.pth.sha256"]


def test_the_marker_of_a_killed_cell_goes_once_the_cell_is_done(seabench, tmp_path):
    from bench.sweep import cells, status

    cell = [*CHEAP, f"results_dir={tmp_path / 'results'}"]
    seabench("run", *cell)
    (config,) = status.expand(cell).configs
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    marker = cells.stem(config).with_suffix(".running")  # its job killed by -9 after the record was written
    marker.write_text(json.dumps({"host": socket.gethostname(), "pid": dead, "job": None, "start": time.time()}))
    assert seabench("status", *cell).stdout.startswith("done")
    assert not marker.exists()


def test_table_of_a_results_dir_that_does_not_exist_makes_no_folder(seabench, tmp_path):
    out = seabench("table", "--results-dir", str(tmp_path / "typo"), check=False)
    assert out.returncode == 2 and "no run records under" in out.stderr
    assert not (tmp_path / "typo").exists()
