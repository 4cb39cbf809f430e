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
    # issue 24 item 4: every method parameter in the range its YAML gives it (`ranges:`), before any work
    (["method=sgd", "method.grid.lr=[0]"], "each value of method.grid.lr must be a number in (0, inf), not 0"),
    (["method=sgd", "method.params.epochs=0"], "method.params.epochs must be an integer in [1, inf), not 0"),
    ([*SEA[2:], "method.grid.eta=[1.5]"], "each value of method.grid.eta must be a number in [0, 1], not 1.5"),
    (["method.grid.penalty=[-1.0]"], "each value of method.grid.penalty must be a number in (0, inf), not -1.0"),
    (["method.params.early_end=-1"], "method.params.early_end must be an integer in [0, inf), not -1"),
    (["method.params.early_end=2", "+method.grid.max_iter=[100,200]"],
     "method.params.early_end ends a sweep over method.grid.penalty alone; this grid also sweeps max_iter"),
    (["method.params.early_end=2", "protocol=reference"],
     ("method.params.early_end ends a sweep over the grid on val; protocol=reference fits the fixed params with "
      "no val: leave early_end at 0")),
    (["method.grid.penalty=[0.0]"], "each value of method.grid.penalty must be a number in (0, inf), not 0.0"),
    (["method=sgd", "method.params.lamda=0"], "method.params.lamda must be a number in (0, inf), not 0"),
    (["method.params.max_iter=0"], "method.params.max_iter must be an integer in [1, inf), not 0"),
    (["method=isda", "method.grid.cov=[diag,spherical]"],
     "each value of method.grid.cov must be one of auto, diag, full, lowrank, not 'spherical'"),
    (["method=finetune_augself", "method.params.views.jitter.hue=0.7"],
     "method.params.views.jitter.hue must be a number in [0, 0.5], not 0.7"),
    (["seeds=1000000"], "seeds must be an integer in [1, 100], not 1000000"),
    (["extract.lock_stale_s=0"], "extract.lock_stale_s must be a number in (0, inf), not 0"),
    (["protocol.val_fraction=0"], "protocol.val_fraction must be a number in (0, 1), not 0"),
    # issue 24 item 7: the hint of an empty grid is a value that works
    (["method.grid.penalty=[]"], "method.grid.penalty must be a non-empty list (e.g. method.grid.penalty=[1.0])"),
])
def test_bad_settings_are_refused_before_the_dataset_is_even_read(seabench, tmp_path, args, message):
    """dataset=dtd is not on disk: a check that ran after loading the data would say so instead."""
    base = BASE[:2] if any(a.startswith("method=") for a in args) else BASE
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
    (["method.ranges.penalty=[0,1]"], "method.ranges.penalty is a valid range, fixed beside the method's params"),
    # issue 24 item 7: messages that sent the user elsewhere
    (["experiment=demo"], ("experiment=demo is a sweep (over backbone, method): run it with -m, "
                          "`seabench run -m dataset=digits backbone=pixels experiment=demo`")),
    (["-m", "method=linear,sgd", "method.params.epochs=1"],
     ("method.params.epochs is a hyperparameter of method sgd but not of linear, and a sweep sets it in every cell: "
     "sweep them in separate commands, `seabench run -m method=sgd method.params.epochs=...` and "
     "`seabench run -m method=linear`")),
    (["-m", "method=linear,sgd", "+method.params.epochs=1"], "is a hyperparameter of method sgd but not of linear"),
    (["-m", "experiment=demo", "method.params.epochs=1"], ("is a hyperparameter of method sgd, sea, isda, noise, afan, "
                                                         "flow but not of linear")),
    (["results_dir=/tmp/résultats"], ("cannot read the override 'results_dir=/tmp/résultats': Hydra's grammar takes "
                                      "spaces, non-ASCII letters and most punctuation only in quotes; write "
                                      "\"results_dir='/tmp/résultats'\"")),
])
def test_typos_are_refused_not_ignored(seabench, args, message):
    """(A sweep's -m is set before its overrides: the checks read the whole command line.)"""
    base = BASE[:2] if any(a.startswith(("method=", "experiment=")) for a in args) else BASE
    refused(seabench("run", *base, *args), message)


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
    ["-m", "hydra/launcher=basic", "hydra.verbose=true", "seeds=1", "experiment=demo"],
    ["method=linear", "+method.grid.max_iter=[10,100]", "method.params.penalty=2", "extract.batch_size=8"],
    ["-m", "method=sgd,sea", "method.params.lr=0.1", "+method.grid.epochs=[5,10]", "~method.grid.center"],
    ["-m", "method=sgd", "method.params.epochs=1"],  # the path the refusal of a mixed sweep gives
    ["-m", "experiment=demo", "method=sgd,sea", "method.params.epochs=1"],
    ["results_dir='/tmp/résultats dir'"],  # quoted as the refusal says
])
def test_the_typo_checks_let_real_settings_through(args):
    config.check_overrides(args)
    config.check_syntax(args)
    config.check_mode(args)


# ---- issue 24 ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fault,message", [
    ("unseen test class", ("the test labels in {test} hold classes that never occur in train: 3; every test class "
                          "needs train examples")),
    ("unseen val class", "the val labels in {val} hold classes that never occur in train: 7"),
    ("sparse ids", ("the train labels in {train} must number the classes 0..K-1 without gaps: they hold 3 classes "
                   "up to 100000, and lack 2, 3, 4, 5, 6, 7, 8, 9 ... (99998 in all); renumber them")),
])
def test_labels_that_make_no_sense_are_one_sentence_before_any_work(seabench, given, tmp_path, fault, message):
    """Issue 24 item 3: given features with a test (or val) class never seen in train scored 83.6 with no word;
    sparse ids (0, 100000) made 100,001 classes, and the run died for memory minutes later."""
    import time

    if fault == "unseen test class":
        torch.save([0, 1, 2, 3] * 3, given["test_label"])
    elif fault == "unseen val class":
        torch.save(torch.randn(4, 8), tmp_path / "val_feat.pth")
        torch.save([0, 1, 2, 7], tmp_path / "val_label.pth")
        given |= {"val_feat": tmp_path / "val_feat.pth", "val_label": tmp_path / "val_label.pth"}
    else:
        for split, n in [("train", 30), ("test", 12)]:
            torch.save([[0, 1, 100000][i % 3] for i in range(n)], given[f"{split}_label"])
    start = time.monotonic()
    refused(seabench("run", *given_args(given)), message.format(
        train=given["train_label"], test=given["test_label"], val=tmp_path / "val_label.pth"))
    assert time.monotonic() - start < 30


def test_an_image_dataset_whose_test_holds_a_class_train_lacks_is_refused(tmp_path):
    """The same rule for every image dataset (bench.data.checks.task), not only the folder loader's."""
    from bench import UserError
    from bench.data import checks

    parts = {"train": (["a.png", "b.png"], [0, 1]), "test": (["c.png", "d.png"], [1, 2])}
    with pytest.raises(UserError, match="test holds images of classes that train lacks: cow .1 in all.; every "
                                        "class needs train images"):
        checks.task("farm", ["cat", "dog", "cow"], tmp_path, parts)


def image_folder(root: pathlib.Path, per_class: int = 6) -> pathlib.Path:
    from PIL import Image

    for split, n in [("train", per_class), ("test", 3)]:
        for k, c in enumerate(("cat", "dog")):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (40 * i, 100 * k, 0)).save(root / split / c / f"{i}.png")
    return root


def test_a_symlink_loop_in_a_class_folder_is_not_walked_again(tmp_path):
    """Issue 24 item 5: `cat/up -> ..` re-walked train/ about 40 times and labelled every image `cat`."""
    from bench.data import folder

    root = image_folder(tmp_path / "pets")
    (root / "train" / "cat" / "up").symlink_to("..")  # train/: a loop through the class folder
    (root / "train" / "cat" / "self").symlink_to(".")
    task = folder.load(root=None, path=str(root), val_per_class=1)
    train, val = task.splits["train"], task.splits["val"]
    assert sorted(train.labels + val.labels) == [0] * 6 + [1] * 6
    assert all("/up/" not in i and "/self/" not in i for i in train.items + val.items)
    assert any("lead back to a folder already walked" in w and "train/cat/up" in w for w in task.warnings)


def test_a_link_to_a_folder_elsewhere_is_still_followed(tmp_path):
    from bench.data import folder

    root = image_folder(tmp_path / "pets")
    extra = tmp_path / "more_cats"
    extra.mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(extra / "x.png")
    (root / "train" / "cat" / "more").symlink_to(extra)
    task = folder.load(root=None, path=str(root), val_per_class=1)
    assert "train/cat/more/x.png" in task.splits["train"].items + task.splits["val"].items


@pytest.mark.parametrize("setting,message", [
    ("dataset.load.val_fraction=0", "dataset.load.val_fraction must be a number in (0, 1), not 0"),
    ("dataset.load.val_fraction=1", "dataset.load.val_fraction must be a number in (0, 1), not 1"),
    ("dataset.load.val_per_class=0", "dataset.load.val_per_class must be an integer in [1, inf), not 0"),
])
def test_a_folder_val_share_that_carves_nothing_or_all_is_refused(seabench, tmp_path, setting, message):
    """Issue 24 item 5: val_fraction=0 carved 10 images (at least one of each class) while logging 0%."""
    root = image_folder(tmp_path / "pets")
    extra = ["dataset.load.val_fraction=null"] if "per_class" in setting else []
    refused(seabench("run", *BASE[1:], "dataset=folder", f"dataset.load.path={root}", *extra, setting), message)


def test_a_sweep_over_a_folder_dataset_needs_no_name(seabench, tmp_path):
    """Issue 24 item 5: without dataset.name= the sweep and `status` crashed with a TypeError (None in a path):
    the name is the folder's, from the config itself."""
    root = image_folder(tmp_path / "pets")
    args = [*BASE[1:], "dataset=folder", f"dataset.load.path={root}"]
    rc, text, _ = seabench("status", *args)
    assert rc == 0 and "1 cells: 0 done" in text, text
    rc, text, _ = seabench("run", "-m", *args)
    assert rc == 0 and "sweep: 1 cells, 0 done, 1 to run" in text, text
    assert (tmp_path / "results" / "runs" / "pets").is_dir()
    rc, text, _ = seabench("status", *args)
    assert rc == 0 and "1 cells: 1 done" in text, text
    refused(seabench("status", *BASE[1:], "dataset=folder"), "dataset=folder needs dataset.load.path=")


class FullDisk:
    """A file whose writes fail with ENOSPC after `room` bytes, as a full disk's do."""

    def __init__(self, path, mode, room=2000):
        self.file, self.room = open(path, mode), room  # noqa: SIM115 -- closed by __exit__

    def write(self, data):
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def test_torch_hides_a_full_disk_under_a_runtime_error(tmp_path):
    """Why bench.temps looks behind the exception: torch's zip writer raises RuntimeError('... unexpected
    pos ...') from its __exit__ over the OSError of the write (issue 24 item 6; seen on a 1 MB tmpfs)."""
    with pytest.raises(RuntimeError) as caught, FullDisk(tmp_path / "x.pt", "wb") as f:
        torch.save({"x": torch.zeros(10_000)}, f)
    assert isinstance(caught.value.__context__, OSError) and caught.value.__context__.errno == errno.ENOSPC


def test_a_full_cache_disk_is_one_sentence(seabench, tmp_path, monkeypatch):
    """Issue 24 item 6: the README promises one sentence for a full cache disk; it was torch's traceback."""
    from bench import features

    monkeypatch.setattr(features, "open", FullDisk, raising=False)  # the feature cache's writes only
    text = refused(seabench("run", *BASE), "cannot write feature cache entry " + str(tmp_path / "cache" / "features"))
    assert "No space left on device; free some space and run again" in text
    left = [p.name for p in (tmp_path / "cache" / "features").rglob("*") if p.is_file()]
    assert left == [], left  # no temporary, no lock, no half-written entry


def test_a_really_full_cache_disk_is_one_sentence(seabench, tmp_path):
    """The same on a real full file system (a 256 kB tmpfs), where this machine lets the tests mount one."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True,
                      check=False).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        text = refused(seabench("run", *BASE, f"cache_dir={disk}"), "cannot write feature cache entry")
        assert "No space left on device; free some space and run again" in text
        assert not [p for p in disk.rglob("*") if ".tmp-" in p.name or p.suffix == ".lock"]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_slurm_without_sbatch_is_one_sentence_before_the_sweep(seabench, monkeypatch):
    """Issue 24 item 7: 8 frames and a pointer to a log that did not exist."""
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    refused(seabench("run", "-m", *BASE, "hydra/launcher=slurm"),
            "hydra/launcher=slurm submits each cell with sbatch, which is not on this machine")


def test_a_sweep_checks_every_cell_before_the_first_starts(seabench, tmp_path):
    refused(seabench("run", "-m", *BASE[:2], "method=sgd,sea", "method.grid.lr=[0.4,0]"),
            "each value of method.grid.lr must be a number in (0, inf), not 0")
    assert not (tmp_path / "results" / "runs").exists()


def test_status_help_is_help(seabench):
    rc, text, _ = seabench("status", "--help")
    assert rc == 0 and text.startswith("`seabench status`") and "--failed" in text, text


def test_status_failed_lists_killed_cells(seabench, tmp_path, monkeypatch):
    """Issue 24 item 7: a sweep's error says `status --failed` lists the cells to re-run; killed cells (a
    `.running` marker of a process that is gone) were left out."""
    import subprocess
    import sys

    from bench.sweep import cells, status

    monkeypatch.chdir(tmp_path)  # where the command runs (results_dir is relative)
    (config,) = status.expand([*BASE[:2], "method=sgd", "seeds=1"]).configs
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    marker = cells.stem(config).with_suffix(".running")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({**cells.whoami(), "pid": int(gone.stdout), "start": 0}))
    rc, text, _ = seabench("status", *BASE[:2], "method=sgd", "seeds=1")
    assert rc == 0 and text.startswith("missing") and "stopped without a record" in text, text
    rc, text, _ = seabench("status", *BASE[:2], "method=sgd", "seeds=1", "--failed")
    assert rc == 0 and text.strip() == "seabench run -m dataset=digits backbone=pixels method=sgd seeds=1", text


def test_a_users_own_unreadable_checkpoint_is_not_told_to_download_it(seabench, tmp_path):
    (tmp_path / "mine.pth").write_text("not a checkpoint")
    text = refused(seabench("run", *BASE[:1], "backbone=local", f"backbone.checkpoint={tmp_path / 'mine.pth'}",
                            "backbone.arch=resnet10t", *BASE[2:]),
                   f"cannot read checkpoint {tmp_path / 'mine.pth'}")
    assert "check the file given as backbone.checkpoint" in text and "download" not in text


def test_list_into_a_closed_pipe_ends_quietly(tmp_path):
    """`seabench list | head -1` ended in a BrokenPipeError traceback."""
    import subprocess
    import sys

    out = subprocess.run(f"{sys.executable} -m bench list | head -1", shell=True, cwd=tmp_path, capture_output=True,
                         text=True, check=False, env={**os.environ, "PYTHONPATH": str(pathlib.Path(cli.__file__).parents[1])})
    assert out.stdout.startswith("methods") and out.stderr == "", out.stderr


def test_a_setting_inside_a_swept_method_reaches_every_cell(seabench, tmp_path):
    """Issue 24 item 7: `-m method=sgd,sea method.params.epochs=1` failed (Hydra composes the sweep's primary
    config with the default method, linear: "add `+`"; with `+`, seabench and then every cell refused it). The
    plain override now runs every cell with it, and `status` finds them done, under the same overrides."""
    args = [*BASE[:2], "method=sgd,sea", "seeds=1", "method.params.epochs=1", "method.grid.lr=[1.6]",
            "method.grid.center=[false]"]
    rc, text, _ = seabench("run", "-m", *args)
    assert rc == 0 and "sweep: 2 cells, 0 done, 2 to run" in text, text
    records = [json.loads(p.read_text()) for p in (tmp_path / "results" / "runs").rglob("*.json")]
    assert sorted(r["method"] for r in records) == ["sea", "sgd"]
    assert all(r["config"]["method"]["params"]["epochs"] == 1 and r["chosen"]["lr"] == 1.6 for r in records)
    for overrides in (args, []):  # this sweep, and the sweep last started
        rc, text, _ = seabench("status", *overrides)
        assert rc == 0 and "2 cells: 2 done" in text, text
