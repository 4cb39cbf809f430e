"""What is read back is what was written: a record or a fine-tuning checkpoint whose bytes changed on disk is
found by its checksum, named in one log line, set aside as `<name>.damaged` and made again; the table names
and skips a damaged record instead of showing its number or crashing on it."""

from __future__ import annotations

import json
import logging
import re

import torch

from bench import results
from bench.finetune import checkpoint

CHEAP = ["dataset=digits", "backbone=pixels", "method=linear", "method.grid.penalty=[1.0]", "seeds=1"]


def flip_digit(path, pattern: str) -> None:
    """Change one digit of the first match of `pattern` in the file (a score, as a bad disk or an edit would)."""
    text = path.read_text()
    match = re.search(pattern, text)
    i = match.end() - 1
    path.write_text(text[:i] + ("1" if text[i] != "1" else "2") + text[i + 1:])


def test_a_record_carries_a_checksum_of_its_content(tmp_path):
    record = {"backbone": "b", "method": "m", "protocol": "p", "dataset": "d", "metric": "top1",
              "test": {"score": [91.25], "predictions": [results.pack([1, 2, 3])], "labels": results.pack([1, 2, 0])},
              "chosen": {}, "edge": {}, "timings": {"fit": 1.0}, "created": "now", "path_like": tmp_path}
    path = tmp_path / "r.json"
    results.write(path, record)
    read, problem = results.read(path)
    assert problem is None and read["checksum"] == results.checksum(read)
    assert read["path_like"] == str(tmp_path)  # what JSON holds is what the checksum covers

    flip_digit(path, r'"score": \[\s*91\.2')  # 91.25 -> 91.15: a number the table would have shown
    assert results.read(path) == (None, "its content does not match its checksum (damaged on disk or edited)")

    results.write(path, record)
    text = path.read_text()
    start = text.index('"predictions": [') + len('"predictions": [') + 6
    path.write_text(text[:start] + ("A" if text[start] != "A" else "B") + text[start + 1:])  # a byte of the packing
    assert "checksum" in results.read(path)[1]

    # a record without a checksum (older, or made by hand) is still checked: packed bytes that do not unpack
    plain = json.loads(path.read_text())
    del plain["checksum"]
    plain["test"]["predictions"] = ["u2:AQ"]
    path.write_text(json.dumps(plain))
    assert "packed test predictions" in results.read(path)[1]


def test_a_damaged_record_is_set_aside_and_the_cell_runs_again(seabench, tmp_path):
    seabench("run", *CHEAP)
    (path,) = (tmp_path / "results" / "runs").rglob("*.json")
    first = json.loads(path.read_text())
    flip_digit(path, r'"score": \[\s*\d')
    shown = path.relative_to(tmp_path)
    table = seabench("table", "--no-figures", check=False)  # named and skipped: no record is left to show
    assert f"skipping the record {shown}: its content does not match its checksum" in table.stderr
    out = seabench("run", *CHEAP)
    assert "skipping:" not in out.stdout + out.stderr
    assert f"the record {shown} cannot be used (its content does not match its checksum" in out.stdout + out.stderr
    assert path.with_name(path.name + ".damaged").is_file()  # kept for a look, no longer read
    again, problem = results.read(path)
    assert problem is None and again["test"]["score"] == first["test"]["score"]  # redone, the same number


def test_seabench_table_names_and_skips_a_damaged_record(seabench, tmp_path):
    seabench("run", *CHEAP)
    seabench("run", *CHEAP[:2], "method=sgd", "method.params.epochs=2", "seeds=1")
    paths = sorted((tmp_path / "results" / "runs").rglob("*.json"))
    damaged = next(p for p in paths if json.loads(p.read_text())["method"] == "sgd")
    text = damaged.read_text()
    start = text.index('"labels": "u2:') + len('"labels": "u2:') + 3
    damaged.write_text(text[:start] + "!" + text[start + 1:])  # a byte of the packed labels: not base64 now
    out = seabench("table", "--no-figures")
    assert f"skipping the record {damaged.relative_to(tmp_path)}" in out.stdout + out.stderr and "Traceback" not in out.stderr
    assert "| linear" in out.stdout and "| sgd" not in out.stdout


def test_a_flipped_bit_in_a_checkpoint_is_found_set_aside_and_not_resumed_from(tmp_path, caplog):
    state = {"step": 7, "net": {"w": torch.arange(1000, dtype=torch.float32)}}
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, state)
    assert torch.equal(checkpoint.load(path)["net"]["w"], state["net"]["w"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of the tensors: torch itself would load it without a word
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        assert checkpoint.load(path) is None
    assert not path.exists() and path.with_name("checkpoint.pt.damaged").is_file()
    (line,) = [r.getMessage() for r in caplog.records if "checkpoint" in r.getMessage()]
    assert "its bytes do not match their checksum" in line and str(path) in line
