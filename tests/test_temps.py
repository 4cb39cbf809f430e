"""Temporaries: written beside their target, renamed on success, gone on failure, swept when their process is."""

import errno
import os
import subprocess
import sys

import pytest

from bench import UserError, temps


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped): what kill -9 leaves behind."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def test_atomic_renames_on_success_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "a.json"
    with temps.atomic(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".a.json.tmp-")
        tmp.write_text("done")
    assert target.read_text() == "done" and sorted(p.name for p in target.parent.iterdir()) == ["a.json"]
    with pytest.raises(KeyboardInterrupt), temps.atomic(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt  # Ctrl-C (and SIGTERM, turned into an exception by the CLI) mid-write
    assert target.read_text() == "done" and sorted(p.name for p in target.parent.iterdir()) == ["a.json"]
    assert temps.OWN == set()


def test_a_full_disk_is_one_sentence_and_leaves_the_old_file(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    full = r"cannot write record .*a\.json: No space left on device; free some space"
    with pytest.raises(UserError, match=full), temps.atomic(target, "record") as tmp:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_sweep_removes_only_temporaries_of_ended_processes_of_this_host(tmp_path):
    gone = tmp_path / f".x.pt.tmp-{temps.HOST}-{dead_pid()}"
    mine = tmp_path / f".y.pt.tmp-{temps.HOST}-{os.getpid()}"
    other_host = tmp_path / f".z.pt.tmp-otherhost-{dead_pid()}"
    keep = tmp_path / "entry.pt"
    for p in (gone, mine, other_host, keep):
        p.write_bytes(b"x")
    assert temps.sweep(tmp_path) == [gone]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other_host.name, keep.name])


def test_the_next_write_into_a_folder_sweeps_it(tmp_path):
    left = tmp_path / f".a.json.tmp-{temps.HOST}-{dead_pid()}"
    left.write_text('{"half')
    with temps.atomic(tmp_path / "b.json") as tmp:
        tmp.write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]


def test_remove_own_removes_the_live_temporaries(tmp_path):
    with temps.atomic(tmp_path / "a.json") as tmp:
        tmp.write_text("half")
        temps.remove_own()  # what the CLI does on a signal
        assert not tmp.exists()
        tmp.write_text("again")  # the block may still finish: the rename then works
    assert (tmp_path / "a.json").read_text() == "again"


def test_check_writable_names_a_path_through_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match="cannot write results_dir .*/f/r: Not a directory; a part of that path is"):
        temps.check_writable(tmp_path / "f" / "r", "results_dir")
    temps.check_writable(tmp_path / "ok", "results_dir")
    assert list((tmp_path / "ok").iterdir()) == []  # the probe is gone
