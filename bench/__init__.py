"""seabench: classifiers on frozen deep features and the feature-space augmentations that improve them.

The package, in the order a run passes through it (docs/architecture.md has the whole map):

    cli.py         the subcommands and signals; the only module that sees Hydra's config objects
    config.py      the config tree and the checks of what a user asks of it (shared by the CLI and `status`);
                   ranges.py: the valid range of every method hyperparameter (its YAML's `ranges:`)
    job.py         one run: data -> features -> protocol -> record, in plain Python
    data/          one module per dataset family: canonical splits, checks, downloads, `seabench doctor`
    backbones/     timm models + the checkpoint zoo (weights, key conversions, preprocessing)
    features.py    extraction + the content-addressed feature cache;  flows.py: the flow fitted on features
    protocol.py    selection on val / reference / augself, seeds;  metrics.py: the two accuracies
    methods/       the feature-space methods: tensors in, heads out
    finetune/      end-to-end training on the images, resumable
    results.py     one JSON record per run;  temps.py: atomic writes;  fetch.py: verified downloads;
                   locks.py: leases between jobs (cache entries, a run's claim on its cell, downloads);
                   progress.py: bars and log lines
    sweep/         the cells of a multirun: markers, `seabench status`, threads per job
    report/        records -> the table, its statistics, published rows, LaTeX and figures

Rules of the house, checked by tests/test_layout.py: methods see only tensors (no data, backbones,
features, records or config); the report reads only records (nothing of a run); nothing below the CLI
sees a DictConfig; no two modules import each other, directly or through others.
"""

import hashlib
import json

__version__ = "0.1.0"


class UserError(Exception):
    """Bad input from the user: the CLI prints the message (one sentence) and exits non-zero."""


def digest(value) -> str:
    """sha256 (hex) of a JSON-able value in canonical form (sorted keys; other values by `str`): the one
    content hash of configs, cache keys and record signatures, so equal content gives an equal key."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
