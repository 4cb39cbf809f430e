"""The `seabench` command. The only module that sees Hydra's DictConfig; everything below takes plain values.

    seabench run [-m] <hydra overrides>   one run (or a sweep with -m) -> one record per run
    seabench table                        records -> results/table.md and results/table.csv, printed
"""

from __future__ import annotations

import importlib
import logging
import sys

from bench import UserError

log = logging.getLogger("seabench")

# subcommand -> "module:function"; each function takes the remaining argv
COMMANDS = {
    "run": "bench.cli:run_main",
    "table": "bench.table:main",
}
    "data": "bench.data.doctor:data_main",
    "doctor": "bench.data.doctor:doctor_main",


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"seabench: error: unknown command {command!r}; known: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, function = COMMANDS[command].split(":")
    try:
        return getattr(importlib.import_module(module), function)(rest) or 0
    except UserError as err:
        print(f"seabench: error: {err}", file=sys.stderr)
        return 2
