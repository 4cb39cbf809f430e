"""Bad input and faults end in one sentence, before the work they guard (issue 11, items 1-3 and 6).

The command runs in this process (conftest's `seabench`: `bench.cli.main`, Hydra included), the same path
as `seabench ...` without a new interpreter per case. An uncaught exception would fail the test with its
traceback.
"""

import errno
import json
import os
import pathlib

import pytest
import torch

from bench import cli, config

BASE = ["dataset=digits", "backbone=pixels", "method=linear", "method.grid.penalty=[1.0]"]
SEA = ["dataset=digits", "backbone=pixels", "method=sea"]


@pytest.fixture
def seabench(seabench):
    """The command line in this process (conftest); returns (exit code, stdout + stderr, stderr)."""
    def run(*args):
        out = seabench(*args, check=False)
        return out.returncode, out.stdout + out.stderr, out.stderr

    return run


def refused(result, message: str) -> str:
    rc, text, err = result
    assert rc not in (0, None), text
    assert message in err, text
    errors = [line for line in err.splitlines() if line.startswith("seabench: error:")]
    assert len(errors) == 1 and "Traceback" not in text, text
    return text


@pytest.mark.parametrize("args,message", [
    (["device=mps"], "device 'mps' is not supported; use auto, cpu, cuda or cuda:N"),
    (["method.grid.penalty=[abc]"], "method.grid.penalty must hold a number, not 'abc'"),
    ([*SEA[2:], "method.params.eta=abc"], "method.params.eta must be a number, not 'abc'"),
    ([*SEA[2:], "method.grid.eta=[0.1,abc]"], "method.grid.eta must hold a number, not 'abc'"),
    (["method.params.standardize=3"], "method.params.standardize must be true or false, not 3"),
    (["extract.batch_size=0"], "extract.batch_size must be an integer >= 1, not 0"),
    (["extract.num_workers=-1"], "extract.num_workers must be an integer >= 0, not -1"),
    (["seeds=0"], "seeds must be a positive integer, not 0"),
    (["dataset.metric=top5"], "unknown metric 'top5'"),
    ([*SEA[2:], "+method.grid.etta=[0.1]"], ("method.grid.etta is not a hyperparameter of method sea; "
                                                "did you mean 'eta'?")),
])
def test_bad_settings_are_refused_before_the_dataset_is_even_read(seabench, tmp_path, args, message):
    """dataset=dtd is not on disk: a check that ran after loading the data would say so instead."""
    base = BASE[:2] if "method=sea" in args else BASE
    refused(seabench("run", *base, *args, "dataset=dtd"), message)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "results" / "runs").exists()


@pytest.mark.parametrize("args,message", [
    (["seed=1"], "unknown setting 'seed'; did you mean 'seeds'?"),
    (["+seed=1"], "unknown setting 'seed'; did you mean 'seeds'?"),  # Hydra's advice, which ran it unread
    (["methd=sea"], "unknown setting 'methd'; did you mean 'method'?"),
    (["extract.batchsize=8"], "unknown setting 'extract.batchsize'; did you mean 'extract.batch_size'?"),
    ([*SEA[2:], "method.params.etta=0.1"], ("method.params.etta is not a hyperparameter of method sea; "
                                                "did you mean 'eta'?")),
    ([*SEA[2:], "+method.params.etta=0.1"], "method.params.etta is not a hyperparameter of method sea"),
    (["+dataset.foo=1"], "+dataset.foo adds a setting seabench does not read"),
    (["dataset=digitz"], "unknown dataset 'digitz'; did you mean 'digits'?"),
    (["-m", "--cfg", "job"], "--cfg and -m cannot be combined"),
    (["method.grid.max_iter=[10]"], ("method linear does not sweep max_iter by default: add it to the grid with "
                                    "+method.grid.max_iter=[...]")),
])
def test_typos_are_refused_not_ignored(seabench, args, message):
    refused(seabench("run", *(BASE[:2] if "method=sea" in args else BASE), *args), message)


def test_a_command_typo_names_the_closest_command(seabench):
    refused(seabench("tabel"), "unknown command 'tabel'; did you mean 'table'?")


def test_results_dir_through_a_file_is_refused_before_extraction(seabench, tmp_path):
    (tmp_path / "afile").write_text("")
    refused(seabench("run", *BASE, f"results_dir={tmp_path / 'afile' / 'results'}"),
            "cannot write results_dir")
    assert not (tmp_path / "cache" / "features").exists()


def test_cache_dir_through_a_file_is_refused(seabench, tmp_path):
    (tmp_path / "afile").write_text("")
    text = refused(seabench("run", *BASE, f"cache_dir={tmp_path / 'afile' / 'cache'}"), "cannot write cache_dir")
    assert "Not a directory; a part of that path is a file, not a folder" in text


@pytest.mark.parametrize("code,hint", [(errno.EROFS, "Read-only file system; the folder is read-only"),
                                       (errno.EACCES, "Permission denied; no permission to write there")])
def test_a_read_only_results_dir_is_refused_before_extraction(seabench, tmp_path, monkeypatch, code, hint):
    """As root the tests cannot make a folder read-only: the probe write fails the way the system would."""
    def read_only(self, data):
        raise OSError(code, os.strerror(code), str(self))

    monkeypatch.setattr(pathlib.Path, "write_bytes", read_only)
    refused(seabench("run", *BASE), f"cannot write results_dir {tmp_path / 'results'}: {hint}")
    assert not (tmp_path / "cache" / "features").exists()


def no_space(self, *args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))


def test_a_full_disk_while_writing_the_record_is_one_sentence(seabench, tmp_path, monkeypatch):
    monkeypatch.setattr(pathlib.Path, "write_text", no_space)
    refused(seabench("run", *BASE), "No space left on device; free some space and run again")
    assert [p for p in (tmp_path / "results").rglob("*") if p.is_file()] == []  # nothing half-written


def test_table_over_bad_records_names_them_and_carries_on(seabench, tmp_path):
    assert seabench("run", *BASE)[0] == 0
    runs = tmp_path / "results" / "runs" / "digits"
    (runs / "empty.json").write_text("{}")
    (runs / "list.json").write_text("[1, 2]")
    (runs / "cut.json").write_text('{"backbone": "pix')
    rc, text, _ = seabench("table")
    assert rc == 0 and "pixels" in text, text
    for name, why in [("empty.json", "it lacks backbone"), ("list.json", "it holds a JSON list"),
                      ("cut.json", "unreadable")]:
        assert any(name in line and why in line for line in text.splitlines()), text


def test_table_out_dir_problems_are_one_sentence(seabench, tmp_path, monkeypatch):
    assert seabench("run", *BASE)[0] == 0
    (tmp_path / "afile").write_text("")
    refused(seabench("table", "--out-dir", str(tmp_path / "afile" / "t")), "cannot write table folder")
    monkeypatch.setattr(pathlib.Path, "write_text", no_space)
    refused(seabench("table"), "cannot write table")
    assert [p.name for p in (tmp_path / "results").iterdir() if p.is_file()] == []


@pytest.fixture
def given(tmp_path):
    files = {}
    for split, n in [("train", 30), ("test", 12)]:
        y = torch.arange(n) % 3
        torch.save(torch.eye(3, 8)[y] * 5 + torch.randn(n, 8), tmp_path / f"{split}_feat.pth")
        torch.save(y.tolist(), tmp_path / f"{split}_label.pth")
        files |= {f"{split}_{kind}": tmp_path / f"{split}_{kind}.pth" for kind in ("feat", "label")}
    return files


def given_args(files):
    return ["dataset=features", "method=linear", "method.grid.penalty=[1.0]",
            *(f"dataset.load.{key}_path={path}" for key, path in files.items())]


@pytest.mark.parametrize("fault,message", [
    ("text", "cannot read train features in {feat}: it is not a torch.save file of a tensor or a list; expected"),
    ("text labels", "cannot read train labels in {label}: it is not a torch.save file of a tensor or a list"),
    ("numpy", "train features in {feat} hold a numpy array; save torch.from_numpy(array) instead"),
    ("string labels", "train labels in {label} must be a list or 1-d tensor of integers, not a list of str"),
    ("empty", "train features in {feat} are empty (shape (0, 8))"),
    ("nan", "train features in {feat} contain NaN or infinite values"),
])
def test_bad_feature_files_are_one_sentence(seabench, given, fault, message):
    import numpy as np

    feat, label = given["train_feat"], given["train_label"]
    if fault == "text":
        feat.write_text("0.1 0.2 0.3\n0.4 0.5 0.6\n")
    elif fault == "text labels":
        label.write_text("cat\ndog\n")
    elif fault == "numpy":
        torch.save(np.zeros((30, 8), dtype=np.float32), feat)
    elif fault == "string labels":
        torch.save(["cat", "dog", "cow"] * 10, label)
    elif fault == "empty":
        torch.save(torch.zeros(0, 8), feat)
        torch.save([], label)
    elif fault == "nan":
        torch.save(torch.full((30, 8), float("nan")), feat)
    refused(seabench("run", *given_args(given)), message.format(feat=feat, label=label))


def test_help_opens_with_what_the_tool_does(seabench):
    rc, text, _ = seabench("--help")
    assert rc == 0 and text.startswith("seabench: benchmark classifiers trained on frozen deep features")


def test_list_shows_what_exists_one_line_each(seabench):
    conf = pathlib.Path(cli.__file__).parents[1] / "conf"
    rc, text, _ = seabench("list")
    lines = text.splitlines()
    assert rc == 0
    for group in ("method", "dataset", "backbone", "protocol", "experiment"):
        names = sorted(p.stem for p in (conf / group).glob("*.yaml"))
        for name in names:
            (line,) = [x for x in lines if x.split()[:1] == [name]]  # exactly one line each
            assert len(line.split()) > 1, line  # with what it is
    methods = seabench("methods")[1]
    assert [x.split()[0] for x in methods.splitlines()[1:]] == sorted(p.stem for p in (conf / "method").glob("*.yaml"))
    assert "digits" in seabench("datasets")[1]
    refused(seabench("list", "metods"), "cannot list 'metods'; did you mean 'methods'?")


def test_a_record_the_table_cannot_use_does_not_block_its_cell(seabench, tmp_path):
    assert seabench("run", *BASE)[0] == 0
    (record,) = (tmp_path / "results" / "runs").rglob("*.json")
    good = json.loads(record.read_text())
    rc, text, _ = seabench("run", *BASE)
    assert rc == 0 and "skipping: a record of this run exists" in text  # a sound record is skipped
    for damage, why in [("", "unreadable"), ('{"test": {"sco', "unreadable"), ("{}", "it lacks backbone"),
                        (json.dumps({**good, "test": {"score": []}}), "it has no test scores")]:
        record.write_text(damage)
        rc, text, _ = seabench("run", *BASE)
        assert rc == 0 and "cannot be used" in text and why in text and "running the cell again" in text, text
        again = json.loads(record.read_text())
        assert again["test"] == good["test"] and again["chosen"] == good["chosen"]


def test_settings_are_checked_before_torch_is_even_imported(tmp_path):
    """`seeds=0` took 11 s to be refused: the checks waited behind the imports, the data and the model."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "bench", "run", "dataset=dtd", "seeds=0"],
                         cwd=tmp_path, capture_output=True, text=True, check=False,
                         env={**os.environ, "SEABENCH_DATA": str(tmp_path / "data")})
    assert out.returncode == 2 and "seeds must be a positive integer, not 0" in out.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import")}
    assert "hydra" in imported and not {"torch", "timm", "sklearn"} & imported


def test_a_disk_fault_outside_the_atomic_writes_is_one_sentence(seabench, tmp_path, monkeypatch):
    """The lock file of a cache entry in a folder the job may not write (as root: simulated)."""
    from bench import features

    def no_permission(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    monkeypatch.setattr(features, "hold", lambda lock_path, **kw: no_permission(lock_path))
    refused(seabench("run", *BASE), "cannot use " + str(tmp_path / "cache" / "features" / "digits" / "pixels"))
    assert "Permission denied; no permission to write there" in seabench("run", *BASE)[2]


@pytest.mark.parametrize("args", [
    ["hydra/launcher=basic", "hydra.verbose=true", "seeds=1", "experiment=demo"],
    ["method=linear", "+method.grid.max_iter=[10,100]", "method.params.penalty=2", "extract.batch_size=8"],
    ["-m", "method=sgd,sea", "method.params.lr=0.1", "+method.grid.epochs=[5,10]", "~method.grid.center"],
])
def test_the_typo_checks_let_real_settings_through(args):
    config.check_overrides(args)
