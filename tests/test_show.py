"""tfkit show: real PNGs, and the numbers behind the plots equal the records'."""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tfkit import data, records
from tfkit.cli import main
from tfkit.config import load_config
from tfkit.show import class_counts, show

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def shown(tmp_path_factory, digits_records):
    out = tmp_path_factory.mktemp("show")
    cfg = load_config(None, ["augment.preset=digits", "data.image_size=32"])
    return show(str(digits_records), cfg, out, n_images=4, n_draws=3), out


def test_writes_valid_non_trivial_pngs(shown):
    paths, out = shown
    names = {p.name for p in paths}
    assert {"augment_grid.png", "class_counts.png", "eda.png", "class_counts.csv", "eda.json"} <= names
    for p in paths:
        assert p.is_file() and p.parent == out
    for name in ("augment_grid.png", "class_counts.png", "eda.png"):
        raw = (out / name).read_bytes()
        assert raw[:8] == PNG_MAGIC and len(raw) > 10_000, (name, len(raw))
        with Image.open(out / name) as im:
            im.verify()
        with Image.open(out / name) as im:
            w, h = im.size
            assert w > 300 and h > 200
            pixels = np.asarray(im.convert("L"))
            assert pixels.std() > 10  # not a blank canvas
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # atomic writes left nothing behind


def test_grid_has_one_row_per_image_and_a_column_per_draw(tmp_path, digits_records):
    cfg = load_config(None, ["augment.preset=digits"])
    (grid, *_) = show(str(digits_records), cfg, tmp_path / "a", n_images=2, n_draws=1)
    (bigger, *_) = show(str(digits_records), cfg, tmp_path / "b", n_images=4, n_draws=3)
    with Image.open(grid) as small, Image.open(bigger) as big:
        assert big.size[0] > 1.5 * small.size[0] and big.size[1] > 1.5 * small.size[1]


def test_class_counts_equal_the_records(shown, digits_records, digits_dir):
    _, out = shown
    manifest = records.load_manifest(str(digits_records))
    table = pd.read_csv(out / "class_counts.csv").set_index("class")
    table.index = table.index.astype(str)
    assert list(table.index) == [str(c) for c in manifest["classes"]]
    # per-fold totals equal the manifest's shard counts
    per_fold: dict[str, int] = {}
    for s in manifest["shards"]:
        per_fold[f"fold{s['fold']}"] = per_fold.get(f"fold{s['fold']}", 0) + s["count"]
    assert table.drop(columns="total").sum().to_dict() == per_fold
    assert int(table["total"].sum()) == manifest["n_examples"]
    # per class and fold: an independent count from the records' folds.csv and the export's labels
    folds_csv = pd.read_csv(digits_records / "folds.csv", dtype={"id": str})
    labels = pd.read_csv(digits_dir / "train.csv", dtype={"id": str})
    joined = folds_csv.merge(labels, on="id")
    assert len(joined) == manifest["n_examples"]
    for (label, fold), n in joined.groupby(["label", "fold"]).size().items():
        assert table.loc[str(label), f"fold{fold}"] == n


def test_class_counts_keeps_empty_classes_and_unlabelled():
    idx = pd.DataFrame({"label": [0, 0, 2, -1], "fold": [0, 1, 1, -1]})
    t = class_counts(idx, ["a", "b", "c"])
    assert t.loc["b"].tolist() == [0, 0, 0, 0]
    assert t["total"].tolist() == [2, 0, 1, 1]
    assert list(t.columns) == ["fold0", "fold1", "test", "total"]


def test_eda_numbers_equal_the_records(shown, digits_records):
    _, out = shown
    summary = json.loads((out / "eda.json").read_text())
    manifest = records.load_manifest(str(digits_records))
    index = data.read_index(str(digits_records), extra=True)
    assert summary["n_examples"] == manifest["n_examples"] == len(index)
    h, w = manifest["image"]["size"]
    assert summary["image_sizes"] == {f"{h}x{w}": manifest["n_examples"]}
    assert summary["source_sizes"] == {"8x8": manifest["n_examples"]}  # the digit scans' own size
    counts = index.label.value_counts()
    assert summary["class_counts"] == {c: int(counts.get(i, 0)) for i, c in enumerate(manifest["classes"])}


def test_cli_show(tmp_path, digits_records, capsys):
    rc = main(["show", "--records", str(digits_records), "--out", str(tmp_path), "--n", "2", "--draws", "1"])
    assert rc == 0
    printed = capsys.readouterr().out.split()
    assert str(tmp_path / "augment_grid.png") in printed and (tmp_path / "eda.png").is_file()
    assert main(["show", "--records", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2


def test_eda_summary_metadata_and_plot(tmp_path):
    from tfkit.show import eda_summary, plot_eda

    manifest = {"classes": ["a", "b"], "split": "train", "metadata": {
        "age": {"kind": "numeric", "mean": 50.0, "std": 10.0},
        "site": {"kind": "categorical", "vocab": ["head", "leg"]}}}
    idx = pd.DataFrame({
        "label": [0, 1, 1, 0, 1], "fold": [0, 0, 1, 1, 1],
        "height": [32, 32, 40, 32, 40], "width": [32, 32, 30, 32, 30],
        "age": [30.0, np.nan, 50.0, 70.0, np.nan], "site": ["head", None, "leg", "leg", "leg"],
    })
    s = eda_summary(idx, manifest)
    assert s["image_sizes"] == {"32x32": 3, "40x30": 2}
    assert s["class_counts"] == {"a": 2, "b": 3}
    assert s["metadata"]["age"] == {"kind": "numeric", "missing": 2, "min": 30.0, "mean": 50.0, "max": 70.0}
    assert s["metadata"]["site"] == {"kind": "categorical", "missing": 1, "counts": {"head": 1, "leg": 3}}
    p = plot_eda(idx, manifest, s, tmp_path / "eda.png")
    assert p.read_bytes()[:8] == PNG_MAGIC and s["source_sizes"] is None
    source = pd.DataFrame({"id": list("abcde"), "height": [64, 64, 80, 600, 64], "width": [64, 64, 60, 800, 64]})
    s = eda_summary(idx, manifest, source)
    assert s["source_sizes"] == {"64x64": 3, "80x60": 1, "600x800": 1} and s["image_sizes"] == {"32x32": 3, "40x30": 2}
    p = plot_eda(idx, manifest, s, tmp_path / "eda_source.png", source)
    assert p.read_bytes()[:8] == PNG_MAGIC
