"""The protocol: val chooses, test never does; ties go to the earlier point; edges are flagged."""

import torch

from bench import protocol
from bench.methods import Heads


class Oracle:
    """A fake method: head g predicts class `answer[g]` for every example; records what it was fitted on."""

    def __init__(self, answers):
        self.answers, self.seen = answers, []

    def fit(self, X, y, *, num_classes, points, device):
        self.seen.append(X.clone())
        W = torch.zeros(len(points), num_classes, X.shape[1])
        b = torch.stack([torch.nn.functional.one_hot(torch.tensor(self.answers(p)), num_classes).float()
                         for p in points])
        return Heads(W, b)


def data(val_label, test_label, n=10):
    def split(label, offset):
        return torch.full((n, 2), float(offset)), torch.full((n,), label)

    return {"train": split(0, 1), "val": split(val_label, 2), "test": split(test_label, 3)}


def run(method, d, grid, seeds=(0,)):
    return protocol.select(method.fit, d, params={"k": 0}, grid=grid, seeds=list(seeds), metric="top1",
                           num_classes=4, device="cpu", val_fraction=0.1, split_seed=0)


def test_val_chooses_and_test_is_never_seen():
    method = Oracle(lambda p: p["k"])
    out = run(method, data(val_label=2, test_label=3), {"k": [0, 1, 2, 3]})
    assert out["chosen"] == {"k": 2}  # best on val; k=3 would be perfect on test
    assert out["test"]["top1"] == [0.0]
    assert [c["val"] for c in out["curve"]] == [0.0, 0.0, 100.0, 0.0]
    # fits saw train, then train+val, never a test row (test features are all 3.0)
    assert len(method.seen) == 2 and all((X != 3.0).all() for X in method.seen)
    assert len(method.seen[1]) == 20


def test_changing_test_labels_changes_no_choice():
    a = run(Oracle(lambda p: p["k"]), data(val_label=1, test_label=0), {"k": [0, 1, 2]})
    b = run(Oracle(lambda p: p["k"]), data(val_label=1, test_label=2), {"k": [0, 1, 2]})
    assert a["chosen"] == b["chosen"] == {"k": 1} and a["curve"] == b["curve"]
    assert a["test"]["top1"] == [0.0] and b["test"]["top1"] == [0.0]


def test_ties_go_to_the_earlier_point_and_edges_are_flagged():
    out = run(Oracle(lambda p: 1), data(val_label=1, test_label=1), {"k": [5, 1, 3]})
    assert out["chosen"] == {"k": 5} and out["edge"] == {"k": "high"}
    out = run(Oracle(lambda p: int(p["k"] == 1)), data(val_label=1, test_label=1), {"k": [5, 1, 3]})
    assert out["chosen"] == {"k": 1} and out["edge"] == {"k": "low"}
    out = run(Oracle(lambda p: int(p["k"] == 3)), data(val_label=1, test_label=1), {"k": [5, 1, 3]})
    assert out["edge"] == {}


def test_val_is_the_mean_over_seeds():
    out = run(Oracle(lambda p: 1 if (p["k"] == 0 or p["seed"] == 0) else 0), data(1, 1), {"k": [1, 0]}, seeds=(0, 1))
    assert out["chosen"] == {"k": 0}
    assert out["curve"][0]["val_per_seed"] == [100.0, 0.0] and out["curve"][0]["val"] == 50.0


def test_without_val_the_protocol_carves_it_from_train_only():
    d = data(1, 2)
    del d["val"]
    method = Oracle(lambda p: p["k"])
    out = run(method, d, {"k": [0, 1]})
    assert out["sizes"] == {"train": 9, "val": 1, "test": 10}
    assert all((X != 3.0).all() for X in method.seen)


def test_reference_protocol_trains_on_train_and_tests_once():
    method = Oracle(lambda p: 3)
    out = protocol.reference(method.fit, data(1, 3), params={"k": 0}, seeds=[0, 1], metric="top1",
                             num_classes=4, device="cpu")
    assert out["test"]["top1"] == [100.0, 100.0] and len(method.seen) == 1 and len(method.seen[0]) == 10
    assert (method.seen[0] == 1.0).all()


def test_grid_points_follow_the_yaml_order():
    assert protocol.grid_points({"a": [1, 2], "b": ["x", "y"]}) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]


def test_boolean_grids_are_not_edges():
    out = run(Oracle(lambda p: int(p["k"])), data(1, 1), {"k": [False, True]})
    assert out["chosen"] == {"k": True} and out["edge"] == {}


def test_a_class_too_small_to_carve_val_is_one_sentence():
    import pytest

    from bench import UserError

    d = data(1, 2)
    del d["val"]
    d["train"] = (d["train"][0], torch.tensor([0] * 9 + [1]))
    with pytest.raises(UserError, match="cannot carve a val split"):
        run(Oracle(lambda p: 0), d, {"k": [0, 1]})


def test_equal_val_scores_in_another_seed_order_tie_and_the_earlier_point_wins():
    """Val labels 1x class 0, 1x class 1, 5x class 2, 2x class 3: a head predicting one class scores
    100/9, 100/9 or 500/9. Point k=0 scores (11.1, 11.1, 55.6) over seeds 0..2, point k=1 (11.1, 55.6,
    11.1): equal means, but summed in that order they differ in the last bit, in float32 and float64."""
    order = {0: [0, 1, 2], 1: [0, 2, 1]}
    d = data(val_label=0, test_label=0)
    d["val"] = (torch.full((9, 2), 2.0), torch.tensor([0, 1, 2, 2, 2, 2, 2, 3, 3]))
    assert torch.tensor([[100 / 9, 100 / 9, 500 / 9], [100 / 9, 500 / 9, 100 / 9]], dtype=torch.float64).mean(1).diff() > 0
    out = run(Oracle(lambda p: order[p["k"]][p["seed"]]), d, {"k": [0, 1]}, seeds=(0, 1, 2))
    assert out["chosen"] == {"k": 0}
    assert out["curve"][0]["val"] == out["curve"][1]["val"]
    out = run(Oracle(lambda p: order[1 - p["k"]][p["seed"]]), d, {"k": [0, 1]}, seeds=(0, 1, 2))
    assert out["chosen"] == {"k": 0}


class WarmOracle(Oracle):
    """An Oracle whose fit takes `init`, as the linear probe's does: it records what it was given."""

    def fit(self, X, y, *, num_classes, points, device, init=None):
        self.inits = getattr(self, "inits", []) + [init]
        heads = super().fit(X, y, num_classes=num_classes, points=points, device=device)
        heads.weight += torch.tensor([float(p["k"] * 10 + p["seed"]) for p in points]).view(-1, 1, 1)
        return heads


def test_the_refit_starts_from_the_heads_validated_at_the_chosen_point():
    method = WarmOracle(lambda p: p["k"])
    out = run(method, data(val_label=1, test_label=1), {"k": [0, 1, 2]}, seeds=(0, 1))
    assert out["chosen"] == {"k": 1} and method.inits[0] is None
    # the val fit's heads of point k=1, seeds 0 and 1 (weights 10 and 11), in the refit's order
    assert method.inits[1].weight[:, 0, 0].tolist() == [10.0, 11.0]
    assert method.inits[1].bias.argmax(1).tolist() == [1, 1]


def test_linear_fits_are_recorded_and_a_max_iter_hit_is_flagged_in_the_record_and_the_table():
    import pandas as pd
    from sklearn.datasets import load_digits

    from bench.methods import linear
    from bench.report import table

    X, y = torch.tensor(load_digits().data[:300]), torch.tensor(load_digits().target[:300])
    d = {"train": (X[:150], y[:150]), "val": (X[150:200], y[150:200]), "test": (X[200:], y[200:])}
    params = {"penalty": 1.0, "max_iter": 500, "tol": 1e-4, "rtol": 1e-2, "standardize": True}

    def select(max_iter):
        return protocol.select(linear.fit, d, params={**params, "max_iter": max_iter}, grid={"penalty": [10.0, 1e-3]},
                               seeds=[0], metric="top1", num_classes=10, device="cpu", val_fraction=0.1,
                               split_seed=0)

    out = select(500)
    assert out["max_iter_hit"] == [] and out["refit"][0]["converged"]
    assert all(c["fit"][0]["converged"] and c["fit"][0]["iterations"] > 0 for c in out["curve"])
    out = select(2)
    assert out["max_iter_hit"] == [{"penalty": 10.0}, {"penalty": 1e-3}, "refit"]
    assert [c["fit"][0]["stop"] for c in out["curve"]] == ["max_iter", "max_iter"]
    row = pd.Series({"mean": 90.0, "std": 0.0, "seeds": 1, "edge": {}, "method": "linear", "delta_vs_linear": 0.0,
                     "max_iter_hit": True})
    assert table.cell(row, best=False) == "90.00‡"


def test_the_rule_over_any_learner_fits_train_then_train_and_val_and_scores_test_once():
    calls = []

    def fit_score(points, fit_on, score_on, start=None, rate=None):
        calls.append((fit_on, score_on, [p["k"] for p in points], start))
        return torch.stack([torch.full((4,), p["k"]) for p in points]), None

    labels = {"val": torch.full((4,), 2), "test": torch.full((4,), 2)}
    out = protocol.choose(fit_score, labels, params={"k": 0}, grid={"k": [1, 2, 3]}, seeds=[0, 1], metric="top1")
    assert calls == [("train", "val", [1, 1, 2, 2, 3, 3], None), ("train+val", "test", [2, 2], [2, 3])]
    assert out["chosen"] == {"k": 2} and out["test"]["top1"] == [100.0, 100.0]
    calls.clear()
    out = protocol.fixed(fit_score, labels, params={"k": 3}, seeds=[0], metric="top1")
    assert calls == [("train", "test", [3], None)] and out["test"]["top1"] == [0.0]


def test_points_a_sweep_ended_early_before_are_left_out_of_the_choice_and_say_so():
    """A learner that ends its sweep early (`linear`'s `early_end`) gets the val scorer (`rate`); the points
    whose fits say `stop: early end` are never chosen, even where their (unfitted) heads would score best, and
    their curve entries have no val score."""
    rated = []

    def fit_score(points, fit_on, score_on, start=None, rate=None):
        if fit_on == "train":
            rated.append(rate(torch.full((4,), 2)))
        pred = torch.stack([torch.full((4,), p["k"]) for p in points])
        ends = [{"stop": "early end" if p["k"] == 2 and fit_on == "train" else "tol"} for p in points]
        return pred, ends

    labels = {"val": torch.full((4,), 2), "test": torch.full((4,), 2)}
    out = protocol.choose(fit_score, labels, params={"k": 0}, grid={"k": [1, 2, 3]}, seeds=[0], metric="top1")
    assert rated == [100.0]  # the val scorer: predictions on val -> the dataset's metric
    assert out["chosen"] == {"k": 1}  # k=2 would score 100 on val, but it was not fitted
    assert [c["val"] for c in out["curve"]] == [0.0, None, 0.0]
    assert out["curve"][1]["val_per_seed"] is None and out["curve"][1]["fit"] == [{"stop": "early end"}]


def test_linear_with_early_end_picks_what_the_full_sweep_picks_when_the_peak_comes_first():
    from sklearn.datasets import load_digits

    from bench.methods import linear

    X, y = torch.tensor(load_digits().data[:600]), torch.tensor(load_digits().target[:600])
    d = {"train": (X[:300], y[:300]), "val": (X[300:450], y[300:450]), "test": (X[450:], y[450:])}
    params = {"penalty": 1.0, "max_iter": 500, "tol": 1e-4, "rtol": 1e-2, "standardize": True}
    grid = {"penalty": [10.0 ** e for e in range(-6, 6)]}

    def select(early_end):
        return protocol.select(linear.fit, d, params={**params, "early_end": early_end}, grid=grid, seeds=[0],
                               metric="top1", num_classes=10, device="cpu", val_fraction=0.1, split_seed=0)

    full, ended = select(0), select(2)
    skipped = [c["point"]["penalty"] for c in ended["curve"] if c["val"] is None]
    assert skipped and all(c["val"] is not None for c in full["curve"])
    assert max(skipped) < min(c["point"]["penalty"] for c in ended["curve"] if c["val"] is not None)  # the weak end
    assert ended["chosen"] == full["chosen"] and ended["test"]["score"] == full["test"]["score"]
    fitted = [c for c in full["curve"] if c["point"]["penalty"] not in skipped]
    assert [c["val"] for c in fitted] == [c["val"] for c in ended["curve"] if c["val"] is not None]
