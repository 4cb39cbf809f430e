"""method=finetune_flow on digits: the Glow's cache behaves like the feature cache's (a hit, a new key for new
settings, a damaged entry made again), its training resumes after kill -9 with the weights of an uninterrupted
one, and fine-tuning with latent perturbations learns; the command line records the Glow's cost and bits/dim."""

import copy
import io
import json
import logging
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from harness import Child

from bench import backbones
from bench.data import digits
from bench.finetune import checkpoint, glows, loop, perturbation
from bench.finetune.net import Net

ROOT = Path(__file__).resolve().parents[1]
TINY = {"resolution": 8, "levels": 2, "steps_per_level": 2, "hidden": 8, "train_steps": 12, "batch_size": 32,
        "lr": 5e-3, "weight_decay": 5e-5, "warmup_images": 0, "seed": 0}
PRE = {"resize": 16, "crop": 16, "interpolation": "bicubic", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


@pytest.fixture(scope="module")
def task():
    return digits.load(test_per_class=5, val_per_class=5, seed=0)


def train_glow(task, cache: Path, settings=TINY, every=1000):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the killed job below: another thread count sums in another order
    try:
        return glows.trained(task.splits["train"], task.splits["val"], settings=settings, cache_dir=cache,
                             device=torch.device("cpu"), checkpoint_every=every, num_workers=0)
    finally:
        torch.set_num_threads(threads)


def test_the_glow_cache_hits_keys_on_settings_and_remakes_a_damaged_entry(task, tmp_path, caplog):
    glow, note = train_glow(task, tmp_path)
    assert not note["cached"] and note["images"] == 12 * 32 and note["training_seconds"] > 0
    assert 0 < note["bits_per_dim_val"] < 12 and note["path"].startswith(str(tmp_path / "glows"))
    again, hit = train_glow(task, tmp_path)
    assert hit["cached"] and hit["images"] == 0 and hit["key"] == note["key"]
    assert hit["bits_per_dim_val"] == note["bits_per_dim_val"]
    for (k, a), b in zip(glow.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    assert not any(p.requires_grad for p in again.parameters()) and not again.training  # frozen
    other = train_glow(task, tmp_path, TINY | {"seed": 1, "train_steps": 2})[1]
    assert other["key"] != note["key"] and not other["cached"]
    Path(note["path"]).write_bytes(b"damaged")
    with caplog.at_level(logging.WARNING):
        remade = train_glow(task, tmp_path)[1]
    assert not remade["cached"] and "damaged" in caplog.text
    assert remade["bits_per_dim_val"] == note["bits_per_dim_val"]  # the same seed makes the same Glow
    assert sorted(p.name for p in (tmp_path / "glows").iterdir() if not p.name.endswith(".lock")) == \
        sorted([Path(note["path"]).name, Path(other["path"]).name])  # no checkpoint or temporary left


CHILD = """
import sys, torch
from pathlib import Path
from bench.data import digits
from bench.finetune import glows
torch.set_num_threads(1)
task = digits.load(test_per_class=5, val_per_class=5, seed=0)
settings = eval(sys.argv[2])
glows.trained(task.splits["train"], task.splits["val"], settings=settings, cache_dir=Path(sys.argv[1]),
              device=torch.device("cpu"), checkpoint_every=2, num_workers=0)
"""


def step_of(path: Path) -> int:
    """The step of a Glow checkpoint, read without checkpoint.load's side effects (it sweeps temporaries and
    sets damaged files aside: not while the child is writing): the checksum header, then torch's payload."""
    data = path.read_bytes()
    assert checkpoint.damage(data) is None, path
    return torch.load(io.BytesIO(data[data.index(b"\n") + 1:]), weights_only=False)["step"]


@pytest.mark.heavy
def test_a_glow_killed_by_kill_9_resumes_and_ends_with_the_weights_of_an_uninterrupted_one(task, tmp_path, caplog):
    settings = TINY | {"train_steps": 40, "batch_size": 16}
    killed = tmp_path / "killed"
    proc = Child(CHILD, [str(killed), repr(settings)], cwd=tmp_path)
    step = 0
    while step < 2:
        assert proc.poll() is None, proc.communicate()
        found = list((killed / "glows").glob("*.checkpoint.pt")) if (killed / "glows").exists() else []
        try:
            step = step_of(found[0]) if found else 0
        except FileNotFoundError:
            step = 0
        time.sleep(0.02)
    proc.kill()  # kill -9: the last checkpoint is what is left
    proc.communicate()
    at_kill = step_of(next((killed / "glows").glob("*.checkpoint.pt")))
    assert 0 < at_kill < 40
    with caplog.at_level(logging.INFO):
        resumed, note = train_glow(task, killed, settings)
    assert f"resuming from step {at_kill} of 40" in caplog.text and not note["cached"]
    whole, _ = train_glow(task, tmp_path / "whole", settings)
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{k} differs"
    assert not list(killed.rglob("*.checkpoint.pt")) and not list(killed.rglob(".*.tmp-*"))


@pytest.mark.heavy
def test_fine_tuning_with_adversarial_latent_perturbations_learns_digits(task, tmp_path):
    backbone = backbones.create(name="test_resnet", arch="test_resnet", source="random", init_seed=0, preprocess=PRE,
                                cache_dir=tmp_path)
    glow, _ = train_glow(task, tmp_path, TINY | {"train_steps": 30})
    params = yaml.safe_load((ROOT / "conf" / "method" / "finetune.yaml").read_text())["params"]
    point = copy.deepcopy(params) | {"seed": 0, "steps": 30, "batch_size": 16, "lr": 0.05, "lr_weight_decay": 0.0,
                                     "crop_scale": [0.5, 1.0], "mode": "adv", "eps": 1.0, "norm": "l2",
                                     "pgd_steps": 1, "alpha": 0.5, "ratio": 1.0, "decode": "official", "glow": TINY}

    def net():
        return Net(backbone.model, dim=backbone.model.num_features, num_classes=10, seed=0, afan_stage=None,
                   augself_weights=None, augself_hidden=8, isda_cov=None)

    images = task.splits["train"].with_transform(backbone.transform)
    x, y = torch.stack([images[i][0] for i in range(128)]), torch.tensor(task.splits["train"].labels[:128])

    def loss(model):
        model.eval()
        with torch.no_grad():
            return F.cross_entropy(model(x), y).item()

    model = net()
    before = loss(model)
    calls = []

    class Counted(perturbation.Latent):
        def __call__(self, net, x, **where):
            calls.append(x.shape)
            return super().__call__(net, x, **where)

    counted = Counted(glow, point=point, preprocess=PRE, amp=False)
    cost = loop.train(model, task.splits["train"], point=point, preprocess=PRE, device=torch.device("cpu"),
                      path=tmp_path / "checkpoint.pt", micro_batch=None, num_workers=0, checkpoint_every=1000,
                      compile=False, desc="test", perturb=counted)
    after = loss(model)
    assert cost["finite"] and cost["steps"] == 30
    assert calls and calls[0] == (16, 1, 3, 8, 8)  # the views came at the Glow's resolution, in [0, 1]
    assert after < before - 0.3, (before, after)


def test_the_command_line_records_the_glows_cost_and_bits_per_dim_and_reuses_it(seabench, tmp_path):
    args = ["run", "dataset=digits", "backbone=test_resnet", "method=finetune_flow", "seeds=1",
            "method.params.steps=4", "method.params.batch_size=8", "method.grid.lr=[0.05]",
            "method.grid.lr_weight_decay=[0.0]", "method.grid.mode=[rand]", "method.grid.eps=[1.0]",
            "method.params.glow.resolution=8", "method.params.glow.levels=2", "method.params.glow.steps_per_level=1",
            "method.params.glow.hidden=8", "method.params.glow.train_steps=4", "method.params.glow.batch_size=16",
            "method.params.glow.warmup_images=0", "backbone.preprocess.resize=16", "backbone.preprocess.crop=16",
            "finetune.num_workers=0"]
    seabench(*args)
    record = json.loads(next((tmp_path / "results").rglob("*.json")).read_text())
    glow = record["cost"]["stages"]["glow"]
    assert not glow["cached"] and glow["images"] == 4 * 16 and glow["training_seconds"] > 0
    assert 0 < glow["bits_per_dim_val"] < 12 and glow["resolution"] == 8
    assert record["params"]["glow"]["train_steps"] == 4 and record["chosen"]["mode"] == "rand"
    seabench(*args[:-1], "method.grid.lr=[0.01]", "finetune.num_workers=0")  # another cell, the same Glow
    records = [json.loads(p.read_text()) for p in (tmp_path / "results").rglob("*.json")]
    assert sorted(r["cost"]["stages"]["glow"]["cached"] for r in records) == [False, True]
    bad = seabench(*args, "method.params.glow.resolution=10", check=False)
    assert bad.returncode != 0 and "multiple of 2 ** levels" in bad.stdout + bad.stderr


def test_two_jobs_at_one_glow_train_it_once(task, tmp_path, monkeypatch):
    """Two callers meet at the entry's lock: one trains, the other waits and reads its entry."""
    import threading

    fits, fit = [], glows.fit
    monkeypatch.setattr(glows, "fit", lambda *a, **k: fits.append(1) or fit(*a, **k))
    notes = []

    def job():
        notes.append(glows.trained(task.splits["train"], task.splits["val"], settings=TINY | {"train_steps": 6},
                                   cache_dir=tmp_path, device=torch.device("cpu"), checkpoint_every=1000,
                                   num_workers=0)[1])

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fits) == 1 and sorted(n["cached"] for n in notes) == [False, True]
    assert notes[0]["key"] == notes[1]["key"]
