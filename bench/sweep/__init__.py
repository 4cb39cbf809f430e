"""Sweeps: what a Hydra multirun's cells leave on disk, and what is read back from it.

    cells.py       a cell's markers beside its record: `.running` (with a heartbeat; under a local launcher the
                   job stops when its sweep's process is gone) while it runs, `.failed` (its one-sentence
                   reason) when it failed; each cell's state (a record is `stale` when the checker the CLI
                   hands in says its data, weights file or device changed)
    status.py      `seabench status`: the cells of a sweep (composed as `seabench run -m` composes them), each
                   done / running / failed / missing, and the report that ends every sweep
    allocation.py  how many threads a job may use: its share of the CPUs it was given

A sweep works on configs and records, not on tensors: this package may import bench.config, bench.results,
bench.temps and itself, never a run's modules (job, protocol, features, data, backbones, methods,
finetune), the report or the CLI. The CLI calls it; bench.job never does.
"""
