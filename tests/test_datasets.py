"""tfkit.datasets: the embedded digits exports (real scans, stratified seeded split, atomic; mosaics,
regression targets, channel files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tfkit.cli import main
from tfkit.datasets import CHANNELS, export_dataset
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


# --------------------------------------------------------------------------- multi-label, regression, channels


@pytest.fixture(scope="module")
def sklearn_digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.rint(d.images * 255 / 16).astype(np.uint8), d.target


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """Each new embedded dataset exported once (seed 42, as the digits fixture)."""
    root = tmp_path_factory.mktemp("embedded")
    return {name: export_dataset(name, root / name)["images"].parent
            for name in ("digits-multilabel", "digits-regression", "digits-channels")}


def _csvs(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (pd.read_csv(folder / "train.csv", dtype={"tags": str}), pd.read_csv(folder / "test.csv", dtype={"tags": str}))


def _build_and_read(tmp_path: Path, folder: Path, frame: pd.DataFrame, *options: str) -> dict[str, dict]:
    """build-records on ``frame`` (a few rows) with ``options``; every example by id."""
    import tensorflow as tf

    from tfkit.records import load_manifest, make_image_decoder, make_parser, shard_files

    frame.to_csv(tmp_path / "few.csv", index=False)
    out = tmp_path / f"records{len(list(tmp_path.iterdir()))}"
    assert main(["build-records", "--csv", str(tmp_path / "few.csv"), "--images", str(folder / "images"),
                 "--out", str(out), "--folds", "2", "--workers", "1", *options]) == 0
    manifest = load_manifest(out)
    parse, decode = make_parser(manifest), make_image_decoder(manifest)
    rows = {}
    for raw in tf.data.TFRecordDataset(shard_files(out)):
        ex = parse(raw)
        rows[ex["id"].numpy().decode()] = {"label": ex["label"].numpy(), "pixels": decode(ex["image"]).numpy()}
    return rows


def test_mosaics_hold_their_sources_and_are_tagged_with_their_digits(exported, sklearn_digits, digits_dir) -> None:
    pixels, target = sklearn_digits
    folder = exported["digits-multilabel"]
    train, test = _csvs(folder)
    assert list(train.columns) == ["id", "tags", *[f"d{d}" for d in range(10)], "sources"]
    assert (len(train), len(test)) == (1437 // 4, 360 // 4)
    digit_split = {"train": set(pd.read_csv(digits_dir / "train.csv").id), "test": set(pd.read_csv(digits_dir / "test.csv").id)}
    used: list[str] = []
    for split, frame in (("train", train), ("test", test)):
        for r in frame.itertuples():
            sources = r.sources.split(" ")
            assert set(sources) <= digit_split[split]  # mosaics never mix the two sides of the split
            used += sources
            idx = [int(s[6:]) for s in sources]
            img = np.asarray(Image.open(folder / "images" / f"{r.id}.png"))
            assert img.shape == (16, 16) and (img == np.block([[pixels[idx[0]], pixels[idx[1]]],
                                                                [pixels[idx[2]], pixels[idx[3]]]])).all()
            tags = sorted({int(target[i]) for i in idx})
            assert r.tags == " ".join(map(str, tags))
            assert [getattr(r, f"d{d}") for d in range(10)] == [int(d in tags) for d in range(10)]
    assert len(used) == len(set(used))  # each scan in one mosaic at most


def test_mosaic_tags_build_the_same_records_from_tags_or_columns(exported, tmp_path: Path) -> None:
    folder = exported["digits-multilabel"]
    few = _csvs(folder)[0].head(24)
    by_tags = _build_and_read(tmp_path, folder, few, "--label-col", "tags", "--label-sep", " ")
    by_cols = _build_and_read(tmp_path, folder, few, "--label-cols", ",".join(f"d{d}" for d in range(10)))
    assert by_tags.keys() == by_cols.keys() == set(few.id)
    for r in few.itertuples():
        want = [float(str(d) in r.tags.split()) for d in range(10)]
        assert by_tags[r.id]["label"].tolist() == want == by_cols[r.id]["label"].tolist()


def test_regression_targets_are_the_digit_and_its_ink(exported, sklearn_digits, tmp_path: Path) -> None:
    pixels, target = sklearn_digits
    folder = exported["digits-regression"]
    train, test = _csvs(folder)
    assert list(train.columns) == ["id", "value", "ink", "ink_top", "ink_bottom"] and len(train) + len(test) == 1797
    for r in pd.concat([train.head(50), test.head(50)]).itertuples():
        k = int(r.id[6:])
        img = np.asarray(Image.open(folder / "images" / f"{r.id}.png"))
        assert (img == pixels[k]).all() and r.value == target[k]
        assert (r.ink, r.ink_top, r.ink_bottom) == tuple(round(float(a.mean()) / 255, 4)
                                                         for a in (pixels[k], pixels[k][:4], pixels[k][4:]))
    few = train.head(20)
    rows = _build_and_read(tmp_path, folder, few, "--target-cols", "value,ink")
    assert {i: r["label"].tolist() for i, r in rows.items()} == {
        r.id: [np.float32(r.value), np.float32(r.ink)] for r in few.itertuples()}


def test_channel_files_and_their_records(exported, sklearn_digits, tmp_path: Path) -> None:
    pixels, target = sklearn_digits
    folder = exported["digits-channels"]
    train, test = _csvs(folder)
    assert len(train) == 1437 and len(list((folder / "images").iterdir())) == 4 * 1797
    train_scans = {pixels[int(i[6:])].tobytes() for i in train.id}
    for r in train.head(30).itertuples():
        scan = pixels[int(r.id[6:])]
        red, green, blue, yellow = (Image.open(folder / "images" / f"{r.id}_{c}.png") for c in CHANNELS)
        assert (red.mode, green.mode, blue.mode, yellow.mode) == ("L", "L", "L", "I;16")
        assert (np.asarray(red) == scan).all() and (np.asarray(green) == 255 - scan).all()
        assert (np.asarray(yellow) == scan.astype(np.uint16) * 257).all()
        assert np.asarray(blue).tobytes() in train_scans and r.label == target[int(r.id[6:])]
    few = train.head(16)
    rows = _build_and_read(tmp_path, folder, few, "--channels", ",".join(CHANNELS))
    for r in few.itertuples():
        got = rows[r.id]["pixels"]
        scan = pixels[int(r.id[6:])].astype(np.uint16)
        assert got.shape == (8, 8, 4) and got.dtype == np.uint16  # one 16-bit channel: all read as 16-bit
        assert (got[..., 0] == scan * 257).all() and (got[..., 3] == scan * 257).all()
        assert rows[r.id]["label"] == r.label


def test_every_dataset_exports_the_same_bytes_for_the_same_seed(exported, tmp_path: Path) -> None:
    export_dataset("digits-multilabel", tmp_path / "again")
    export_dataset("digits-multilabel", tmp_path / "seed7", seed=7)
    first = exported["digits-multilabel"]
    assert (tmp_path / "again" / "train.csv").read_bytes() == (first / "train.csv").read_bytes()
    assert (tmp_path / "seed7" / "train.csv").read_bytes() != (first / "train.csv").read_bytes()
    assert [p.name for p in sorted((tmp_path / "again" / "images").iterdir())] == \
        [p.name for p in sorted((first / "images").iterdir())]
