"""One backbone's 11-task table in GPU-hours, from benchmarks/gpu.py's figures and each dataset's real size.

The sizes are not repeated here: the official counts are each loader's `EXPECTED` (bench/data/<family>.py,
checked at load time) and the val rule is the dataset's config (conf/dataset/<name>.yaml), so `split_sizes`
derives DESIGN section 4's train / val / test from the two (Stanford Cars' val is carved per class, so its
size here, 20% of the whole, is within a few images of the real one).

The model of a run's cost (a run: one backbone x one dataset x one method, `protocol=selection`, 3 seeds):

- extraction: every image of the three splits once (shared by all methods through the feature cache), at
  the measured end-to-end rate;
- `linear`: the measured 45-penalty sweep, scaled by train rows, plus the refit on train+val (one penalty);
- an SGD-family method: the measured seconds per grid point (its 3 seeds, the YAML's epochs, the flow's fits
  included), times the grid's points, scaled by train rows, plus the refit on train+val (one point, 3 seeds);
- `finetune` (its own column): (grid points x seeds + seeds) runs of the YAML's steps x batch images at the
  measured training rate, plus the predictions on val (every run) and test (the refits) at the extraction rate.

Scaling: the measurements are at Food-101's shape (68,175 train rows, 101 classes, 2048-d). An epoch's cost
grows with the rows; with the classes it grows only where the products dominate, which on a GPU they do not
at 101 classes or fewer (kernel launches do), so a dataset with fewer classes is not scaled down, and one
with more (SUN397, 397; Cars, 196) is scaled up by classes / 101: an upper bound rather than a guess.
"""

from __future__ import annotations

import importlib

from bench import config

TASKS = ("cifar10", "cifar100", "food101", "mit67", "pets", "flowers102", "caltech101", "cars", "aircraft", "dtd",
         "sun397")  # the 11-task table (conf/experiment/transfer11.yaml)
FEATURE_METHODS = ("sgd", "sea", "isda", "afan", "flow", "noise")  # besides `linear`


def split_sizes(name: str) -> dict[str, int]:
    """{"classes", "train", "val", "test"} of dataset `name` at its real size (see the module's docstring)."""
    load = config.read_yaml(config.CONF / "dataset" / f"{name}.yaml")["load"]
    module = importlib.import_module(load["_target_"].rsplit(".", 1)[0])
    expected = module.EXPECTED[name]
    classes = expected["classes"]
    if "val" in expected:  # official train / val / test lists
        train, val, test = expected["train"], expected["val"], expected["test"]
    elif "images" in expected:  # Caltech-101: so many per class for train and val, the rest is test
        train, val = load["train_per_class"] * classes, load["val_per_class"] * classes
        test = expected["images"] - train - val
    else:  # val carved from the official train (or trainval) list
        pool = expected.get("train", expected.get("trainval"))
        val = load["val_per_class"] * classes if "val_per_class" in load else round(load["val_fraction"] * pool)
        train, test = pool - val, expected["test"]
    return {"classes": classes, "train": train, "val": val, "test": test}


def scale(sizes: dict, rows: int, *, shape: dict) -> float:
    """Cost of `rows` rows of this dataset relative to the measured shape (see the module's docstring)."""
    return rows / shape["train"] * max(1.0, sizes["classes"] / shape["classes"])


def table_cost(figures: dict, *, shape: dict, grid_points: dict[str, int], finetune: dict) -> dict:
    """Seconds per dataset and method, and the totals in GPU-hours, of one backbone's 11-task table.

    figures: "extraction_images_per_s", "probe_seconds" (the 45-penalty sweep on shape["probe_train"] rows),
    "seconds_per_point" {method: s at the YAML's epochs, 3 seeds}, "finetune_images_per_s".
    grid_points: points of each method's YAML grid (linear: the penalties). finetune: the YAML's
    "points" (grid), "seeds", "steps", "batch_size"."""
    rows, total, total_ft = {}, 0.0, 0.0
    runs = finetune["points"] * finetune["seeds"] + finetune["seeds"]
    for name in TASKS:
        sizes = split_sizes(name)
        images = sizes["train"] + sizes["val"] + sizes["test"]
        fit, refit = scale(sizes, sizes["train"], shape=shape), scale(sizes, sizes["train"] + sizes["val"], shape=shape)
        probe = figures["probe_seconds"] * shape["train"] / shape["probe_train"]  # at the methods' row count
        cost = {"extraction": images / figures["extraction_images_per_s"],
                "linear": probe * fit + probe / grid_points["linear"] * refit}
        for method in FEATURE_METHODS:
            point = figures["seconds_per_point"][method]
            cost[method] = point * grid_points[method] * fit + point * refit
        predicted = finetune["points"] * finetune["seeds"] * sizes["val"] + finetune["seeds"] * sizes["test"]
        ft = (runs * finetune["steps"] * finetune["batch_size"] / figures["finetune_images_per_s"]
              + predicted / figures["extraction_images_per_s"])
        rows[name] = {"sizes": sizes, "seconds": {k: round(v, 2) for k, v in cost.items()},
                      "feature_seconds": round(sum(cost.values()), 2), "finetune_seconds": round(ft, 1)}
        total, total_ft = total + sum(cost.values()), total_ft + ft
    return {"datasets": rows, "feature_gpu_hours": total / 3600, "finetune_gpu_hours": total_ft / 3600,
            "finetune_runs_per_dataset": runs}
