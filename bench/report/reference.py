"""Published numbers (results/reference/*.csv) as rows of the table, matched to the runs by backbone and dataset.

`sources.yaml` beside the CSVs says, per CSV, its citation, the columns that name a checkpoint (`match`) and
the value column. A backbone config's `published:` block names its rows (`source` + the match columns), so
a run is matched through the config it recorded, not through a display name. For each matched cell the table
gives our number minus the published one, where ours is the backbone's linear probe (protocol=augself first).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import yaml

from bench import UserError
from bench.report.compare import BASELINES

log = logging.getLogger(__name__)

PROTOCOL_PREFERENCE = ("augself", "selection", "reference")  # which of our probes a published number meets
COLUMNS = ["source", "cite", "short", "checkpoint", "dataset", "published"]


def load(reference_dir: Path) -> pd.DataFrame:
    """One row per published number: source, cite, short, checkpoint (the match columns, as JSON), dataset, value."""
    reference_dir = Path(reference_dir)
    sources_file = reference_dir / "sources.yaml"
    if not sources_file.is_file():
        return pd.DataFrame(columns=COLUMNS)
    try:
        sources = yaml.safe_load(sources_file.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"cannot parse {sources_file}: {err}") from None
    frames = []
    for csv in sorted(reference_dir.glob("*.csv")):
        if csv.stem not in sources:
            log.warning("%s has no entry in %s: its numbers are not shown", csv, sources_file)
            continue
        spec = sources[csv.stem]
        table = pd.read_csv(csv)
        missing = [c for c in [*spec["match"], spec["value"], "dataset"] if c not in table.columns]
        if missing:
            raise UserError(f"{csv} lacks the columns {', '.join(missing)} that {sources_file} names")
        frames.append(pd.DataFrame({
            "source": csv.stem, "cite": spec["cite"], "short": spec["short"],
            "checkpoint": [json.dumps({"source": csv.stem} | {c: row[c] for c in spec["match"]}, sort_keys=True)
                           for _, row in table.iterrows()],
            "dataset": table["dataset"], "published": table[spec["value"]].astype(float)}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def checkpoint_of(record: dict) -> str | None:
    """The published-row key a record's backbone config names, or None."""
    block = (record.get("config") or {}).get("backbone", {}).get("published")
    return json.dumps(block, sort_keys=True) if block else None


def ours(df: pd.DataFrame, backbone: str, dataset: str) -> float | None:
    """Our linear probe's mean on (backbone, dataset): protocol=augself first, then the others."""
    cells = df[(df.backbone == backbone) & (df.dataset == dataset) & df.method.isin(BASELINES)]
    for protocol in PROTOCOL_PREFERENCE:
        for method in BASELINES:
            match = cells[(cells.protocol == protocol) & (cells.method == method)]
            if len(match):
                return float(match["mean"].iloc[0])
    return None


def rows(ref: pd.DataFrame, df: pd.DataFrame, records: dict[str, dict], *, datasets: list[str],
         everything: bool = False) -> pd.DataFrame:
    """The published rows to show: those matched to a shown backbone (all of them with `everything`),
    restricted to `datasets`, each with `ours_minus_published` where we have the cell."""
    matched = {}
    for backbone, path, label in zip(df["backbone"], df["record"], df["label"]):
        key = checkpoint_of(records[path])
        if key is not None:
            matched.setdefault(key, (backbone, label))
    out = []
    for _, row in ref[ref.dataset.isin(datasets)].iterrows():
        backbone, label = matched.get(row["checkpoint"], (None, None))
        if backbone is None and not everything:
            continue
        mine = ours(df, backbone, row["dataset"]) if backbone else None
        name = label or " ".join(str(v) for k, v in json.loads(row["checkpoint"]).items() if k != "source")
        out.append({"backbone": backbone, "label": name, "method": "published", "protocol": row["short"],
                    "dataset": row["dataset"], "published": row["published"], "cite": row["cite"],
                    "ours": mine, "ours_minus_published": None if mine is None else round(mine - row["published"], 4)})
    return pd.DataFrame(out, columns=["backbone", "label", "method", "protocol", "dataset", "published", "cite",
                                      "ours", "ours_minus_published"])
