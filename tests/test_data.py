"""tfkit.data: static training shapes, eval order = read_index order, fold
selection without leakage, targets, metadata inputs, seeded determinism,
cache, class-balanced oversampling, non-local (tf.io.gfile) paths."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tfkit import augment, data, records
from tfkit.config import load_config
from tfkit.manifest import resolve_task
from tfkit.utils import TfkitError

BATCH = 16


def _cfg(*overrides: str):
    return load_config(None, ["data.image_size=32", f"data.batch_size={BATCH}", "augment.preset=digits", *overrides])


def _eval_arrays(rec, cfg, folds=None, mode="eval"):
    ds = data.build_dataset(rec, cfg, folds=folds, mode=mode, with_ids=True)
    xs, ys, ids = [], [], []
    for el in ds:
        if mode == "eval":
            x, y, i = el
            ys.append(y.numpy())
        else:
            x, i = el
        xs.append(x)
        ids += [s.decode() for s in i.numpy()]
    return xs, (np.concatenate(ys) if ys else None), ids


@pytest.fixture(scope="module")
def rec(digits_records):
    return str(digits_records)


@pytest.fixture(scope="module")
def manifest(rec):
    return records.load_manifest(rec)


@pytest.fixture(scope="module")
def index(rec, manifest):
    return data.read_index(rec, manifest=manifest)


@pytest.fixture(scope="module")
def meta_records(tmp_path_factory, digits_dir):
    """Imbalanced digits (60/30/10 of classes 0/1/2) with a numeric column with
    NaN (``age``) and a categorical one with blanks (``site``)."""
    from tfkit.records import build_records

    root = tmp_path_factory.mktemp("meta")
    train = pd.read_csv(digits_dir / "train.csv", dtype={"id": str})
    rng = np.random.default_rng(0)
    keep = pd.concat([train[train.label == 0].head(60), train[train.label == 1].head(30),
                      train[train.label == 2].head(10)])
    keep = keep.assign(
        age=np.where(rng.random(len(keep)) < 0.2, np.nan, rng.normal(50, 10, len(keep)).round(1)),
        site=rng.choice(["head", "torso", ""], len(keep)),
    )
    csv = root / "meta.csv"
    keep.to_csv(csv, index=False)
    out = root / "records"
    build_records(csv=csv, images=digits_dir / "images", out=out, meta_cols=["age", "site"], n_folds=3,
                  seed=0, size=32, workers=1, progress=False)
    return str(out), keep


# --------------------------------------------------------------------------- training stream


def test_train_batches_have_static_shapes_and_valid_values(rec, manifest):
    ds = data.build_dataset(rec, _cfg(), folds=[1, 2], mode="train")
    x_spec, y_spec = ds.element_spec
    n_cls = len(manifest["classes"])
    assert x_spec.shape.as_list() == [BATCH, 32, 32, 3] and x_spec.dtype == tf.float32
    assert y_spec.shape.as_list() == [BATCH, n_cls] and y_spec.dtype == tf.float32
    for x, y in ds.take(3):
        assert float(tf.reduce_min(x)) >= 0.0 and float(tf.reduce_max(x)) <= 1.0
        np.testing.assert_allclose(y.numpy().sum(axis=1), 1.0, atol=1e-5)  # mixed or not, a distribution


def test_train_stream_repeats_past_one_epoch(rec):
    steps = data.steps_per_epoch(rec, [0], BATCH)
    n = sum(1 for _ in data.build_dataset(rec, _cfg(), folds=[0], mode="train", augment=False).take(steps * 2 + 1))
    assert n == steps * 2 + 1
    one_epoch = data.build_dataset(rec, _cfg(), folds=[0], mode="train", repeat=False)
    assert sum(1 for _ in one_epoch) == steps


def test_steps_per_epoch_from_shard_names(rec, index):
    n = int((index.fold.isin([1, 3])).sum())
    assert data.steps_per_epoch(rec, [1, 3], BATCH) == n // BATCH
    with pytest.raises(TfkitError, match="fewer than one batch"):
        data.steps_per_epoch(rec, [0], 10**6)


def test_same_seed_same_train_stream_and_different_seed_differs(rec):
    def first(seed):
        ds = data.build_dataset(rec, _cfg(f"data.seed={seed}"), folds=[0, 1], mode="train", deterministic=True)
        return [(x.numpy(), y.numpy()) for x, y in ds.take(2)]

    a, b, c = first(7), first(7), first(8)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a[0][0], c[0][0])


def test_host_augmentation_changes_images_and_device_mode_only_resizes(rec):
    def first(*o, aug=True):
        ds = data.build_dataset(rec, _cfg(*o), folds=[0], mode="train", deterministic=True, augment=aug)
        return next(iter(ds))[0].numpy()

    plain = first(aug=False)
    assert not np.array_equal(first(), plain)  # digits preset: affine on 90% of images
    np.testing.assert_array_equal(first("data.augment_on=device"), plain)


def test_host_augmentation_is_augment_batch_seeded_by_data_seed_and_batch_index(rec):
    # The compiled (XLA) map must give what the reference augment_batch gives on the
    # same stored batch with seed (data.seed, batch index).
    cfg = _cfg("data.seed=5")
    plain = data.build_dataset(rec, cfg, folds=[0], mode="train", deterministic=True, augment=False)
    aug = data.build_dataset(rec, cfg, folds=[0], mode="train", deterministic=True)
    for i, ((xp, yp), (xa, ya)) in enumerate(zip(plain.take(2), aug.take(2))):
        stored = tf.cast(tf.round(xp * 255.0), tf.uint8)  # 32 px stored, 32 px out: resize is x/255
        ex, ey = augment.augment_batch(stored, yp, cfg.augment, 32, tf.constant([5, i], tf.int64))
        np.testing.assert_allclose(xa.numpy(), ex.numpy(), atol=1e-5)
        np.testing.assert_allclose(ya.numpy(), ey.numpy(), atol=1e-6)


def test_stream_does_not_depend_on_worker_count_and_autotune_is_off(rec, monkeypatch):
    def first():
        ds = data.build_dataset(rec, _cfg(), folds=[0, 1], mode="train", deterministic=True)
        assert ds.options().autotune.enabled is False  # no buffer growth, no iterator-destroy stall
        return [x.numpy() for x, _ in ds.take(2)]

    default = first()
    monkeypatch.setattr(data, "DECODE_CALLS", 1)
    monkeypatch.setattr(data, "BATCH_CALLS", 1)
    for a, b in zip(default, first()):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- eval / predict


def test_eval_order_equals_read_index_and_keeps_last_partial_batch(rec, manifest, index):
    xs, ys, ids = _eval_arrays(rec, _cfg())
    assert ids == index.id.tolist()
    assert len(ids) == records.count_from_names(data.select_files(rec)) == manifest["n_examples"]
    assert xs[-1].shape[0] == (len(ids) % BATCH or BATCH)  # partial batch kept, not dropped
    # targets: one-hot of the labels, aligned with the ids
    np.testing.assert_array_equal(ys.sum(axis=1), 1.0)
    np.testing.assert_array_equal(ys.argmax(axis=1), index.label.to_numpy())
    # predict yields the same images in the same order (eval is never augmented)
    xp, _, pids = _eval_arrays(rec, _cfg(), mode="predict")
    assert pids == ids
    np.testing.assert_array_equal(xp[0].numpy(), xs[0].numpy())


def test_eval_images_equal_resize_batch_of_the_stored_images(rec, manifest, index):
    ids = index.id.tolist()[:5]
    stored = data.load_examples(rec, ids, manifest=manifest)
    xs, _, _ = _eval_arrays(rec, _cfg("data.image_size=24"))
    expect = augment.resize_batch(tf.constant(stored["image"]), 24).numpy()
    np.testing.assert_allclose(xs[0].numpy()[:5], expect, atol=1e-6)
    assert xs[0].shape[1:] == (24, 24, 3)


def test_fold_filter_selects_exactly_those_folds(rec, index):
    sub = data.read_index(rec, folds=[0, 2])
    assert set(sub.fold) == {0, 2}
    assert set(sub.id) == set(index.id[index.fold.isin([0, 2])])
    other = set(data.read_index(rec, folds=[1]).id)
    assert not other & set(sub.id)  # no leakage between training and validation folds
    _, _, ids = _eval_arrays(rec, _cfg(), folds=[1])
    assert set(ids) == other and len(ids) == len(other)
    # the folds in the records agree with the manifest's shard list
    per_fold = {}
    for s in records.load_manifest(rec)["shards"]:
        per_fold[s["fold"]] = per_fold.get(s["fold"], 0) + s["count"]
    assert index.fold.value_counts().to_dict() == per_fold


def test_bad_arguments_are_one_line_errors(rec):
    with pytest.raises(TfkitError, match="out of range"):
        data.build_dataset(rec, _cfg(), folds=[99])
    with pytest.raises(TfkitError, match="mode"):
        data.build_dataset(rec, _cfg(), mode="validate")
    with pytest.raises(TfkitError, match="metadata"):
        data.build_dataset(rec, _cfg("data.metadata=[age]"))


def test_cache_gives_the_same_examples(rec):
    _, y0, ids0 = _eval_arrays(rec, _cfg(), folds=[0])
    _, y1, ids1 = _eval_arrays(rec, _cfg("data.cache=true"), folds=[0])
    assert ids0 == ids1
    np.testing.assert_array_equal(y0, y1)
    ds = data.build_dataset(rec, _cfg("data.cache=true"), folds=[0], mode="train", deterministic=True)
    steps = data.steps_per_epoch(rec, [0], BATCH)
    assert sum(1 for _ in ds.take(2 * steps)) == 2 * steps  # second epoch served from the cache


def test_non_local_paths_go_through_tf_io_gfile(rec, index):
    # ram:// is a TF filesystem that Python's open() cannot see: reading it proves
    # every access goes through tf.io.gfile, as gs:// needs.
    dst = "ram://tfkit_test_records"
    tf.io.gfile.makedirs(dst)
    for name in tf.io.gfile.listdir(rec):
        if not tf.io.gfile.isdir(os.path.join(rec, name)):
            tf.io.gfile.copy(os.path.join(rec, name), f"{dst}/{name}", overwrite=True)
    assert data.read_index(dst).id.tolist() == index.id.tolist()
    _, ys, ids = _eval_arrays(dst, _cfg(), folds=[0])
    assert ids == index.id[index.fold == 0].tolist()
    assert data.steps_per_epoch(dst, [0], BATCH) == data.steps_per_epoch(rec, [0], BATCH)


# --------------------------------------------------------------------------- targets, metadata, oversampling


def test_encode_targets_per_task():
    labels = tf.constant([0, 2, -1])
    np.testing.assert_array_equal(data.encode_targets(labels, "multiclass", 3).numpy(),
                                  [[1, 0, 0], [0, 0, 1], [0, 0, 0]])
    np.testing.assert_array_equal(data.encode_targets(tf.constant([1, 0]), "binary", 2).numpy(), [[1.0], [0.0]])
    assert resolve_task(manifest={"task": "binary", "classes": ["a", "b"]}) == "binary"
    with pytest.raises(TfkitError, match="2 classes"):
        resolve_task("binary", manifest={"classes": list("abc")})


def test_tasks_single_label_records_cannot_feed_are_refused():
    # Records store a class index: as a regression target it equals the value only for grades 0..K-1.
    assert resolve_task("regression", manifest={"classes": ["0", "1", "2", "3", "4"]}) == "regression"
    with pytest.raises(TfkitError, match="ordinal integer labels 0..K-1"):
        resolve_task("regression", manifest={"classes": ["1", "2", "3"]})
    with pytest.raises(TfkitError, match="ordinal integer labels 0..K-1"):
        resolve_task("regression", manifest={"classes": ["0", "10", "20"]})
    with pytest.raises(TfkitError, match="multilabel needs several labels per image"):
        resolve_task("multilabel", manifest={"classes": list("abc")})


def test_metadata_dict_input(meta_records):
    # The pipeline feeds raw metadata (numeric NaN when missing, categorical vocab index, -1 missing):
    # each fold model encodes it with its own training rows' statistics (tfkit.metadata).
    path, frame = meta_records
    man = records.load_manifest(path)
    cfg = _cfg("data.metadata=[age, site]")
    vocab = man["metadata"]["site"]["vocab"]
    dim = data.metadata_dim(man, ["age", "site"])
    assert dim == 2
    ds = data.build_dataset(path, cfg, mode="eval", with_ids=True)
    assert set(ds.element_spec[0]) == {"image", "meta"}
    metas, ids = [], []
    for x, _, i in ds:
        assert x["image"].shape[1:] == (32, 32, 3)
        metas.append(x["meta"].numpy())
        ids += [s.decode() for s in i.numpy()]
    meta = np.concatenate(metas)
    assert meta.shape == (len(frame), dim) and meta.dtype == np.float32
    rows = frame.set_index("id").loc[ids]
    np.testing.assert_allclose(meta[:, 0], rows.age.to_numpy(dtype=np.float64), atol=1e-4)  # NaN stays NaN
    assert np.isnan(meta[:, 0]).sum() == rows.age.isna().sum() > 0
    site = rows.site.fillna("").astype(str).to_numpy()
    expect = np.array([vocab.index(v) if v in vocab else -1 for v in site], dtype=np.float32)
    np.testing.assert_array_equal(meta[:, 1], expect)
    # the training stream carries the same dict
    x, y = next(iter(data.build_dataset(path, cfg, mode="train")))
    assert x["meta"].shape == (BATCH, dim) and x["image"].shape == (BATCH, 32, 32, 3)


def test_oversample_balances_classes(meta_records):
    path, frame = meta_records
    classes = records.load_manifest(path)["classes"]
    counts = frame.label.value_counts()
    assert counts.max() >= 5 * counts.min()  # the source really is imbalanced
    present = [classes.index(str(c)) for c in sorted(counts.index)]

    def shares(*o):
        ds = data.build_dataset(path, _cfg("augment.preset=none", *o), mode="train")
        ys = np.concatenate([y.numpy() for _, y in ds.take(40)])
        seen = np.bincount(ys.argmax(axis=1), minlength=len(classes))
        assert seen.sum() == seen[present].sum() == 40 * BATCH
        return seen[present] / seen.sum()

    balanced = shares("data.oversample=true")
    assert np.all(np.abs(balanced - 1 / 3) < 0.06), balanced  # 640 draws, ~uniform over the 3 classes
    natural = shares()
    assert natural[0] > 3 * natural[2], natural  # without oversampling the imbalance shows


def test_varying_stored_sizes_are_resized_per_example(tmp_path):
    from PIL import Image

    from tfkit.records import build_records

    rng = np.random.default_rng(1)
    (tmp_path / "img").mkdir()
    rows = []
    for k in range(12):
        h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / "img" / f"im{k:02d}.png")
        rows.append({"id": f"im{k:02d}", "label": "cat" if k % 2 else "dog"})
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    out = tmp_path / "rec"
    build_records(csv=tmp_path / "t.csv", images=tmp_path / "img", out=out, n_folds=2, seed=0, workers=1, progress=False)
    man = records.load_manifest(out)
    assert man["image"]["size"] is None  # sizes vary
    cfg = load_config(None, ["data.image_size=24", "data.batch_size=4", "augment.preset=photo"])
    x, y = next(iter(data.build_dataset(str(out), cfg, mode="train")))
    assert x.shape == (4, 24, 24, 3) and y.shape == (4, 1)  # binary task: [B, 1]
    xs, ys, ids = _eval_arrays(str(out), cfg)
    assert ids == data.read_index(str(out)).id.tolist() and sum(len(b) for b in xs) == 12
    sizes = data.read_index(str(out), extra=True)
    assert sizes.height.nunique() > 1  # the stored images really differ in size


def test_unlabelled_records_only_predict(tmp_path, digits_dir):
    from tfkit.records import build_records

    csv = tmp_path / "ids.csv"
    pd.read_csv(digits_dir / "test.csv", dtype={"id": str})[["id"]].head(20).to_csv(csv, index=False)
    out = tmp_path / "rec"
    build_records(csv=csv, images=digits_dir / "images", out=out, split="test", label_col=None, size=32,
                  workers=1, progress=False)
    cfg = _cfg()
    with pytest.raises(TfkitError, match="no labels"):
        data.build_dataset(str(out), cfg, mode="eval")
    xs, _, ids = _eval_arrays(str(out), cfg, mode="predict")
    assert ids == data.read_index(str(out)).id.tolist() and len(ids) == 20
    assert set(data.read_index(str(out)).label) == {-1}
