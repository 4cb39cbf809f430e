"""A fine-tuning job killed at any point (SIGTERM, kill -9) and started again with the same command resumes
from its last checkpoint and, on a CPU, ends with the same weights as a job never interrupted."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from harness import CLI, Child, seabench_in_process

from bench.finetune import checkpoint

ROOT = Path(__file__).resolve().parents[1]

ARGS = ["run", "dataset=digits", "backbone=test_resnet", "method=finetune", "seeds=1", "method.params.steps=40",
        "method.params.batch_size=16", "method.grid.lr=[0.05]", "method.grid.lr_weight_decay=[0.0]",
        "finetune.num_workers=0", "finetune.checkpoint_every=3", "finetune.keep_checkpoints=true",
        "backbone.preprocess.resize=16", "backbone.preprocess.crop=16"]


def start(tmp: Path) -> Child:
    """The fine-tuning job in a process of its own (harness.Child), to be killed."""
    tmp.mkdir(exist_ok=True)
    return Child(CLI, ARGS, cwd=tmp, env={"SEABENCH_CACHE": str(tmp / "cache")})


def checkpoints(tmp: Path) -> dict[str, dict]:
    found = {}
    for path in (tmp / "cache" / "finetune").glob("*/*/checkpoint.pt"):
        found[path.parent.name.split("-")[0]] = checkpoint.load(path)
    return found


def step_of(tmp: Path) -> int:
    """The step of the train run's checkpoint (0 when there is none yet)."""
    for path in (tmp / "cache" / "finetune").glob("*/train-*/checkpoint.pt"):
        state = checkpoint.load(path)
        return state["step"] if state else 0
    return 0


def wait_for_step(tmp: Path, proc: Child, above: int) -> int:
    while (step := step_of(tmp)) <= above:
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.02)
    return step


def uninterrupted(run: str, point: dict, tmp: Path, every: int = 1000) -> tuple[dict, dict]:
    """The same training run as the job's, in this process: its final weights and cost."""
    from torch.utils.data import ConcatDataset

    from bench import backbones
    from bench.data import digits
    from bench.finetune import network
    from bench.finetune.loop import train

    conf = yaml.safe_load((ROOT / "conf" / "backbone" / "test_resnet.yaml").read_text())
    conf["preprocess"] |= {"resize": 16, "crop": 16}
    backbone = backbones.create(**conf, cache_dir=tmp)
    task = digits.load(**{k: v for k, v in yaml.safe_load((ROOT / "conf" / "dataset" / "digits.yaml").read_text())
                          ["load"].items() if k != "_target_"})
    images = task.splits["train"] if run == "train" else ConcatDataset([task.splits["train"], task.splits["val"]])
    net = network(backbone, point, num_classes=10, seed=point["seed"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the job (OMP_NUM_THREADS=1): another thread count sums in another order
    try:
        cost = train(net, images, point=point, preprocess=backbone.preprocess, device=torch.device("cpu"),
                     path=tmp / f"{run}.pt", micro_batch=None, num_workers=0, checkpoint_every=every,
                     compile=False, desc=run)
    finally:
        torch.set_num_threads(threads)
    return net.state_dict(), cost


def test_a_job_killed_by_kill_9_resumes_and_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    job = tmp_path / "killed"
    proc = start(job)
    wait_for_step(job, proc, 0)
    proc.kill()  # kill -9: nothing runs, the last checkpoint is what is left
    proc.communicate()
    at_kill = step_of(job)
    assert 0 < at_kill < 40

    out = seabench_in_process(*ARGS, cwd=job, env={"SEABENCH_CACHE": str(job / "cache")})  # the same command again
    assert f"resuming from step {at_kill} of 40" in out.stdout + out.stderr

    resumed = checkpoints(job)
    assert set(resumed) == {"train", "train+val"}
    for run, state in resumed.items():
        assert state["step"] == 40
        whole, _ = uninterrupted(run, state["point"], tmp_path / run)
        for key, tensor in whole.items():
            assert torch.equal(tensor, state["net"][key]), f"{run}: {key} differs"
    record = json.loads(next((job / "results").rglob("*.json")).read_text())
    assert record["sizes"] == {"train": 997, "val": 300, "test": 500} and record["features"] == {}
    assert not (job / "cache" / "features").exists()  # fine-tuning extracts nothing
    stages = record["cost"]["stages"]
    assert stages["fit_train"]["images"] == stages["fit_train+val"]["images"] == 40 * 16
    assert stages["predict_val"]["images"] == 300 and stages["predict_test"]["images"] == 500
    assert record["cost"]["device"] == "cpu" and record["cost"]["peak_accelerator_memory_bytes"] is None
    assert [r["fit_on"] for r in record["finetune_runs"]] == ["train", "train+val"]
    assert not list(job.rglob(".*.tmp-*"))


def test_sigterm_writes_a_checkpoint_then_hands_the_signal_on_and_the_run_resumes(tmp_path):
    point = {**yaml.safe_load((ROOT / "conf" / "method" / "finetune.yaml").read_text())["params"],
             "seed": 0, "steps": 40, "batch_size": 16, "lr": 0.05, "lr_weight_decay": 0.0}
    whole, _ = uninterrupted("train", point, tmp_path / "whole")
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    path = tmp_path / "term" / "train.pt"

    def preempt():  # as a cluster does: SIGTERM while the job trains
        while not path.exists():
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        threading.Thread(target=preempt, daemon=True).start()
        with pytest.raises(checkpoint.Preempted, match="stopped by SIGTERM at step"):
            uninterrupted("train", point, tmp_path / "term", every=2)
        assert received == [signal.SIGTERM]  # handed on to the handler that was there before
    finally:
        signal.signal(signal.SIGTERM, previous)
    stopped = checkpoint.load(path)["step"]
    assert 2 <= stopped < 40
    resumed, cost = uninterrupted("train", point, tmp_path / "term")
    for key, tensor in whole.items():
        assert torch.equal(tensor, resumed[key]), key
    assert cost["steps"] == 40
