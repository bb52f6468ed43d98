"""tfkit.datasets: the embedded digits export (real scans, stratified seeded split, atomic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tfkit.cli import main
from tfkit.datasets import export_dataset
from tfkit.utils import TfkitError


def test_digits_export_matches_sklearn(digits_dir: Path) -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    train = pd.read_csv(digits_dir / "train.csv", dtype={"id": str})
    test = pd.read_csv(digits_dir / "test.csv", dtype={"id": str})
    assert list(train.columns) == ["id", "label"] == list(test.columns)
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert not set(train.id) & set(test.id)
    both = pd.concat([train, test])
    idx = both.id.str.slice(6).astype(int).to_numpy()
    assert (both.label.to_numpy() == d.target[idx]).all()
    # pixels: PNG 8x8 grayscale, value v*255/16 of the bundled scan
    for k in (0, 17, 1796):
        img = Image.open(digits_dir / "images" / f"digit_{k:05d}.png")
        assert img.size == (8, 8) and img.mode == "L"
        assert (np.asarray(img) == np.rint(d.images[k] * 255 / 16)).all()
    assert len(list((digits_dir / "images").iterdir())) == 1797


def test_digits_split_is_stratified_and_seeded(digits_dir: Path, tmp_path: Path) -> None:
    test = pd.read_csv(digits_dir / "test.csv")
    counts = test.label.value_counts()
    assert counts.max() - counts.min() <= 2  # 10 classes of ~180 -> ~36 each
    export_dataset("digits", tmp_path / "same", seed=42)
    export_dataset("digits", tmp_path / "other", seed=7)
    assert (tmp_path / "same" / "test.csv").read_bytes() == (digits_dir / "test.csv").read_bytes()
    assert (tmp_path / "other" / "test.csv").read_bytes() != (digits_dir / "test.csv").read_bytes()


def test_export_refuses_non_empty_and_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "d"
    out.mkdir()
    (out / "junk.txt").write_text("x")
    assert main(["datasets", "export", "digits", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "junk.txt").exists()
    assert main(["datasets", "export", "digits", "--out", str(out), "--overwrite", "--test-size", "0.5"]) == 0
    assert not (out / "junk.txt").exists()
    assert len(pd.read_csv(out / "test.csv")) in (898, 899)
    # nothing temporary left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_export_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(TfkitError, match="unknown dataset"):
        export_dataset("mnist", tmp_path / "x")
    with pytest.raises(TfkitError, match="test-size"):
        export_dataset("digits", tmp_path / "x", test_size=1.5)
    assert not (tmp_path / "x").exists()
