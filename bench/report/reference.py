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


def zoo(conf_dir: Path) -> dict[str, str]:
    """{published-row key: the backbone's label} over the zoo's configs (conf/backbone/*.yaml) that name
    published rows, so a published row without runs of ours is labelled as the zoo labels that checkpoint."""
    out = {}
    for path in sorted(Path(conf_dir).glob("*.yaml")):
        try:
            config = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            continue  # `seabench doctor` reports a broken config; the table only loses a label
        if isinstance(config, dict) and isinstance(config.get("published"), dict):
            out[json.dumps(config["published"], sort_keys=True)] = str(config.get("label") or path.stem)
    return out


def load(reference_dir: Path, labels: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per published number: source, cite (the CSV's own `citation` column where it has one, else
    sources.yaml's), short, checkpoint (the match columns, as JSON), dataset, value, and the zoo's label of
    that checkpoint (`labels`, from `zoo`)."""
    labels = labels or {}
    reference_dir = Path(reference_dir)
    sources_file = reference_dir / "sources.yaml"
    if not sources_file.is_file():
        return pd.DataFrame(columns=[*COLUMNS, "zoo_label"])
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
        keys = [json.dumps({"source": csv.stem} | {c: row[c] for c in spec["match"]}, sort_keys=True)
                for _, row in table.iterrows()]
        cite = table["citation"] if "citation" in table.columns else spec["cite"]
        frames.append(pd.DataFrame({
            "source": csv.stem, "cite": cite, "short": spec["short"], "checkpoint": keys,
            "dataset": table["dataset"], "published": table[spec["value"]].astype(float),
            "zoo_label": [labels.get(k) for k in keys]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*COLUMNS, "zoo_label"])


def checkpoint_of(record: dict) -> str | None:
    """The published-row key a record's backbone config names, or None."""
    block = (record.get("config") or {}).get("backbone", {}).get("published")
    return json.dumps(block, sort_keys=True) if block else None


def ours(full: pd.DataFrame, row: str, dataset: str) -> pd.Series | None:
    """Our linear probe's row on (backbone identity, dataset): protocol=augself first, then the others."""
    cells = full[(full.row == row) & (full.dataset == dataset) & full.method.isin(BASELINES)]
    for protocol in PROTOCOL_PREFERENCE:
        for method in BASELINES:
            match = cells[(cells.protocol == protocol) & (cells.method == method)]
            if len(match):
                return match.iloc[0]
    return None


def rows(ref: pd.DataFrame, df: pd.DataFrame, full: pd.DataFrame, records: dict[str, dict], *, datasets: list[str],
         everything: bool = False, metric: str | None = None) -> pd.DataFrame:
    """The published rows to show: those whose checkpoint a shown row's backbone config names (matched by
    that row's identity, so [ours] is the probe of the same weights), all of them with `everything`,
    restricted to `datasets`; each with `ours_minus_published` where we have the cell in the published
    metric (with `metric` forcing another one, only on datasets whose own metric it is)."""
    matched = {}
    for row, path, label in zip(df["row"], df["record"], df["label"]):
        key = checkpoint_of(records[path])
        if key is not None:
            matched.setdefault(key, (row, label))
    out = []
    for _, ref_row in ref[ref.dataset.isin(datasets)].iterrows():
        row, label = matched.get(ref_row["checkpoint"], (None, None))
        if row is None and not everything:
            continue
        mine = ours(full, row, ref_row["dataset"]) if row else None
        if mine is not None and metric is not None and records[mine["record"]]["metric"] != metric:
            mine = None  # ours in top-1, the paper's in the dataset's own metric: not comparable
        zoo_label = ref_row["zoo_label"] if isinstance(ref_row["zoo_label"], str) else None
        name = label or zoo_label or " ".join(
            str(v) for k, v in json.loads(ref_row["checkpoint"]).items() if k != "source")
        out.append({"backbone": None if mine is None else mine["backbone"], "row": row, "label": name,
                    "method": "published", "protocol": ref_row["short"], "dataset": ref_row["dataset"],
                    "published": ref_row["published"], "citation": ref_row["cite"],
                    "ours": None if mine is None else mine["mean"],
                    "ours_minus_published": None if mine is None else round(mine["mean"] - ref_row["published"], 4)})
    return pd.DataFrame(out, columns=["backbone", "row", "label", "method", "protocol", "dataset", "published",
                                      "citation", "ours", "ours_minus_published"])
