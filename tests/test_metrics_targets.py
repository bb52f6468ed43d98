"""Multi-label, regression and distribution metrics (tfkit.metrics_multilabel,
tfkit.metrics_regression, tfkit.thresholds) against scikit-learn and SciPy."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn import metrics as skm

from tfkit import metrics_multilabel as mlm
from tfkit import metrics_regression as mrm
from tfkit import thresholds as th
from tfkit.metrics import F_SCORES, compute_metrics, keras_metrics, quadratic_weighted_kappa
from tfkit.utils import TfkitError

SETTINGS = settings(max_examples=30, deadline=None)


@st.composite
def multilabel_data(draw, min_rows=6):
    c = draw(st.integers(2, 6))  # scikit-learn reads one column as binary, not multi-label
    n = draw(st.integers(min_rows, 50))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    y = (rng.random((n, c)) < draw(st.sampled_from([0.1, 0.4, 0.8]))).astype(np.int64)
    # coarse scores so ties are common (they are in real OOF of small models)
    p = np.round(rng.random((n, c)), draw(st.sampled_from([1, 2, 6])))
    return y, p


@SETTINGS
@given(multilabel_data(min_rows=1), st.sampled_from([0.5, 1.0, 2.0]), st.sampled_from(mlm.AVERAGES))
def test_fbeta_matches_sklearn(data, beta, average):
    y, p = data
    pred = mlm.binarise(p, 0.5)
    ref = skm.fbeta_score(y, pred, beta=beta, average=average, zero_division=0)
    assert mlm.fbeta(y, pred, beta, average) == pytest.approx(ref, abs=1e-12)


@SETTINGS
@given(multilabel_data())
def test_average_precision_and_column_auc_match_sklearn(data):
    y, p = data
    for k in range(y.shape[1]):
        ap = mlm.average_precision(y[:, k], p[:, k])
        if y[:, k].any():
            assert ap == pytest.approx(skm.average_precision_score(y[:, k], p[:, k]), abs=1e-12)
        else:
            assert np.isnan(ap)
    defined = [k for k in range(y.shape[1]) if 0 < y[:, k].sum() < len(y)]
    m = compute_metrics(y, p, "multilabel")
    if defined:
        ref_auc = np.mean([skm.roc_auc_score(y[:, k], p[:, k]) for k in defined])
        assert m["auc"] == pytest.approx(ref_auc, abs=1e-12)
    positives = [k for k in range(y.shape[1]) if y[:, k].any()]
    if positives:
        assert m["map"] == pytest.approx(np.mean([skm.average_precision_score(y[:, k], p[:, k]) for k in positives]))
    for name in F_SCORES:
        beta, _, avg = name[1:].partition("_")
        ref = skm.fbeta_score(y, (p >= 0.5).astype(int), beta=float(beta), average=avg or "macro", zero_division=0)
        assert m[name] == pytest.approx(ref, abs=1e-12), name


@SETTINGS
@given(multilabel_data(), st.sampled_from([1.0, 2.0]))
def test_best_threshold_is_the_exact_optimum(data, beta):
    y, p = data
    for k in range(y.shape[1]):
        t, f = mlm.best_threshold(y[:, k], p[:, k], beta)
        # brute force: every distinct score as a cut (and "nothing positive")
        cand = [skm.fbeta_score(y[:, k], (p[:, k] >= s).astype(int), beta=beta, zero_division=0)
                for s in np.unique(p[:, k])]
        best = max(cand + [0.0])
        assert f == pytest.approx(best, abs=1e-12)
        if y[:, k].any():
            got = skm.fbeta_score(y[:, k], (p[:, k] >= t).astype(int), beta=beta, zero_division=0)
            assert got == pytest.approx(best, abs=1e-12)
    tuned = mlm.best_thresholds(y, p, beta)
    at_half = mlm.fbeta(y, mlm.binarise(p, 0.5), beta, "macro")
    assert mlm.fbeta(y, mlm.binarise(p, tuned), beta, "macro") >= at_half - 1e-12


@SETTINGS
@given(multilabel_data(min_rows=9), st.integers(2, 4), st.integers(0, 1000))
def test_cross_fitted_thresholds_never_see_their_fold(data, n_folds, seed):
    y, p = data
    folds = np.random.default_rng(seed).permutation(np.arange(len(y)) % n_folds)
    per_row = th.cross_fit_thresholds(y, p, folds, beta=2.0)
    assert per_row.shape == y.shape
    for k in range(n_folds):
        rows = folds == k
        expected = mlm.best_thresholds(y[~rows], p[~rows], 2.0)
        np.testing.assert_array_equal(per_row[rows], np.broadcast_to(expected, (rows.sum(), y.shape[1])))
        # changing the fold's own labels leaves its thresholds unchanged
        flipped = y.copy()
        flipped[rows] = 1 - flipped[rows]
        np.testing.assert_array_equal(th.cross_fit_thresholds(flipped, p, folds, beta=2.0)[rows], per_row[rows])
    m = compute_metrics(y, p, "multilabel", thresholds={"f2": per_row})
    assert m["f2_tuned"] == pytest.approx(mlm.fbeta(y, (p >= per_row).astype(int), 2.0, "macro"))
    assert "f1_tuned" not in m


def test_cross_fit_needs_two_folds():
    with pytest.raises(TfkitError, match="at least 2 folds"):
        th.cross_fit_thresholds(np.ones((3, 1)), np.ones((3, 1)), [0, 0, 0])


@SETTINGS
@given(st.integers(2, 6), st.integers(10, 80), st.integers(0, 2**31 - 1), st.floats(0.1, 2.0))
def test_cut_points_beat_rounding(k, n, seed, noise):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    pred = y * rng.uniform(0.6, 1.1) + rng.normal(0, noise, n)  # biased, noisy regression output
    cuts = th.fit_cut_points(y, pred, k)
    assert cuts.shape == (k - 1,) and np.all(np.diff(cuts) > 0)
    tuned = quadratic_weighted_kappa(y, th.apply_cut_points(pred, cuts), k)
    rounded = quadratic_weighted_kappa(y, np.clip(np.rint(pred), 0, k - 1).astype(int), k)
    assert tuned >= rounded - 1e-12
    # a per-row copy of the cuts gives the same grades
    np.testing.assert_array_equal(th.apply_cut_points(pred, np.tile(cuts, (n, 1))), th.apply_cut_points(pred, cuts))
    m = compute_metrics(y, pred, "regression", num_classes=k, thresholds={"qwk": cuts})
    in_range = np.clip(np.rint(pred), y.min(), y.max()).astype(int)  # "qwk" clips to the grades seen
    assert m["qwk_tuned"] == pytest.approx(tuned)
    assert m["qwk"] == pytest.approx(quadratic_weighted_kappa(y, in_range, k))


@SETTINGS
@given(st.integers(3, 60), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_regression_metrics_match_sklearn_and_scipy(n, t, seed):
    rng = np.random.default_rng(seed)
    y = rng.normal(50, 20, (n, t))
    p = y + rng.normal(0, 10, (n, t))
    p[: n // 3] = np.round(p[: n // 3])  # some ties for the ranks
    m = compute_metrics(y if t > 1 else y[:, 0], p if t > 1 else p[:, 0], "regression")
    assert m["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, p)))
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, p))
    assert m["pearson"] == pytest.approx(np.mean([stats.pearsonr(y[:, j], p[:, j])[0] for j in range(t)]))
    assert m["spearman"] == pytest.approx(np.mean([stats.spearmanr(y[:, j], p[:, j])[0] for j in range(t)]))
    assert "qwk" not in m  # not ordinal grades


def test_correlation_of_a_constant_is_nan_and_bad_targets_named():
    assert np.isnan(mrm.pearson([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]))
    with pytest.raises(TfkitError, match="target row 1 is not a finite number"):
        mrm.rmse([1.0, np.nan], [1.0, 2.0])
    with pytest.raises(TfkitError, match="row 0 sums to 0"):
        mrm.emd([[0, 0]], [[0.5, 0.5]])
    with pytest.raises(TfkitError, match="row 1, column 0 holds 2"):
        mlm.as_multi_hot([[1, 0], [2, 0]])


@SETTINGS
@given(st.integers(1, 20), st.integers(2, 10), st.integers(0, 2**31 - 1))
def test_distribution_metrics(n, k, seed):
    rng = np.random.default_rng(seed)
    votes = rng.integers(0, 30, (n, k))
    votes[:, 0] += 1
    p = rng.dirichlet(np.ones(k), n)
    m = compute_metrics(votes, p, "distribution")
    d = votes / votes.sum(1, keepdims=True)
    ref = [stats.wasserstein_distance(np.arange(k), np.arange(k), d[i], p[i]) / k for i in range(n)]
    assert mrm.emd(votes, p, r=1) == pytest.approx(np.mean(ref), abs=1e-9)
    assert compute_metrics(votes, d, "distribution")["emd"] == pytest.approx(0.0, abs=1e-12)
    ts, ps = d @ np.arange(k), p @ np.arange(k)
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((ts - ps) ** 2)))
    # the numpy EMD is the loss, averaged
    import keras

    from tfkit.losses import EarthMoverDistance

    assert m["emd"] == pytest.approx(float(EarthMoverDistance()(d.astype(np.float32), p.astype(np.float32))), rel=1e-4)
    assert keras is not None


def test_keras_target_metrics_agree_with_numpy():
    rng = np.random.default_rng(3)
    y = (rng.random((200, 5)) < 0.3).astype(np.float32)
    p = np.clip(y * 0.5 + rng.random((200, 5)) * 0.6, 0, 1).astype(np.float32)
    ref = compute_metrics(y, p, "multilabel")
    got = keras_metrics(["f1_micro", "f2", "f2_micro", "map", "f1_samples", "f2_tuned"], "multilabel", 5)
    assert [m.name for m in got] == ["f1_micro", "f2", "f2_micro", "map"]  # the last two are numpy only
    for m in got:
        m.update_state(y[:100], p[:100])
        m.update_state(y[100:], p[100:])
        assert float(m.result()) == pytest.approx(ref[m.name], abs=2e-3 if m.name == "map" else 1e-5), m.name
    t = rng.normal(0, 1, (90, 1)).astype(np.float32)
    pr = (t + rng.normal(0, 0.7, (90, 1))).astype(np.float32)
    (pearson,) = keras_metrics(["pearson", "spearman"], "regression", 1)
    for i in range(0, 90, 32):  # streaming over uneven batches is exact
        pearson.update_state(t[i:i + 32], pr[i:i + 32])
    assert float(pearson.result()) == pytest.approx(stats.pearsonr(t[:, 0], pr[:, 0])[0], abs=1e-4)
    h = rng.integers(0, 9, (40, 6)).astype(np.float32) + np.eye(6, dtype=np.float32)[np.arange(40) % 6]
    q = rng.dirichlet(np.ones(6), 40).astype(np.float32)
    (emd,) = keras_metrics(["emd"], "distribution", 6)
    emd.update_state(h / h.sum(1, keepdims=True), q)
    assert float(emd.result()) == pytest.approx(compute_metrics(h, q, "distribution")["emd"], rel=1e-4)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 60), columns=st.integers(1, 4))
def test_streaming_map_is_sklearn_average_precision_when_scores_are_the_bins(seed, n, columns):
    # Scores at bin centres: the histogram loses nothing, so the streamed mAP (fed in two batches)
    # is exactly the mean of sklearn's average precision over the columns that hold a positive.
    from tfkit.metrics import HistogramAP

    rng = np.random.default_rng(seed)
    y = (rng.random((n, columns)) < 0.4).astype(np.float32)
    p = ((rng.integers(0, 20, (n, columns)) * 50 + 25) / 1000).astype(np.float32)
    m = HistogramAP(columns)
    m.update_state(y[: n // 2], p[: n // 2])
    m.update_state(y[n // 2:], p[n // 2:])
    positives = [k for k in range(columns) if y[:, k].any()]
    if not positives:
        assert np.isnan(float(m.result()))
        return
    want = np.mean([skm.average_precision_score(y[:, k], p[:, k]) for k in positives])
    assert float(m.result()) == pytest.approx(want, abs=1e-5)
    assert float(m.result()) == pytest.approx(compute_metrics(y, p, "multilabel")["map"], abs=1e-5)
