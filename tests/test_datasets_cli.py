"""End to end through the CLI on the fake copies: `seabench run` extracts features with timm's tiny
`test_resnet` from every on-disk layout and writes a record; an unreadable image stops the extraction
with its path named and leaves no cache entry."""

from __future__ import annotations

from pathlib import Path

import fake_datasets
from fake_datasets import FAKES
from harness import seabench_in_process

BACKBONE = "test_resnet"


def command(name: str, root: Path, tmp: Path, extra: list[str], workers: int = 0) -> list[str]:
    return ["run", f"backbone={BACKBONE}", f"dataset={name}", "method=linear", f"data_root={root}",
            f"cache_dir={tmp / 'cache'}", f"results_dir={tmp / 'results'}", "method.grid.penalty=[1.0]",
            "method.params.max_iter=50", f"extract.num_workers={workers}", "extract.batch_size=64", *extra]


def run_all(jobs: dict[str, list[str]], cwd: Path) -> tuple[dict, str]:
    """Each job's exit code, and the output of all, every run in this process (harness.py)."""
    codes, log = {}, ""
    for name, args in jobs.items():
        out = seabench_in_process(*args, cwd=cwd, env={}, check=False)
        codes[name], log = out.returncode, log + out.stdout + out.stderr  # the run's log goes to stdout
    return codes, log


def test_run_extracts_every_layout(tmp_path):
    root = tmp_path / "data"
    jobs = {}
    for name, fake in FAKES.items():
        fake.write(root)
        jobs[name] = command(name, root, tmp_path, fake.overrides)
    fake_datasets.folder(root)
    jobs["folder"] = command("folder", root, tmp_path, [f"dataset.load.path={root / 'mytask'}",
                                                         "dataset.load.val_fraction=0.2"])
    codes, log = run_all(jobs, cwd=Path(__file__).resolve().parents[1])
    assert codes == {name: 0 for name in jobs}, log[-3000:]
    for name in jobs:
        name = {"folder": "mytask"}.get(name, name)  # a folder task is named after its folder
        records = list((tmp_path / "results" / "runs" / name).rglob("*.json"))
        assert len(records) == 1, name
        entries = list((tmp_path / "cache" / "features" / name).rglob("*.pt"))
        assert len(entries) == 3, name  # train, val, test


def test_unreadable_image_stops_extraction_before_any_cache_entry(tmp_path):
    jobs, bad = {}, {}
    for damage, content, workers in (("garbage", b"not an image at all", 2), ("empty", b"", 0)):
        root = tmp_path / damage / "data"
        FAKES["dtd"].write(root)
        bad[damage] = root / "dtd" / "dtd" / "images" / "cracked" / "cracked_0001.jpg"  # listed in train1.txt
        bad[damage].write_bytes(content)  # with workers=2 the error crosses a DataLoader worker
        jobs[damage] = command("dtd", root, tmp_path / damage, FAKES["dtd"].overrides, workers=workers)
    codes, log = run_all(jobs, cwd=tmp_path)
    assert codes == {"garbage": 2, "empty": 2}
    for damage in jobs:
        assert f"cannot read image {bad[damage]}" in log
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("runs/**/*.json"))
