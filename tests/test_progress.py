"""Progress: a bar on a terminal, a log line every few seconds elsewhere, and the loop's items untouched."""

import io
import logging

from bench import progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_not_a_terminal_logs_a_line_every_few_seconds(monkeypatch, caplog):
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    monkeypatch.setattr(progress.sys, "stderr", io.StringIO())  # a cluster log: not a terminal
    seen = []
    with caplog.at_level(logging.INFO, logger="bench.progress"):
        for epoch in progress.track(range(100), desc="fitting 6 head(s)", unit="epoch"):
            seen.append(epoch)
            clock.now += 1.0  # one second per epoch
    assert seen == list(range(100))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 100 // int(progress.EVERY)  # one line per EVERY seconds
    assert lines[0] == "fitting 6 head(s): 10/100 epoch(s) done in 10 s, about 90 s left"


def test_a_terminal_gets_a_bar(monkeypatch, caplog):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(progress.sys, "stderr", terminal)
    with caplog.at_level(logging.INFO, logger="bench.progress"):
        assert list(progress.track([3, 1, 2], desc="linear probe, 3 penalties", unit="penalty", every=0)) == [3, 1, 2]
    assert "linear probe, 3 penalties:" in terminal.getvalue() and "/3 [" in terminal.getvalue()
    assert caplog.records == []  # the bar, not log lines


def test_fits_report_their_progress(monkeypatch, caplog):
    """The hooks in the trainers: one step per epoch (SGD family), one per penalty (linear probe)."""
    import torch

    from bench.methods import linear, sgd

    monkeypatch.setattr(progress, "EVERY", 0.0)  # every step logs
    monkeypatch.setattr(progress.sys, "stderr", io.StringIO())
    X, y = torch.randn(40, 5), torch.arange(40) % 2
    point = {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0, "batch_size": 16, "epochs": 3, "lamda": 0.1,
             "delta": 0.0, "center": False, "seed": 0}
    with caplog.at_level(logging.INFO, logger="bench.progress"):
        sgd.fit(X, y, num_classes=2, points=[point], device="cpu")
        linear.fit(X, y, num_classes=2, device="cpu", points=[
            {"penalty": p, "max_iter": 50, "tol": 1e-4, "rtol": 1e-3, "standardize": True} for p in (1.0, 0.1)])
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(":")[1].split()[0] for line in lines] == ["1/3", "2/3", "3/3", "1/2", "2/2"], lines
