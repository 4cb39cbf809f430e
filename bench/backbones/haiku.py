"""BYOL's official checkpoints (`pretrain_res50x1.pkl`), read without JAX, Haiku or dill.

The file is `dill.dump(dict(experiment_state=..., step=..., rng=...), protocol=2)` of a
`_ByolExperimentState(online_params, target_params, online_state, target_state, opt_state)`
(google-deepmind/deepmind-research byol/utils/checkpointing.py and byol_experiment.py). Its arrays
are NumPy arrays (`jax.device_get`); its containers are Haiku / optax / BYOL classes. A restricted
unpickler rebuilds NumPy arrays and plain Python values, and stands in a neutral `Opaque` object for
every other class, so no code from the file runs and no JAX stack is needed (no extra to install).

Haiku keeps parameters as {module path: {name: array}}: convolutions `w` in HWIO order, batch norms
`scale` / `offset` of shape (1, 1, 1, C), and their moving statistics in the state tree under
`<module>/~/mean_ema` and `<module>/~/var_ema` (`average` is what hk.BatchNorm uses at test time).
"""

from __future__ import annotations

import collections
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from bench import UserError

# dill.dump(dict(...), protocol=2) in byol/utils/checkpointing.py: a protocol-2 pickle of a dict. (Old torch
# files are protocol-2 pickles too, but start with a number, torch's magic, not a dict.)
PICKLED_DICT = b"\x80\x02}"
HEADS = ("projector", "predictor", "classifier")  # byol_experiment._forward: everything but the encoder
FIELDS = ("online_params", "target_params", "online_state", "target_state", "opt_state")  # _ByolExperimentState
NUMPY = {"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"}
BUILTINS = {("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "bytearray", "complex")} | {
    ("collections", "OrderedDict"), ("_codecs", "encode")}


class Opaque:
    """An object of a class not imported here: its constructor arguments and pickled state, kept as data."""

    origin = "?"

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state


def _namedtuple(name, fields, module=None, *defaults):
    """dill pickles a namedtuple class as `_create_namedtuple(name, fields, module)`: rebuild it plainly."""
    return collections.namedtuple(str(name), list(fields))


class _Reader(pickle.Unpickler):
    stand_ins: ClassVar[dict[str, type]] = {}  # one stand-in class per original class, shared by all reads

    def find_class(self, module: str, name: str):
        if module.split(".")[0] == "numpy" and name in NUMPY:
            return super().find_class(module, name)
        if (module, name) in BUILTINS:
            return super().find_class(module, name)
        if module.split(".")[0] == "dill" and name == "_create_namedtuple":
            return _namedtuple
        origin = f"{module}.{name}"
        if origin not in self.stand_ins:
            self.stand_ins[origin] = type(name, (Opaque,), {"origin": origin})
        return self.stand_ins[origin]


def looks_like(path: Path) -> bool:
    """A plain pickled dict (BYOL) rather than a torch checkpoint."""
    with open(path, "rb") as f:
        return path.suffix == ".pkl" or f.read(len(PICKLED_DICT)) == PICKLED_DICT


class Unreadable(UserError):
    """A checkpoint file that cannot be read; what to do depends on whose file it is (bench.backbones.create)."""


def read(path: Path):
    try:
        with open(path, "rb") as f:
            return _Reader(f, encoding="latin1").load()
    except Exception as err:  # noqa: BLE001 -- truncated pickles raise EOFError, UnpicklingError, ValueError ...
        raise Unreadable(f"cannot read the BYOL checkpoint {path} ({type(err).__name__}: {err}): it is "
                         f"truncated or not BYOL's pickle") from None


def mapping(obj, what: str) -> Mapping:
    """A Haiku container (dict, frozendict, FlatMapping ...) as a Mapping.

    A container pickled through its constructor (`__reduce__` -> (cls, (dict,))) carries the dict as its
    argument; one pickled by its attributes (`__slots__` / `__dict__` state) holds it as its only
    container-valued attribute (frozendict's `_storage`).
    """
    if isinstance(obj, Mapping):
        return obj
    if isinstance(obj, Opaque):
        for arg in obj.args:
            if isinstance(arg, Mapping):
                return arg
        attributes = {}
        for part in obj.state if isinstance(obj.state, tuple) else (obj.state,):
            attributes.update(part if isinstance(part, Mapping) else {})
        inner = [v for v in attributes.values() if isinstance(v, (Mapping, Opaque))]
        if len(inner) == 1:
            return mapping(inner[0], what)
    raise UserError(f"the BYOL checkpoint's {what} is a {getattr(obj, 'origin', type(obj).__name__)}, "
                    f"not a mapping seabench can read")


def trees(raw) -> tuple[Mapping, Mapping]:
    """(online_params, online_state) from the checkpoint's experiment state, whatever its container."""
    state = raw.get("experiment_state", raw) if isinstance(raw, Mapping) else raw
    if isinstance(state, Mapping) and "online_params" in state:
        params, net_state = state["online_params"], state.get("online_state")
    elif hasattr(state, "online_params"):  # dill rebuilt the namedtuple with its field names
        params, net_state = state.online_params, state.online_state
    elif isinstance(state, Opaque) and len(state.args) == len(FIELDS):  # positional, in FIELDS order
        params, net_state = state.args[FIELDS.index("online_params")], state.args[FIELDS.index("online_state")]
    else:
        raise UserError("the checkpoint is a pickle but holds no BYOL experiment state (online_params)")
    return mapping(params, "online_params"), mapping(net_state, "online_state")


def is_byol(raw) -> bool:
    try:
        trees(raw)
    except UserError:
        return False
    return True


def array(value, what: str) -> torch.Tensor:
    if isinstance(value, Opaque):  # e.g. a JAX array pickled through its own constructor
        value = next((a for a in value.args if isinstance(a, np.ndarray)), value)
    if not isinstance(value, np.ndarray):
        raise UserError(f"the BYOL checkpoint's {what} is not an array")
    return torch.from_numpy(np.array(value, dtype=np.float32))


def units(raw) -> dict[str, dict[str, torch.Tensor]]:
    """The encoder's layers, {Haiku module path: {torch parameter name: tensor}}, heads left out."""
    params, state = trees(raw)
    out = {}
    for module, leaves in params.items():
        if module.split("/")[0] in HEADS:
            continue
        leaves = mapping(leaves, module)
        if set(leaves) == {"w"}:
            out[module] = {"weight": array(leaves["w"], module).permute(3, 2, 0, 1).contiguous()}  # HWIO -> OIHW
        elif set(leaves) == {"scale", "offset"}:
            out[module] = {"weight": array(leaves["scale"], module).reshape(-1),
                           "bias": array(leaves["offset"], module).reshape(-1),
                           "running_mean": ema(state, module, "mean_ema"),
                           "running_var": ema(state, module, "var_ema")}
        else:
            raise UserError(f"the BYOL checkpoint's module {module} holds {sorted(leaves)}: neither a "
                            f"convolution (w) nor a batch norm (scale, offset)")
    return out


def ema(state: Mapping, module: str, which: str) -> torch.Tensor:
    key = f"{module}/~/{which}"
    if key not in state:
        raise UserError(f"the BYOL checkpoint has no moving statistics {key}")
    return array(mapping(state[key], key)["average"], key).reshape(-1)
