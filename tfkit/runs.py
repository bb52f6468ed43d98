"""The experiment table: one row per run, side by side.

``tfkit runs DIR...`` takes run folders, or folders holding them at any depth
(a folder of runs, a ``tfkit tune`` folder whose trials live in
``search/trial_<id>/run``, ``tfkit ensemble`` outputs), and writes one row per
run: the CV of the headline metric as trained and with TTA where
``tfkit predict --oof`` measured it, folds trained, model, image size, epochs,
training time, and every config key whose value differs between the runs (the
keys that are the same everywhere say nothing about why scores differ).

Outputs: ``OUT/runs.csv`` and ``OUT/runs.png`` (CV by run), and the table printed.

Example::

    table = runs_table(["runs", "tune"], out="experiments")
    table[["run", "cv", "cv_tta"]].head(3)
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from tfkit.run import EnsembleFolder, RunFolder
from tfkit.run_view import RunView, is_run_folder, read_run
from tfkit.utils import TfkitError, pyplot, save_figure, write_csv

# Keys that change nothing about the model a run trains.
_IGNORED_KEYS = ("train.verbose", "train.folds")


def is_ensemble_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an output folder of ``tfkit ensemble``."""
    return EnsembleFolder(path).is_complete()


def find_runs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Run (and ensemble) folders given, or found at any depth below the folders given.

    Hidden folders (temporary outputs) are skipped. Order: as given, then sorted paths.

    Raises:
        TfkitError: a path does not exist, or nothing below it is a run.
    """
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise TfkitError(f"runs: folder not found: {p}")
        if is_run_folder(p) or is_ensemble_folder(p):
            hits = [p]
        else:
            names = (RunFolder(p).config_path.name, EnsembleFolder(p).weights_path.name)  # one marks each kind
            marks = sorted({c.parent for name in names for c in p.rglob(name)})
            hits = [d for d in marks if not any(part.startswith(".") for part in d.relative_to(p).parts)
                    and (is_run_folder(d) or is_ensemble_folder(d))]
        if not hits:
            raise TfkitError(f"runs: no run folder in {p} (expected config.yaml, manifest.json and oof.csv "
                             "or fold<k>/oof.csv, or a tfkit ensemble output)")
        found += [h for h in hits if h not in found]
    return found


def _flat_config(cfg: Any) -> dict[str, Any]:
    from tfkit.config import config_to_dict

    out = {}
    for section, values in config_to_dict(cfg).items():
        for key, value in values.items():
            out[f"{section}.{key}"] = json.dumps(value) if isinstance(value, (list, tuple, dict)) else value
    return out


def _model_label(cfg: Any) -> str:
    m = cfg.model
    label = f"{m.name} w{m.width}" if m.name == "small_cnn" else m.name
    return label + (f" +{m.head}" if getattr(m, "head", "dense") != "dense" else "")


def _train_row(view: RunView, metric: str) -> dict[str, Any]:
    tta = view.cv_tta or {}
    seconds = view.trial.get("seconds") if view.trial else None
    return {
        "kind": "trial" if view.trial else "train", "metric": metric,
        "cv": view.cv["metrics"].get(metric, np.nan),
        "cv_tta": (tta.get("tta") or {}).get(metric, np.nan),
        "tta": f"{tta['n_views']} {tta['mode']}" if tta else "",
        "folds": f"{len(view.folds)}/{view.manifest.n_folds}",
        "model": _model_label(view.cfg), "image_size": int(view.cfg.data.image_size),
        "epochs": int(view.cfg.train.epochs),
        "time_s": round(float(seconds if seconds is not None else view.seconds), 1),
    }


def _ensemble_row(path: Path, metric: str) -> dict[str, Any]:
    folder = EnsembleFolder(path)
    cv, weights = folder.read_cv(), folder.read_weights()
    members = ", ".join(r["name"] for r in weights.get("runs", []))
    return {"kind": "ensemble", "metric": metric, "cv": cv.get("metrics", {}).get(metric, np.nan),
            "cv_tta": np.nan, "tta": "", "folds": f"{cv.get('n_folds_trained', '')}/{cv.get('n_folds', '')}",
            "model": f"{weights.get('method')} of {members}", "image_size": None, "epochs": None, "time_s": None}


def _differing(configs: dict[int, dict[str, Any]]) -> list[str]:
    keys = sorted({k for c in configs.values() for k in c} - set(_IGNORED_KEYS))
    return [k for k in keys if len({json.dumps(c.get(k), default=str) for c in configs.values()}) > 1]


def _display_names(paths: Sequence[Path]) -> list[str]:
    """Paths relative to their common parent (just the name for one run)."""
    if len(paths) == 1:
        return [paths[0].name]
    common = Path(os.path.commonpath([str(p.absolute()) for p in paths]))
    return [str(p.absolute().relative_to(common)) or p.name for p in paths]


def runs_table(paths: Sequence[str | os.PathLike], out: str | os.PathLike | None = "runs_table",
               metric: str | None = None) -> pd.DataFrame:
    """One row per run found in ``paths``; printed, and written to ``out`` as CSV and PNG.

    Args:
        paths: run folders or folders holding runs (tune folders, ensemble outputs too).
        out: folder for ``runs.csv`` and ``runs.png`` (``None``: write nothing).
        metric: the CV metric shown (default the most common headline metric of the runs).

    Returns:
        The table, best CV first: run, kind, metric, cv, cv_tta, tta, folds, model,
        image_size, epochs, time_s, then each config key that differs between runs.

    Raises:
        TfkitError: a path without runs.
    """
    from tfkit.metrics import lower_is_better

    found = find_runs(paths)
    views = {i: read_run(p) for i, p in enumerate(found) if not is_ensemble_folder(p)}
    if metric is None:
        primaries = [v.primary for v in views.values()] or [RunFolder(p).read_cv().get("primary") for p in found]
        metric = Counter(primaries).most_common(1)[0][0]
    configs = {i: _flat_config(v.cfg) for i, v in views.items()}
    keys = _differing(configs)
    rows = []
    for i, (path, name) in enumerate(zip(found, _display_names(found))):
        row = _train_row(views[i], metric) if i in views else _ensemble_row(path, metric)
        rows.append({"run": name, **row, **{k: configs.get(i, {}).get(k) for k in keys}})
    table = pd.DataFrame(rows).astype({"image_size": "Int64", "epochs": "Int64"})  # blank for ensembles
    table = table.sort_values("cv", ascending=lower_is_better(metric), na_position="last", kind="stable")
    table = table.reset_index(drop=True)
    if out is not None:
        write_csv(Path(out) / "runs.csv", table)
        plot_runs(table, metric, Path(out) / "runs.png")
    with pd.option_context("display.width", 200, "display.max_columns", 50, "display.max_colwidth", 40):
        print(table.to_string(index=False, na_rep="", float_format=lambda x: f"{x:.4g}"))
    return table


def plot_runs(table: pd.DataFrame, metric: str, path: str | os.PathLike) -> Path:
    """Horizontal bars of each run's CV, a diamond where the CV with TTA is known."""
    plt = pyplot()
    n = len(table)
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.38 * n))
    y = np.arange(n)[::-1]
    cv = table["cv"].to_numpy(dtype=float)
    tta = table["cv_tta"].to_numpy(dtype=float)
    colors = ["tab:orange" if k == "ensemble" else "tab:green" if k == "trial" else "tab:blue" for k in table["kind"]]
    ax.barh(y, cv, color=colors, alpha=0.8)
    if np.isfinite(tta).any():
        ax.plot(tta, y, "D", color="black", markersize=5, label="with TTA")
        ax.legend(fontsize=8, loc="lower right")
    for yi, v in zip(y, cv):
        if np.isfinite(v):
            ax.text(v, yi, f" {v:.4f}", va="center", fontsize=7)
    finite = np.concatenate([cv[np.isfinite(cv)], tta[np.isfinite(tta)]])
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        pad = max((hi - lo) * 0.25, 1e-3)
        ax.set_xlim(lo - pad, hi + pad * 1.5)
    ax.set_yticks(y, [f"{r} ({m})" for r, m in zip(table["run"], table["model"])], fontsize=7)
    ax.set_xlabel(f"CV {metric} (blue: train runs, green: tune trials, orange: ensembles)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
