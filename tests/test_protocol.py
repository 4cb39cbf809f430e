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


def test_the_rule_over_any_learner_fits_train_then_train_and_val_and_scores_test_once():
    calls = []

    def fit_score(points, fit_on, score_on):
        calls.append((fit_on, score_on, [p["k"] for p in points]))
        return torch.stack([torch.full((4,), p["k"]) for p in points])

    labels = {"val": torch.full((4,), 2), "test": torch.full((4,), 2)}
    out = protocol.choose(fit_score, labels, params={"k": 0}, grid={"k": [1, 2, 3]}, seeds=[0, 1], metric="top1")
    assert calls == [("train", "val", [1, 1, 2, 2, 3, 3]), ("train+val", "test", [2, 2])]
    assert out["chosen"] == {"k": 2} and out["test"]["top1"] == [100.0, 100.0]
    calls.clear()
    out = protocol.fixed(fit_score, labels, params={"k": 3}, seeds=[0], metric="top1")
    assert calls == [("train", "test", [3])] and out["test"]["top1"] == [0.0]
