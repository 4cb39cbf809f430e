"""`seabench data get NAME` and `seabench doctor`: obtain the datasets and say which are ready.

The config tree is the registry: every conf/dataset/<name>.yaml whose loader module knows a folder
for <name> (its `FOLDERS`) is an on-disk dataset; its `load` options are the ones a run would use.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from bench import UserError, config

log = logging.getLogger(__name__)

CONF = config.CONF / "dataset"


@dataclass
class Entry:
    name: str
    module: ModuleType
    options: dict  # the YAML's load options, without _target_

    @property
    def subfolder(self) -> str:
        return self.module.FOLDERS[self.name]


def registry() -> dict[str, Entry]:
    """On-disk datasets by config name, in file-name order."""
    entries = {}
    for path in sorted(CONF.glob("*.yaml")):
        spec = config.read_yaml(path)
        target = (spec.get("load") or {}).get("_target_", "")
        module = importlib.import_module(target.rsplit(".", 1)[0]) if "." in target else None
        name = spec.get("name", path.stem)
        if module is not None and name in getattr(module, "FOLDERS", {}):
            options = {k: v for k, v in spec["load"].items() if k != "_target_"}
            entries[name] = Entry(name, module, options)
    return entries


def lookup(name: str) -> Entry:
    entries = registry()
    if name not in entries:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(entries)}")
    return entries[name]


def status(entry: Entry, root: Path) -> tuple[str, str]:
    """("complete" | "incomplete" | "absent", one line of detail)."""
    if not (root / entry.subfolder).is_dir():
        how = "see datasets/README.md" if getattr(entry.module, "MANUAL", {}).get(entry.name) else \
            f"run `seabench data get {entry.name}`"
        return "absent", f"no {root / entry.subfolder}; {how}"
    try:
        task = entry.module.load(root=root, **entry.options)
    except UserError as err:
        return "incomplete", str(err)
    sizes = " / ".join(f"{len(task.splits[s]):,}" for s in ("train", "val", "test"))
    return "complete", f"{len(task.classes)} classes, train / val / test {sizes}"


def with_data_root(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--data-root", type=Path, default=Path(os.environ.get("SEABENCH_DATA", "datasets")),
                   help="folder that holds all datasets (default: $SEABENCH_DATA or ./datasets)")
    return p


def doctor_main(argv: list[str]) -> int:
    p = with_data_root(argparse.ArgumentParser(prog="seabench doctor"))
    p.add_argument("names", nargs="*", help="datasets to check (default: all)")
    args = p.parse_args(argv)
    root = args.data_root.expanduser()
    entries = [lookup(n) for n in args.names] if args.names else list(registry().values())
    results = [(e.name, *status(e, root)) for e in entries]
    width = max(len(n) for n, _, _ in results)
    print(f"datasets under {root.resolve()}:")
    for name, state, detail in results:
        print(f"  {name:<{width}}  {state:<10}  {detail}")
    return 0 if all(state == "complete" for _, state, _ in results) else 1


def data_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="seabench data")
    sub = p.add_subparsers(dest="action", required=True)
    get = with_data_root(sub.add_parser("get", help="download, verify and unpack a dataset into the data root"))
    get.add_argument("name")
    get.add_argument("--keep-archives", action="store_true", help="keep the downloaded archives")
    sub.add_parser("list", help="the datasets `get` knows")
    args = p.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.action == "list":
        for entry in registry().values():
            print(entry.name)
        return 0
    return get_dataset(lookup(args.name), args.data_root.expanduser(), keep_archives=args.keep_archives)


def get_dataset(entry: Entry, root: Path, *, keep_archives: bool = False) -> int:
    from bench.data.download import install

    state, detail = status(entry, root)
    if state == "complete":
        print(f"{entry.name} is already complete under {root / entry.subfolder}: {detail}")
        return 0
    manual = getattr(entry.module, "MANUAL", {}).get(entry.name)
    if manual:
        print(manual.format(folder=root / entry.subfolder))
        return 1
    install(entry.name, entry.subfolder, entry.module.RESOURCES[entry.name], root,
            arrange=getattr(entry.module, "arrange", None), keep_archives=keep_archives)
    state, detail = status(entry, root)
    if state != "complete":
        raise UserError(f"{entry.name} was downloaded but does not check out: {detail}")
    print(f"{entry.name} is ready under {root / entry.subfolder}: {detail}")
    return 0
