"""Cross-run ensembles: weight fitting against brute force, greedy selection, the nested
(honest) CV, refusal of runs on other folds, outputs that recompute, atomic writes, and one
end-to-end blend of two really trained tiny runs (one with an ArcFace head) through the CLI."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import TINY_RUN
from tfkit.cli import main
from tfkit.ensemble import (
    apply_blend,
    ensemble,
    fit_weights,
    greedy_weights,
    nested_blend,
    project_simplex,
    rank_blend,
)
from tfkit.metrics import compute_metrics
from tfkit.run import recompute_cv_frame
from tfkit.utils import TfkitError, read_json

CLASSES = ["a", "b", "c"]


def _oof(n: int = 90, quality: float = 2.0, seed: int = 0, n_folds: int = 3, labels_seed: int = 1) -> pd.DataFrame:
    """Synthetic OOF predictions: softmax(quality * onehot(label) + noise)."""
    rng = np.random.default_rng(labels_seed)
    labels = rng.integers(0, len(CLASSES), n)
    folds = np.arange(n) % n_folds
    z = quality * np.eye(len(CLASSES))[labels] + np.random.default_rng(seed).normal(size=(n, len(CLASSES)))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    frame = pd.DataFrame({"id": [f"img{i:03d}" for i in range(n)], "fold": folds, "label": labels})
    for j, c in enumerate(CLASSES):
        frame[f"p_{c}"] = p[:, j]
    return frame


@pytest.fixture()
def three_runs(tmp_path, fake_run):
    return [fake_run(tmp_path / f"r{q}", _oof(quality=q, seed=s), CLASSES)
            for q, s in ((2.5, 0), (1.5, 1), (0.5, 2))]


def _log_loss(values: np.ndarray, labels: np.ndarray, w: np.ndarray) -> float:
    p = np.tensordot(w, values, axes=1)[np.arange(labels.size), labels]
    return float(-np.mean(np.log(np.maximum(p, 1e-15))))


# --------------------------------------------------------------------------- the optimisers


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=1, max_size=8))
def test_simplex_projection_is_the_nearest_simplex_point(v):
    v = np.asarray(v)
    w = project_simplex(v)
    assert w.min() >= 0 and abs(w.sum() - 1) < 1e-9
    np.testing.assert_allclose(project_simplex(w), w, atol=1e-12)  # idempotent
    rng = np.random.default_rng(0)
    others = rng.dirichlet(np.ones(v.size), 200)
    assert np.linalg.norm(w - v) <= np.linalg.norm(others - v, axis=1).min() + 1e-9


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 10_000))
def test_fitted_weights_beat_every_point_of_a_fine_grid(seed):
    rng = np.random.default_rng(seed)
    n, m = 60, 3
    labels = rng.integers(0, 3, n)
    values = rng.dirichlet(np.ones(3), (m, n))
    w = fit_weights(values, labels, "multiclass")
    assert w.min() >= 0 and abs(w.sum() - 1) < 1e-9
    grid = [np.array([a, b, 1 - a - b]) for a in np.linspace(0, 1, 26) for b in np.linspace(0, 1, 26) if a + b <= 1 + 1e-12]
    best = min(_log_loss(values, labels, np.maximum(g, 0)) for g in grid)
    assert _log_loss(values, labels, w) <= best + 1e-9


def test_fitted_weights_regression_match_least_squares_on_the_simplex():
    rng = np.random.default_rng(3)
    y = rng.normal(size=200)
    good, noisy = y + rng.normal(0, 0.3, 200), y + rng.normal(0, 0.6, 200)
    values = np.stack([good, noisy])[:, :, None]
    w = fit_weights(values, y, "regression")
    # independent errors: the MSE-optimal mix is inverse-variance-like, strictly inside
    grid = np.linspace(0, 1, 2001)
    mse = [np.mean((g * good + (1 - g) * noisy - y) ** 2) for g in grid]
    assert abs(w[0] - grid[int(np.argmin(mse))]) < 2e-3 and 0.5 < w[0] < 1


def test_greedy_selection_finds_the_complementary_mix():
    # three binary runs, each confidently wrong on a different third: only a mix is right everywhere
    n = 90
    labels = np.arange(n) % 2
    values = []
    for r in range(3):
        p1 = np.where(labels == 1, 0.8, 0.2)
        bad = (np.arange(n) // 30) == r
        p1 = np.where(bad, 1 - p1, p1)
        values.append(np.stack([1 - p1, p1], 1))
    values = np.stack(values)
    single = [compute_metrics(labels, v, "binary", names=["accuracy"])["accuracy"] for v in values]
    w = greedy_weights(values, labels, "binary", "accuracy", steps=10)
    acc = compute_metrics(labels, apply_blend(values, w), "binary", names=["accuracy"])["accuracy"]
    assert max(single) == pytest.approx(2 / 3) and acc == 1.0
    assert (w > 0).sum() >= 3 and abs(w.sum() - 1) < 1e-12
    np.testing.assert_allclose(w * round(1 / w.min()), np.round(w * round(1 / w.min())))  # counts / total


def test_greedy_picks_a_perfect_run_alone():
    labels = np.arange(40) % 3
    perfect = np.eye(3)[labels] * 0.9 + 0.1 / 3
    noise = np.random.default_rng(0).dirichlet(np.ones(3), (2, 40))
    w = greedy_weights(np.concatenate([noise, perfect[None]]), labels, "multiclass", "log_loss")
    assert w.tolist() == [0.0, 0.0, 1.0]


def test_rank_blend_keeps_a_runs_auc_and_is_a_mean_of_ranks():
    oof = _oof()
    v = oof[[f"p_{c}" for c in CLASSES]].to_numpy()
    labels = oof["label"].to_numpy()
    r = rank_blend(np.stack([v, v]))
    auc = compute_metrics(labels, v, "multiclass", names=["auc"])["auc"]
    assert compute_metrics(labels, r, "multiclass", names=["auc"])["auc"] == pytest.approx(auc)
    expected = (pd.DataFrame(v).rank(pct=True).to_numpy() + pd.DataFrame(v ** 2).rank(pct=True).to_numpy()) / 2
    np.testing.assert_allclose(rank_blend(np.stack([v, v ** 2])), expected)


def test_nested_blend_fits_each_fold_on_the_other_folds_only():
    oofs = [_oof(quality=q, seed=s) for q, s in ((2.0, 0), (1.0, 1), (0.3, 2))]
    values = np.stack([o[[f"p_{c}" for c in CLASSES]].to_numpy() for o in oofs])
    labels, folds = oofs[0]["label"].to_numpy(), oofs[0]["fold"].to_numpy()
    blended, per_fold = nested_blend("weights", values, labels, folds, "multiclass", "accuracy")
    for k in range(3):
        held = folds == k
        w = fit_weights(values[:, ~held], labels[~held], "multiclass")
        np.testing.assert_allclose(per_fold[k], w)
        np.testing.assert_allclose(blended[held], apply_blend(values[:, held], w))
        # changing the held-out fold's own labels cannot change its weights
        flipped = labels.copy()
        flipped[held] = (flipped[held] + 1) % 3
        np.testing.assert_allclose(nested_blend("weights", values, flipped, folds, "multiclass", "accuracy")[1][k], w)
    mean, _ = nested_blend("mean", values, labels, folds, "multiclass", "accuracy")
    np.testing.assert_allclose(mean, values.mean(0))


def test_nested_cv_is_not_optimistic_on_pure_noise(tmp_path, fake_run):
    # ten runs of noise: fitted weights look better in-sample than they are
    runs = [fake_run(tmp_path / f"n{s}", _oof(quality=0.0, seed=s, n=90), CLASSES) for s in range(6)]
    cv = ensemble(runs, tmp_path / "out", method="weights", metric="log_loss", steps=5)["cv"]
    assert cv["in_sample"]["log_loss"] < cv["metrics"]["log_loss"]
    assert cv["methods"]["weights"]["in_sample"] < cv["methods"]["weights"]["nested"]


# --------------------------------------------------------------------------- ensemble()


def test_outputs_recompute_and_keep_the_oof_layout(three_runs, tmp_path):
    out = tmp_path / "blend"
    result = ensemble(three_runs, out, method="greedy")
    assert sorted(p.name for p in out.iterdir()) == ["correlation.png", "cv.json", "manifest.json", "oof.csv",
                                                     "weights.json"]
    oof = pd.read_csv(out / "oof.csv", dtype={"id": str})
    run_oof = pd.read_csv(three_runs[0] / "oof.csv", dtype={"id": str})
    assert list(oof.columns) == list(run_oof.columns)
    assert oof[["id", "fold", "label"]].equals(run_oof[["id", "fold", "label"]])
    cv = read_json(out / "cv.json")
    again = recompute_cv_frame(oof, CLASSES, "multiclass", names=list(cv["metrics"]))
    assert again["metrics"] == pytest.approx(cv["metrics"])
    assert all(again["folds"][k] == pytest.approx(cv["folds"][k]) for k in ("0", "1", "2"))
    assert cv["method"] == "greedy" and set(cv["methods"]) == {"mean", "rank", "weights", "greedy"}
    w = read_json(out / "weights.json")
    oofs = [pd.read_csv(r / "oof.csv", dtype={"id": str}) for r in three_runs]
    values = np.stack([o[[f"p_{c}" for c in CLASSES]].to_numpy() for o in oofs])
    expected = greedy_weights(values, oofs[0]["label"].to_numpy(), "multiclass", "accuracy")
    assert [r["weight"] for r in w["runs"]] == pytest.approx(expected.tolist())
    assert [r["weight"] for r in result["weights"]["runs"]] == pytest.approx(expected.tolist())
    assert sum(r["weight"] for r in w["runs"]) == pytest.approx(1.0) and set(w["nested"]) == {"0", "1", "2"}
    assert (out / "correlation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_blend_beats_its_runs_on_complementary_noise(tmp_path, fake_run):
    runs = [fake_run(tmp_path / f"s{s}", _oof(quality=1.0, seed=s, n=300), CLASSES) for s in range(4)]
    cv = ensemble(runs, tmp_path / "out", method="weights", metric="log_loss")["cv"]
    singles = [r["log_loss"] for r in cv["runs"].values()]
    assert cv["metrics"]["log_loss"] < min(singles)


def test_submissions_are_aligned_by_id_and_blended_with_the_final_weights(three_runs, tmp_path):
    subs = []
    for i, run in enumerate(three_runs):
        rng = np.random.default_rng(i)
        frame = pd.DataFrame({"id": [f"t{j}" for j in range(7)]})
        for c in CLASSES:
            frame[c] = rng.random(7)
        frame = frame.sample(frac=1.0, random_state=i)  # another row order per file
        frame.to_csv(tmp_path / f"sub{i}.csv", index=False)
        subs.append(frame.set_index("id"))
    result = ensemble(three_runs, tmp_path / "out", method="weights", subs=[tmp_path / f"sub{i}.csv" for i in range(3)])
    got = pd.read_csv(tmp_path / "out" / "submission.csv", dtype={"id": str}).set_index("id")
    w = [r["weight"] for r in result["weights"]["runs"]]
    expected = sum(wi * s.loc[got.index, CLASSES].to_numpy() for wi, s in zip(w, subs))
    np.testing.assert_allclose(got[CLASSES].to_numpy(), expected)
    assert list(got.index) == list(subs[0].index)  # the first submission's order


def _cli_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tfkit: error:")
    return err[0]


def test_runs_on_other_folds_are_refused_by_name(tmp_path, fake_run, capsys):
    a = fake_run(tmp_path / "a", _oof(), CLASSES)
    shifted = _oof(seed=1)
    shifted.loc[5, "fold"] = (shifted.loc[5, "fold"] + 1) % 3
    b = fake_run(tmp_path / "b", shifted, CLASSES, folds_setup={"seed": 7})
    err = _cli_error(["ensemble", "--runs", str(a), str(b), "--out", str(tmp_path / "o")], capsys)
    assert "different folds" in err and "'img005'" in err and "leak" in err and "'seed': 7" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("change,words", [
    (lambda f: f.drop(index=[3]), "different images"),
    (lambda f: f.assign(label=np.where(f.index == 2, (f["label"] + 1) % 3, f["label"])), "different labels"),
])
def test_runs_on_other_records_are_refused(tmp_path, fake_run, capsys, change, words):
    a = fake_run(tmp_path / "a", _oof(), CLASSES)
    b = fake_run(tmp_path / "b", change(_oof(seed=1)).reset_index(drop=True), CLASSES)
    assert words in _cli_error(["ensemble", "--runs", str(a), str(b), "--out", str(tmp_path / "o")], capsys)
    assert not (tmp_path / "o").exists()


def test_other_classes_and_bad_submissions_are_refused(three_runs, tmp_path, fake_run, capsys):
    other = fake_run(tmp_path / "x", _oof().rename(columns={"p_c": "p_d"}), ["a", "b", "d"])
    assert "classes" in _cli_error(["ensemble", "--runs", str(three_runs[0]), str(other), "--out", str(tmp_path / "o")], capsys)
    pd.DataFrame({"id": ["t1", "t2"], "a": [0.1, 0.2], "b": [0.3, 0.3], "c": [0.6, 0.5]}).to_csv(tmp_path / "s1.csv", index=False)
    pd.DataFrame({"id": ["t1", "t3"], "a": [0.1, 0.2], "b": [0.3, 0.3], "c": [0.6, 0.5]}).to_csv(tmp_path / "s2.csv", index=False)
    pd.DataFrame({"id": ["t1", "t2"], "label": ["a", "c"]}).to_csv(tmp_path / "s3.csv", index=False)
    base = ["ensemble", "--runs", *map(str, three_runs), "--out", str(tmp_path / "o"), "--subs"]
    assert "one submission per run" in _cli_error([*base, str(tmp_path / "s1.csv")], capsys)
    assert "different ids" in _cli_error([*base, str(tmp_path / "s1.csv"), str(tmp_path / "s2.csv"), str(tmp_path / "s1.csv")], capsys)
    assert "not numeric" in _cli_error([*base, str(tmp_path / "s1.csv"), str(tmp_path / "s1.csv"), str(tmp_path / "s3.csv")], capsys)
    assert "at least two runs" in _cli_error(["ensemble", "--runs", str(three_runs[0]), "--out", str(tmp_path / "o")], capsys)
    assert not (tmp_path / "o").exists()


def test_nothing_is_half_written_when_a_late_step_fails(three_runs, tmp_path, monkeypatch):
    import tfkit.ensemble as ens

    out = tmp_path / "o"
    ensemble(three_runs, out, method="mean")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ens, "plot_correlation", boom)
    with pytest.raises(RuntimeError):
        ensemble(three_runs, out, method="weights", overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old output is untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(TfkitError, match="not empty"):
        ensemble(three_runs, out)


# --------------------------------------------------------------------------- two real runs


@pytest.fixture(scope="module")
def two_trained_runs(tiny_run, small_records, tmp_path_factory):
    """Two tiny runs on the same records: a dense head (conftest's tiny_run) and an ArcFace head (other width)."""
    from tfkit.config import load_config
    from tfkit.train import train

    root = tmp_path_factory.mktemp("trained")
    train(load_config(None, [*TINY_RUN, "model.width=8", "model.head=arcface", "model.arcface_scale=16"]),
          small_records, root / "arcface")
    return tiny_run, root / "arcface"


def test_end_to_end_blend_of_trained_runs_with_predicted_test_records(two_trained_runs, small_records, tmp_path, capsys):
    dense, arc = two_trained_runs
    out = tmp_path / "blend"
    assert main(["ensemble", "--runs", str(dense), str(arc), "--out", str(out), "--method", "weights",
                 "--test-records", str(small_records), "--tta", "2"]) == 0
    printed = capsys.readouterr().out
    assert "nested CV" in printed and "in-sample" in printed
    sub = pd.read_csv(out / "submission.csv", dtype={"id": str})
    assert len(sub) == 60 and list(sub.columns) == ["id", *read_json(dense / "manifest.json")["classes"]]
    np.testing.assert_allclose(sub.iloc[:, 1:].sum(1), 1.0, atol=1e-5)
    oof = pd.read_csv(out / "oof.csv", dtype={"id": str})
    cv = read_json(out / "cv.json")
    classes = [str(c) for c in read_json(out / "manifest.json")["classes"]]
    assert recompute_cv_frame(oof, classes, "multiclass", names=list(cv["metrics"]))["metrics"] == pytest.approx(cv["metrics"])


def test_blend_log_floor_is_the_metrics_floor():
    # tfkit.ensemble keeps its own copy (importing tfkit.metrics would import Keras before the CLI
    # picks a backend): the weights it fits must optimise the log loss tfkit.metrics reports.
    from tfkit import ensemble, metrics

    assert ensemble._TINY == metrics.PROBA_EPS
