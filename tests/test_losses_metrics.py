"""tfkit.losses and tfkit.metrics against scikit-learn on random data."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm
from sklearn.utils.class_weight import compute_class_weight

from tfkit.config import TrainConfig
from tfkit.losses import class_weights, create_loss
from tfkit.metrics import QuadraticWeightedKappa, compute_metrics, keras_metrics, quadratic_weighted_kappa
from tfkit.utils import TfkitError

SETTINGS = settings(max_examples=30, deadline=None)


@st.composite
def multiclass_data(draw, min_classes=2, max_classes=6):
    c = draw(st.integers(min_classes, max_classes))
    n = draw(st.integers(c, 60))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(c), rng.integers(0, c, n - c)])  # every class present
    rng.shuffle(y)
    proba = rng.dirichlet(np.ones(c) * draw(st.sampled_from([0.3, 1.0, 5.0])), n)
    return y, proba, c


@SETTINGS
@given(multiclass_data(3))
# a true class given 7e-19 (below any fixed floor like 1e-15): clipped where sklearn clips
@example((np.array([0, 1, 2]), np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.5, 0.5, 7e-19]]), 3))
def test_multiclass_metrics_match_sklearn(data):
    y, p, c = data
    m = compute_metrics(y, p, "multiclass")
    pred = p.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p, labels=range(c)), rel=1e-7)
    assert m["qwk"] == pytest.approx(skm.cohen_kappa_score(y, pred, weights="quadratic", labels=range(c)), abs=1e-9)
    # one-hot labels give the same numbers
    assert compute_metrics(np.eye(c)[y], p, "multiclass") == pytest.approx(m)


@SETTINGS
@given(multiclass_data(2, 2), st.sampled_from(["vector", "column", "two"]))
def test_binary_metrics_match_sklearn(data, layout):
    y, p2, _ = data
    p1 = p2[:, 1]
    p = {"vector": p1, "column": p1[:, None], "two": p2}[layout]
    m = compute_metrics(y, p, "binary")
    pred = (p1 >= 0.5).astype(int)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p1))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p1), rel=1e-7)
    assert m["qwk"] == pytest.approx(skm.cohen_kappa_score(y, pred, weights="quadratic", labels=[0, 1]), abs=1e-9)


@SETTINGS
@given(st.integers(2, 5), st.integers(0, 2**31 - 1))
def test_multilabel_metrics_match_sklearn(c, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (40, c))
    y[0], y[1] = 1, 0  # each label has positives and negatives
    p = rng.random((40, c))
    m = compute_metrics(y, p, "multilabel")
    pred = (p >= 0.5).astype(int)
    assert m["accuracy"] == pytest.approx(np.mean(pred == y))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p, average="macro"))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert m["log_loss"] == pytest.approx(np.mean([skm.log_loss(y[:, k], p[:, k]) for k in range(c)]), rel=1e-7)


@SETTINGS
@given(st.integers(2, 7), st.integers(2, 80), st.integers(0, 2**31 - 1))
def test_qwk_matches_sklearn(k, n, seed):
    rng = np.random.default_rng(seed)
    t, p = rng.integers(0, k, n), rng.integers(0, k, n)
    assume(len(set(t)) > 1 or len(set(p)) > 1 or t[0] != p[0])  # sklearn: NaN when undefined
    ours = quadratic_weighted_kappa(t, p, k)
    assert ours == pytest.approx(skm.cohen_kappa_score(t, p, weights="quadratic", labels=range(k)), abs=1e-9)


def test_qwk_edge_cases():
    assert quadratic_weighted_kappa([2, 2, 2], [2, 2, 2]) == 1.0  # undefined: documented as 1
    assert quadratic_weighted_kappa([0, 1, 2, 3], [3, 2, 1, 0]) == pytest.approx(-1.0)
    with pytest.raises(TfkitError, match="3 labels but 2"):
        quadratic_weighted_kappa([0, 1, 2], [0, 1])


def test_regression_metrics():
    t = np.array([0, 1, 2, 3, 4, 2], float)
    p = np.array([0.2, 1.4, 2.6, 2.9, 5.5, 1.0])
    m = compute_metrics(t, p, "regression")
    assert m["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(t, p)))
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(t, p))
    rounded = np.clip(np.rint(p), 0, 4)
    assert m["qwk"] == pytest.approx(skm.cohen_kappa_score(t, rounded, weights="quadratic"))


def test_metric_names_filter_and_errors():
    y, p = np.array([0, 1, 2]), np.eye(3)
    assert list(compute_metrics(y, p, "multiclass", names=["qwk", "accuracy"])) == ["qwk", "accuracy"]
    with pytest.raises(TfkitError, match="unknown metric 'kappa'"):
        compute_metrics(y, p, "multiclass", names=["kappa"])
    with pytest.raises(TfkitError, match="3 labels but 2"):
        compute_metrics(y, p[:2], "multiclass")
    with pytest.raises(TfkitError, match="unknown metric"):
        keras_metrics(["kappa"], "multiclass", 3)


@pytest.mark.parametrize("seed", [0, 1])
def test_keras_metrics_agree_with_numpy_multiclass(seed):
    rng = np.random.default_rng(seed)
    c, n = 4, 300
    y = rng.integers(0, c, n)
    p = rng.dirichlet(np.ones(c), n) * 0.5 + np.eye(c)[y] * 0.5 * rng.random((n, 1))
    ref = compute_metrics(y, p, "multiclass")
    onehot = np.eye(c, dtype=np.float32)[y]
    metrics = keras_metrics(["accuracy", "auc", "f1", "log_loss", "qwk"], "multiclass", c)
    assert [m.name for m in metrics] == ["accuracy", "auc", "f1", "log_loss", "qwk"]
    half = n // 2
    for m in metrics:  # two batches: streaming must equal the whole
        m.update_state(onehot[:half], p[:half].astype(np.float32))
        m.update_state(onehot[half:], p[half:].astype(np.float32))
        got = float(m.result())
        tol = 2e-3 if m.name == "auc" else 1e-5  # HistogramAUC: 1,000 bins
        assert got == pytest.approx(ref[m.name], abs=tol), m.name


def test_keras_metrics_binary_and_regression():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 64)
    p = rng.random(64).astype(np.float32)
    ref = compute_metrics(y, p, "binary")
    for m in keras_metrics(["accuracy", "auc", "f1", "log_loss", "qwk"], "binary", 2):
        m.update_state(y[:, None].astype(np.float32), p[:, None])
        assert float(m.result()) == pytest.approx(ref[m.name], abs=2e-3 if m.name == "auc" else 1e-5), m.name
    t = rng.integers(0, 5, 50).astype(np.float32)
    pr = (t + rng.normal(0, 0.8, 50)).astype(np.float32)
    ref = compute_metrics(t, pr, "regression", num_classes=5)
    names = [m.name for m in keras_metrics(["accuracy", "rmse", "mae", "qwk"], "regression", 5)]
    assert names == ["rmse", "mae", "qwk"]  # accuracy does not apply
    for m in keras_metrics(["rmse", "mae", "qwk"], "regression", 5):
        m.update_state(t[:, None], pr[:, None])
        assert float(m.result()) == pytest.approx(ref[m.name], rel=1e-5), m.name


def test_qwk_metric_serialises_and_resets():
    m = QuadraticWeightedKappa(4)
    y = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 3]]
    m.update_state(y, y[::-1])
    first = float(m.result())
    again = keras.metrics.deserialize(keras.metrics.serialize(m))
    assert isinstance(again, QuadraticWeightedKappa) and again.num_classes == 4
    m.reset_state()
    m.update_state(y, y)
    assert float(m.result()) == 1.0 and first < 0.5


def test_qwk_metric_in_compiled_fit():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, activation="softmax")])
    model.compile("adam", "categorical_crossentropy", metrics=keras_metrics(["qwk"], "multiclass", 3), jit_compile=True)
    x = np.random.default_rng(0).random((32, 3)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[np.arange(32) % 3]
    hist = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    pred = model.predict(x, verbose=0).argmax(1)
    # the last epoch's qwk is computed on weights that changed during the epoch: check it is finite,
    # then evaluate() on fixed weights must equal the numpy metric.
    assert np.isfinite(hist.history["qwk"][0])
    res = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    assert res["qwk"] == pytest.approx(quadratic_weighted_kappa(np.arange(32) % 3, pred, 3), abs=1e-6)


# --------------------------------------------------------------------------- losses


def test_create_loss_per_task():
    c = TrainConfig(label_smoothing=0.1)
    assert isinstance(create_loss(c, "multiclass", 5), keras.losses.CategoricalCrossentropy)
    assert isinstance(create_loss(c, "binary", 2), keras.losses.BinaryCrossentropy)
    assert isinstance(create_loss(c, "multilabel", 4), keras.losses.BinaryCrossentropy)
    assert isinstance(create_loss(c, "regression", 1), keras.losses.MeanSquaredError)
    focal = TrainConfig(loss="focal", focal_gamma=1.5)
    assert isinstance(create_loss(focal, "multiclass", 5), keras.losses.CategoricalFocalCrossentropy)
    assert isinstance(create_loss(focal, "binary", 2), keras.losses.BinaryFocalCrossentropy)
    with pytest.raises(TfkitError, match="regression uses mse"):
        create_loss(focal, "regression", 1)
    with pytest.raises(TfkitError, match=r"mse is for regression, distribution\)"):
        create_loss(TrainConfig(loss="mse"), "multiclass", 3)
    with pytest.raises(TfkitError, match="unknown loss"):
        create_loss(TrainConfig(loss="hinge"), "multiclass", 3)


def test_label_smoothing_and_focal_values():
    y = np.eye(4, dtype=np.float32)[[0, 1, 3]]
    p = np.array([[0.7, 0.1, 0.1, 0.1], [0.2, 0.5, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]], np.float32)
    eps = 0.2
    smooth = y * (1 - eps) + eps / 4
    want = float(np.mean(-(smooth * np.log(p)).sum(1)))
    got = float(create_loss(TrainConfig(label_smoothing=eps), "multiclass", 4)(y, p))
    assert got == pytest.approx(want, rel=1e-5)
    # focal with gamma=0 is cross-entropy; gamma>0 down-weights the confident example most
    ce = float(create_loss(TrainConfig(), "multiclass", 4)(y, p))
    f0 = float(create_loss(TrainConfig(loss="focal", focal_gamma=0.0), "multiclass", 4)(y, p))
    assert f0 == pytest.approx(ce, rel=1e-5)
    f2 = create_loss(TrainConfig(loss="focal", focal_gamma=2.0), "multiclass", 4)
    per = [float(f2(y[i:i + 1], p[i:i + 1])) for i in range(3)]
    want_per = [-(1 - p[i, y[i].argmax()]) ** 2 * np.log(p[i, y[i].argmax()]) for i in range(3)]
    np.testing.assert_allclose(per, want_per, rtol=1e-5)


@SETTINGS
@given(st.integers(2, 6), st.integers(0, 2**31 - 1))
def test_class_weights_match_sklearn(c, seed):
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(c), rng.integers(0, c, 50) ** 1])
    w = class_weights(y, c)
    ref = compute_class_weight("balanced", classes=np.arange(c), y=y)
    np.testing.assert_allclose([w[k] for k in range(c)], ref)
    # balanced: each class contributes the same total weight
    totals = [w[k] * np.sum(y == k) for k in range(c)]
    np.testing.assert_allclose(totals, len(y) / c)


def test_class_weights_errors_and_absent_class():
    assert class_weights([0, 0, 1], 3)[2] == 0.0
    with pytest.raises(TfkitError, match="label 3 outside 0..2"):
        class_weights([0, 3], 3)
    with pytest.raises(TfkitError, match="no labels"):
        class_weights([], 3)
