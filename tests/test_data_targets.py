"""Multi-hot, numeric and distribution targets through tfkit.data and the
label-mixing augmentations: mixup and cutmix mix every kind of target by the
image's own weight; regression targets are never one-hot; a softmax over
multi-label records is refused."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from tfkit import data
from tfkit.augment import augment_batch
from tfkit.config import AugmentConfig
from tfkit.manifest import Manifest, resolve_task
from tfkit.utils import TfkitError

SETTINGS = settings(max_examples=15, deadline=None)


def _targets(kind, rng, b, k):
    if kind == "multilabel":
        return (rng.random((b, k)) < 0.4).astype(np.float32)
    if kind == "regression":
        return rng.normal(50, 20, (b, k)).astype(np.float32)
    return rng.dirichlet(np.ones(k), b).astype(np.float32)  # distribution


@SETTINGS
@given(st.sampled_from(["multilabel", "regression", "distribution"]), st.integers(2, 8), st.integers(1, 6),
       st.floats(0.0, 1.0), st.integers(0, 2**31 - 1))
def test_mixup_and_cutmix_mix_targets_by_the_image_weight(kind, b, k, mixup_share, seed):
    rng = np.random.default_rng(seed)
    y = _targets(kind, rng, b, k)
    levels = (np.arange(b) + 1) / (b + 1)  # a constant image per example: its mean tells its mix
    x = np.broadcast_to(levels[:, None, None, None], (b, 16, 16, 3)).astype(np.float32)
    cfg = AugmentConfig(mixup_p=mixup_share, cutmix_p=1.0 - mixup_share, mixup_alpha=0.4, cutmix_alpha=1.0)
    xo, yo = augment_batch(tf.constant(x), tf.constant(y), cfg, 16, [seed % 1000, 7])
    xo, yo = xo.numpy(), yo.numpy()
    assert yo.shape == y.shape  # never one-hot, never reshaped
    mean = xo.mean(axis=(1, 2, 3))
    # one partner shift for the batch: find it, and check each target moved by its image's weight
    fits = []
    for s in range(1, max(b, 2)):
        vp = np.roll(levels, s)
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(vp != levels, (mean - levels) / (vp - levels), 0.0)
        expected = (1 - w[:, None]) * y + w[:, None] * np.roll(y, s, axis=0)
        if np.all((w > -1e-5) & (w < 1 + 1e-5)) and np.allclose(yo, expected, rtol=1e-4, atol=1e-4 * (1 + np.abs(y).max())):
            fits.append(s)
    assert fits, "no partner shift explains both the pixels and the targets"
    if kind == "multilabel":
        assert np.all((yo >= 0) & (yo <= 1))
    if kind == "distribution":  # mixed as distributions: still distributions
        np.testing.assert_allclose(yo.sum(1), 1.0, rtol=1e-5)
        assert np.all(yo >= 0)
    if kind == "regression":
        lo = np.minimum(y, np.roll(y, fits[0], axis=0)) - 1e-3
        hi = np.maximum(y, np.roll(y, fits[0], axis=0)) + 1e-3
        assert np.all((yo >= lo) & (yo <= hi))


@SETTINGS
@given(st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_encode_targets_keeps_vectors(k, seed):
    rng = np.random.default_rng(seed)
    multi_hot = (rng.random(k) < 0.5).astype(np.float32)
    np.testing.assert_array_equal(data.encode_targets(tf.constant(multi_hot), "multilabel", k).numpy(), multi_hot)
    values = rng.normal(0, 100, k).astype(np.float32)
    np.testing.assert_array_equal(data.encode_targets(tf.constant(values), "regression", k).numpy(), values)
    votes = rng.integers(0, 9, k).astype(np.float32) + 1
    np.testing.assert_allclose(data.encode_targets(tf.constant(votes), "distribution", k).numpy(), votes / votes.sum(),
                               rtol=1e-6)
    # a class index of a regression-on-grades record stays a value, not one-hot
    assert data.encode_targets(tf.constant(3, tf.int64), "regression", 5).numpy().tolist() == [3.0]


def test_tasks_each_kind_of_records_can_feed():
    multi = {"task": "multilabel", "classes": ["cloudy", "haze", "road"]}
    reg = {"task": "regression", "classes": [], "targets": ["pawpularity"]}
    dist = {"task": "regression", "targets": [f"vote{i}" for i in range(1, 11)]}
    assert resolve_task(manifest=multi) == "multilabel"
    assert resolve_task(manifest=reg) == "regression"
    assert resolve_task("distribution", manifest=dist) == "distribution"
    for task in ("multiclass", "binary"):  # the classic mistake: a softmax over non-exclusive labels
        with pytest.raises(TfkitError, match="softmax over labels that are not exclusive"):
            resolve_task(task, manifest=multi)
    with pytest.raises(TfkitError, match="distribution needs regression records with one column per bin"):
        resolve_task("distribution", manifest=reg)
    with pytest.raises(TfkitError, match="does not fit regression records"):
        resolve_task("multiclass", manifest=reg)
    with pytest.raises(TfkitError, match="build the records with --label-sep or --label-cols"):
        resolve_task("multilabel", manifest={"task": "multiclass", "classes": ["a", "b", "c"]})
    rgby = Manifest.from_dict({"image": {"channels": 4, "channel_names": ["red", "green", "blue", "yellow"]}})
    assert rgby.n_channels == 4 and rgby.channel_names[-1] == "yellow"
    assert Manifest.from_dict({"image": {"channels": 3}}).n_channels == 3
