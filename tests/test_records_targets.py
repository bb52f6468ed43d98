"""tfkit.records: multi-label, regression and multi-channel records (round trips, bad input, folds)."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tfkit.cli import main
from tfkit.records import (
    build_records,
    bytes_list_entry,
    example_from_entries,
    feature_entry,
    float_list_entry,
    int64_list_entry,
    load_manifest,
    make_image_decoder,
    make_parser,
    shard_files,
    source_sizes,
)
from tfkit.records.examples import ExampleEncoder
from tfkit.records.spec import BuildSpec
from tfkit.utils import TfkitError

TAGS = ["cat", "dog", "eel", "fox"]


def read_all(records: Path) -> list[dict]:
    """Every example as numpy values (image decoded), in file order."""
    manifest = load_manifest(records)
    parse, decode = make_parser(manifest), make_image_decoder(manifest)
    out = []
    for raw in tf.data.TFRecordDataset(shard_files(records)):
        ex = parse(raw)
        out.append({"id": ex["id"].numpy().decode(), "label": ex["label"].numpy(), "fold": int(ex["fold"]),
                    "group": ex["group"].numpy().decode(), "pixels": decode(ex["image"]).numpy()})
    return out


def jpeg(rng: np.random.Generator, path: Path, shape=(16, 16, 3)) -> None:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buf, "JPEG", quality=90)
    path.write_bytes(buf.getvalue())


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    """Twelve 16-px JPEGs r00..r11."""
    d = tmp_path / "img"
    d.mkdir()
    rng = np.random.default_rng(0)
    for k in range(12):
        jpeg(rng, d / f"r{k:02d}.jpg")
    return d


def tag_frame() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    tags = [" ".join(rng.choice(TAGS, int(rng.integers(1, 4)), replace=False)) for _ in range(12)]
    tags[3] = "fox  cat "  # doubled and trailing separators are ignored
    return pd.DataFrame({"id": [f"r{k:02d}" for k in range(12)], "tags": tags,
                         "patient": [f"p{k // 2}" for k in range(12)]})


def build_cli(tmp_path: Path, frame: pd.DataFrame, images: Path, *extra: str, out: str = "out") -> int:
    frame.to_csv(tmp_path / "c.csv", index=False)
    return main(["build-records", "--csv", str(tmp_path / "c.csv"), "--images", str(images), "--out",
                 str(tmp_path / out), "--folds", "2", "--workers", "1", *extra])


# --------------------------------------------------------------------------- encoding


@settings(max_examples=40, deadline=None)
@given(ints=st.lists(st.integers(-2**63, 2**63 - 1), max_size=6),
       floats=st.lists(st.floats(width=32, allow_nan=False), max_size=6),
       blobs=st.lists(st.binary(max_size=20), max_size=4))
def test_list_entries_equal_tensorflows_serialisation(ints, floats, blobs) -> None:
    def tf_example(**features) -> bytes:
        return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()

    assert example_from_entries(int64_list_entry("k", ints)) == tf_example(
        k=tf.train.Feature(int64_list=tf.train.Int64List(value=ints)))
    assert example_from_entries(float_list_entry("k", floats)) == tf_example(
        k=tf.train.Feature(float_list=tf.train.FloatList(value=floats)))
    assert example_from_entries(bytes_list_entry("k", blobs)) == tf_example(
        k=tf.train.Feature(bytes_list=tf.train.BytesList(value=blobs)))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 9), data=st.data())
def test_multilabel_examples_parse_to_the_multi_hot_of_their_tags(n: int, data) -> None:
    rows = data.draw(st.lists(st.sets(st.integers(0, n - 1)), min_size=1, max_size=5))
    labels = [tuple(sorted(r)) for r in rows]
    enc = ExampleEncoder([f"i{k}" for k in range(len(rows))], ["g"] * len(rows), labels, [0] * len(rows), {}, {},
                         "multilabel")
    parse = make_parser({"task": "multilabel", "classes": [str(k) for k in range(n)]})
    for j, row in enumerate(rows):
        ex = parse(tf.constant(example_from_entries(enc.entries(j) + feature_entry("image", b"x"))))
        want = np.zeros(n, np.float32)
        want[list(row)] = 1
        assert ex["label"].dtype == tf.float32 and (ex["label"].numpy() == want).all()


@settings(max_examples=30, deadline=None)
@given(data=st.data(), n=st.integers(1, 4))
def test_regression_examples_parse_to_their_float32_targets(data, n: int) -> None:
    rows = data.draw(st.lists(st.tuples(*[st.floats(-1e6, 1e6, width=32)] * n), min_size=1, max_size=4))
    enc = ExampleEncoder(["a"] * len(rows), ["g"] * len(rows), rows, [1] * len(rows), {}, {}, "regression")
    parse = make_parser({"task": "regression", "targets": [f"t{k}" for k in range(n)], "classes": []})
    for j, row in enumerate(rows):
        ex = parse(tf.constant(example_from_entries(enc.entries(j) + feature_entry("image", b"x"))))
        assert ex["label"].numpy().tolist() == list(np.float32(row))


# --------------------------------------------------------------------------- builds


def test_tags_in_one_column_round_trip(tmp_path: Path, images: Path) -> None:
    frame = tag_frame()
    assert build_cli(tmp_path, frame, images, "--label-col", "tags", "--label-sep", " ",
                     "--group-col", "patient") == 0
    m = load_manifest(tmp_path / "out")
    assert m["task"] == "multilabel" and m["classes"] == TAGS and "targets" not in m
    assert m["features"]["label"] == "int64_list" and m["columns"]["label_sep"] == " "
    rows = read_all(tmp_path / "out")
    want = {r.id: {t for t in r.tags.split(" ") if t} for r in frame.itertuples()}
    assert {r["id"]: {TAGS[k] for k in np.flatnonzero(r["label"])} for r in rows} == want
    assert all(r["pixels"].shape == (16, 16, 3) for r in rows)
    folds = {}
    for r in rows:  # groups stay in one fold
        folds.setdefault(r["group"], set()).add(r["fold"])
    assert all(len(f) == 1 for f in folds.values()) and {r["fold"] for r in rows} == {0, 1}


def test_tags_of_a_test_split_take_the_train_classes(tmp_path: Path, images: Path, capsys) -> None:
    frame = tag_frame()
    assert build_cli(tmp_path, frame, images, "--label-col", "tags", "--label-sep", " ", out="train") == 0
    test = frame.assign(tags=["dog", "", *frame.tags[2:]])  # a test row without tags is kept
    args = ["--split", "test", "--classes-from", str(tmp_path / "train")]
    assert build_cli(tmp_path, test, images, *args) == 0  # the way tags are read comes from the train records
    rows = {r["id"]: r["label"] for r in read_all(tmp_path / "out")}
    assert rows["r00"].tolist() == [0, 1, 0, 0] and rows["r01"].tolist() == [0, 0, 0, 0]
    assert load_manifest(tmp_path / "out")["classes"] == TAGS
    bad = test.assign(tags=test.tags.where(test.index != 5, "dog zebra"))
    capsys.readouterr()
    assert build_cli(tmp_path, bad, images, *args, out="bad") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "c.csv line 7 (id 'r05')" in err[0] and "unknown class 'zebra'" in err[0]
    assert not (tmp_path / "bad").exists()


def test_zero_one_columns_round_trip(tmp_path: Path, images: Path) -> None:
    rng = np.random.default_rng(2)
    flags = rng.integers(0, 2, (12, 3))
    flags[4] = 0  # an image with no finding
    frame = pd.DataFrame({"id": [f"r{k:02d}" for k in range(12)], "rust": flags[:, 0], "healthy": flags[:, 1],
                          "scab": [f"{v}.0" for v in flags[:, 2]]})
    assert build_cli(tmp_path, frame, images, "--label-cols", "healthy,rust,scab") == 0
    m = load_manifest(tmp_path / "out")
    assert m["classes"] == ["healthy", "rust", "scab"] and m["columns"]["label_cols"] == m["classes"]
    got = {r["id"]: r["label"].tolist() for r in read_all(tmp_path / "out")}
    assert got == {f"r{k:02d}": [float(flags[k, 1]), float(flags[k, 0]), float(flags[k, 2])] for k in range(12)}
    assert got["r04"] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("cols", [["score"], ["v1", "v2", "v3"]])
def test_regression_targets_round_trip(tmp_path: Path, images: Path, cols: list[str]) -> None:
    rng = np.random.default_rng(3)
    values = np.round(rng.uniform(0, 100, (12, len(cols))), 3)
    frame = pd.DataFrame({"id": [f"r{k:02d}" for k in range(12)], **{c: values[:, i] for i, c in enumerate(cols)}})
    assert build_cli(tmp_path, frame, images, "--target-cols", ",".join(cols)) == 0
    m = load_manifest(tmp_path / "out")
    assert m["task"] == "regression" and m["targets"] == cols and m["classes"] == []
    assert "label" not in m["features"] and m["features"]["target"] == "float32_list"
    got = {r["id"]: r["label"].tolist() for r in read_all(tmp_path / "out")}
    assert got == {f"r{k:02d}": list(np.float32(values[k])) for k in range(12)}
    # a test split keeps known targets and stores NaN for missing ones
    test = frame.astype(str)
    test.loc[2, cols[0]] = ""
    assert build_cli(tmp_path, test, images, "--split", "test", "--classes-from", str(tmp_path / "out"),
                     out="test") == 0
    got = {r["id"]: r["label"] for r in read_all(tmp_path / "test")}
    assert math.isnan(got["r02"][0]) and got["r03"].tolist() == list(np.float32(values[3]))


def _channel_files(d: Path, ident: str, channels: list[str], arrays: list[np.ndarray]) -> None:
    for c, a in zip(channels, arrays):
        Image.fromarray(a).save(d / f"{ident}_{c}.png")


def test_channels_are_stored_losslessly_8_bit(tmp_path: Path) -> None:
    d = tmp_path / "img"
    d.mkdir()
    rng = np.random.default_rng(4)
    channels = ["red", "green", "blue", "yellow"]
    src = {}
    for k in range(6):
        arrays = [rng.integers(0, 256, (12, 20), dtype=np.uint8) for _ in channels]
        _channel_files(d, f"c{k}", channels, arrays)
        src[f"c{k}"] = np.stack(arrays, -1)
    frame = pd.DataFrame({"id": list(src), "label": [0, 1] * 3})
    assert build_cli(tmp_path, frame, d, "--channels", ",".join(channels)) == 0
    m = load_manifest(tmp_path / "out")
    assert m["image"]["channels"] == 4 and m["image"]["channel_names"] == channels
    assert m["image"]["format"] == "png" and m["image"]["bit_depth"] == 8 and m["features"]["image"] == "bytes_list"
    rows = read_all(tmp_path / "out")
    assert len(rows) == 6
    for r in rows:
        assert r["pixels"].dtype == np.uint8 and (r["pixels"] == src[r["id"]]).all()
    assert set(source_sizes(tmp_path / "out").itertuples(index=False, name=None)) == {(i, 12, 20) for i in src}


def test_channels_16_bit_resized_and_test_split_inherits_them(tmp_path: Path) -> None:
    d = tmp_path / "img"
    d.mkdir()
    rng = np.random.default_rng(5)
    for k in range(4):
        _channel_files(d, f"c{k}", ["dna", "actin"], [rng.integers(0, 65536, (24, 32), dtype=np.uint16),
                                                      rng.integers(0, 256, (24, 32), dtype=np.uint8)])
    frame = pd.DataFrame({"id": [f"c{k}" for k in range(4)], "label": [0, 1, 0, 1]})
    assert build_cli(tmp_path, frame, d, "--channels", "dna,actin", "--size", "8") == 0
    m = load_manifest(tmp_path / "out")
    assert m["image"]["bit_depth"] == 16 and m["image"]["size"] == [8, 8]
    rows = read_all(tmp_path / "out")
    assert all(r["pixels"].shape == (8, 8, 2) and r["pixels"].dtype == np.uint16 for r in rows)
    # the resize is the RGB path's: shorter side to 8, centre crop (a smooth image stays close)
    ramp = np.tile(np.linspace(0, 60000, 32).astype(np.uint16), (24, 1))
    _channel_files(d, "ramp", ["dna", "actin"], [ramp, (ramp // 257).astype(np.uint8)])
    test = pd.DataFrame({"id": ["ramp"]})
    assert build_cli(tmp_path, test, d, "--split", "test", "--classes-from", str(tmp_path / "out"), "--size", "8",
                     out="test") == 0
    (r,) = read_all(tmp_path / "test")
    # centre crop x in [4, 28), 3 source pixels per output pixel: output i samples the
    # linear ramp at source pixel 5 + 3i, where it is (5 + 3i) * 60000 / 31
    want = np.tile((5 + 3 * np.arange(8)) * 60000 / 31, (8, 1))
    assert np.abs(r["pixels"][..., 0].astype(float) - want).max() < 2
    assert np.abs(r["pixels"][..., 1].astype(float) - r["pixels"][..., 0]).max() < 600  # 8-bit scaled by 257


# --------------------------------------------------------------------------- bad input


def _remove(path: Path) -> None:
    os.remove(path)


def _resize(path: Path) -> None:
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(path)


BAD = {  # case: (options, column to break, row, new value or file action, words in the error)
    "empty tags": (["--label-col", "tags", "--label-sep", " "], "tags", 4, "", "empty tag string"),
    "label column not 0/1": (["--label-cols", "a,b"], "b", 6, "2", "must be 0 or 1"),
    "empty 0/1 cell": (["--label-cols", "a,b"], "a", 2, "", "must be 0 or 1, got a missing value"),
    "non-numeric target": (["--target-cols", "y"], "y", 3, "abc", "'abc' in column 'y' is not a finite number"),
    "missing target": (["--target-cols", "y"], "y", 8, "", "missing target in column 'y'"),
    "missing channel file": (["--channels", "red,green"], None, 5, lambda d: _remove(d / "r05_green.png"),
                             "no image named r05_green"),
    "channel sizes differ": (["--channels", "red,green"], None, 7, lambda d: _resize(d / "r07_red.png"),
                             "channel files differ in size"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_labels_targets_and_channels_fail_cleanly_or_are_skipped(case: str, tmp_path: Path, capsys) -> None:
    options, col, row, change, words = BAD[case]
    d = tmp_path / "img"
    d.mkdir()
    rng = np.random.default_rng(6)
    for k in range(12):
        _channel_files(d, f"r{k:02d}", ["red", "green"], [rng.integers(0, 256, (8, 8), dtype=np.uint8)] * 2)
        jpeg(rng, d / f"r{k:02d}.jpg", (8, 8, 3))
    frame = tag_frame().assign(a=[k % 2 for k in range(12)], b=[(k // 2) % 2 for k in range(12)],
                               y=[str(k * 1.5) for k in range(12)], label=[k % 2 for k in range(12)]).astype(str)
    if col is None:
        change(d)
    else:
        frame.loc[row, col] = change
    assert build_cli(tmp_path, frame, d, *options) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]  # besides the progress bar
    assert len(err) == 1 and err[0].startswith(f"tfkit: error: c.csv line {row + 2} (id 'r{row:02d}')"), err
    assert words in err[0], err
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["img", "c.csv"]
    assert build_cli(tmp_path, frame, d, *options, "--skip-bad") == 0
    m = load_manifest(tmp_path / "out")
    assert [s["id"] for s in m["skipped"]] == [f"r{row:02d}"] and m["n_examples"] == 11
    assert len(read_all(tmp_path / "out")) == 11


@pytest.mark.parametrize("options, words", [
    (dict(label_sep=" ", label_cols=["a", "b"]), "cannot be combined"),
    (dict(label_cols=["a"]), "at least two"),
    (dict(target_cols=["y", "y"]), "unique"),
    (dict(channels=["red", "red"]), "unique"),
    (dict(channels=["a/b"]), "part of a file name"),
    (dict(channels=["red"], path_col="path"), "cannot be combined with --path-col"),
    (dict(label_sep=""), "non-empty separator"),
])
def test_bad_options_are_refused_before_anything_is_read(tmp_path: Path, options: dict, words: str) -> None:
    (tmp_path / "c.csv").write_text("id,label\n")
    with pytest.raises(TfkitError, match=words):
        BuildSpec(csv=tmp_path / "c.csv", images=tmp_path, out=tmp_path / "out", **options)


def test_a_test_split_of_another_task_is_refused(tmp_path: Path, images: Path, digits_records: Path) -> None:
    tag_frame().to_csv(tmp_path / "c.csv", index=False)
    assert json.loads((digits_records / "manifest.json").read_text())["task"] == "multiclass"
    with pytest.raises(TfkitError, match="train records are single, this build is multilabel"):
        build_records(tmp_path / "c.csv", images, tmp_path / "out", split="test", label_col="tags", label_sep=" ",
                      classes_from=digits_records, progress=False)
    assert not (tmp_path / "out").exists()
