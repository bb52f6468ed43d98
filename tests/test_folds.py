"""Tests of tfkit.folds: group isolation, class/size balance, determinism, CLI, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfkit.cli import main
from tfkit.folds import assign_folds, fold_table, folds_from_csv, format_fold_table
from tfkit.utils import TfkitError

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def grouped_frames(draw):
    """A frame with groups of 1..8 rows, 2..4 classes (labels may differ inside a group)."""
    n_groups = draw(st.integers(3, 60))
    sizes = draw(st.lists(st.integers(1, 8), min_size=n_groups, max_size=n_groups))
    n_classes = draw(st.integers(2, 4))
    labels = draw(st.lists(st.integers(0, n_classes - 1), min_size=sum(sizes), max_size=sum(sizes)))
    groups = np.repeat([f"g{i}" for i in range(n_groups)], sizes)
    n_folds = draw(st.integers(2, min(6, n_groups)))
    seed = draw(st.integers(0, 2**31 - 1))
    return pd.DataFrame({"label": labels, "group": groups}), n_folds, seed


@SETTINGS
@given(grouped_frames())
def test_groups_isolated_all_rows_assigned_folds_nonempty(case):
    df, k, seed = case
    folds = assign_folds(df, k, "label", group_col="group", seed=seed)
    assert folds.shape == (len(df),)
    assert folds.dtype.kind == "i"
    assert folds.min() >= 0 and folds.max() < k
    # every group in exactly one fold
    assert (pd.Series(folds).groupby(df["group"].to_numpy()).nunique() == 1).all()
    # every fold holds at least one group
    assert set(folds.tolist()) == set(range(k))


@SETTINGS
@given(grouped_frames())
def test_deterministic_for_a_seed(case):
    df, k, seed = case
    a = assign_folds(df, k, "label", group_col="group", seed=seed)
    b = assign_folds(df.copy(), k, "label", group_col="group", seed=seed)
    np.testing.assert_array_equal(a, b)


@SETTINGS
@given(
    counts=st.lists(st.integers(0, 40), min_size=2, max_size=5).filter(lambda c: sum(c) >= 6),
    k=st.integers(2, 6),
    seed=st.integers(0, 10_000),
    as_text=st.booleans(),
)
def test_ungrouped_class_counts_within_one_of_ideal(counts, k, seed, as_text):
    labels = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng(seed)
    rng.shuffle(labels)
    if as_text:
        labels = np.array([f"class_{c}" for c in labels])
    df = pd.DataFrame({"label": labels})
    if k > len(df):
        return
    folds = assign_folds(df, k, "label", seed=seed)
    table = fold_table(df, folds, "label")
    class_cols = [c for c in table.columns if c.startswith("n[")]
    for col, total in zip(class_cols, table[class_cols].sum()):
        assert (np.abs(table[col] - total / k) <= 1).all(), (col, table[col].tolist(), total / k)
        # in fact the optimum: every count is the floor or the ceiling of the ideal
        assert table[col].between(total // k, -(-total // k)).all(), (col, table[col].tolist())
    # images per fold differ by at most one
    assert table["images"].max() - table["images"].min() <= 1


def test_seeds_differ_and_group_sizes_spread():
    rng = np.random.default_rng(0)
    sizes = np.clip(np.round(rng.lognormal(2.0, 1.0, 300)), 1, 150).astype(int)
    groups = np.repeat(np.arange(300), sizes)
    df = pd.DataFrame({"group": groups, "label": (rng.random(len(groups)) < 0.1).astype(int)})
    a = assign_folds(df, 5, "label", group_col="group", seed=0)
    b = assign_folds(df, 5, "label", group_col="group", seed=1)
    assert (a != b).any()
    table = fold_table(df, a, "label", group_col="group")
    assert table["images"].max() - table["images"].min() <= 2
    assert table["groups"].max() - table["groups"].min() <= 2
    assert table["n[1]"].max() - table["n[1]"].min() <= 1
    # the largest groups are spread over folds, not stacked in one
    big = pd.Series(sizes).nlargest(5).index.to_numpy()
    big_folds = {int(a[groups == g][0]) for g in big}
    assert len(big_folds) >= 4


def test_at_least_as_balanced_as_sklearn_on_skewed_groups():
    from sklearn.model_selection import StratifiedGroupKFold

    rng = np.random.default_rng(3)
    n_groups = 400
    sizes = np.clip(np.round(rng.lognormal(2.1, 1.1, n_groups)), 1, 300).astype(int)
    rate = np.where(rng.random(n_groups) < 0.08, rng.uniform(0.05, 0.4, n_groups), 0.003)
    groups = np.repeat(np.arange(n_groups), sizes)
    df = pd.DataFrame({"group": groups, "label": (rng.random(len(groups)) < rate[groups]).astype(int)})
    ours = assign_folds(df, 5, "label", group_col="group", seed=0)
    theirs = np.empty(len(df), dtype=int)
    sgkf = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=0)
    for k, (_, val) in enumerate(sgkf.split(df, df["label"], df["group"])):
        theirs[val] = k

    def spreads(folds):
        t = fold_table(df, folds, "label", group_col="group")
        return np.ptp(t["pos_rate"]), np.ptp(t["images"])

    (our_rate, our_img), (sk_rate, sk_img) = spreads(ours), spreads(theirs)
    assert our_rate <= sk_rate and our_img <= sk_img


def test_numeric_target_is_binned():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"target": rng.normal(size=500)})
    folds = assign_folds(df, 5, "target", seed=0)
    table = fold_table(df, folds, "target")
    bins = [c for c in table.columns if c.startswith("n[")]
    assert len(bins) == 10  # quantile bins, not 500 classes
    assert (table[bins].max() - table[bins].min()).max() <= 1
    assert np.ptp(table["mean"]) < 0.1  # each fold covers the target's range alike
    # integer-coded labels with few values stay classes; n_bins=0 never bins
    ints = pd.DataFrame({"label": rng.integers(0, 80, 800)})
    assert len([c for c in fold_table(ints, assign_folds(ints, 4, "label"), "label").columns if c.startswith("n[")]) == 10
    unbinned = fold_table(ints, assign_folds(ints, 4, "label", n_bins=0), "label", n_bins=0)
    assert len([c for c in unbinned.columns if c.startswith("n[")]) == ints["label"].nunique()


def test_fold_table_and_format():
    df = pd.DataFrame({"label": ["a", "b", "c"] * 10, "group": np.arange(30) // 3})
    folds = assign_folds(df, 3, "label", group_col="group", seed=0)
    table = fold_table(df, folds, "label", group_col="group")
    assert list(table.columns[:5]) == ["images", "groups", "n[a]", "n[b]", "n[c]"]
    assert table["images"].sum() == 30 and table["groups"].sum() == 10
    assert "max_share_dev" in table.columns
    text = format_fold_table(table)
    assert "total" in text and "30" in text


def _write(tmp_path, rows: str):
    path = tmp_path / "train.csv"
    path.write_text(rows)
    return path


def test_cli_round_trip(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = 120
    df = pd.DataFrame({
        "image_name": [f"{i:04d}" for i in range(n)],
        "patient": [f"p{i // 3:03d}" for i in range(n)],
        "target": (rng.random(n) < 0.2).astype(int),
    })
    csv = tmp_path / "train.csv"
    df.to_csv(csv, index=False)
    out = tmp_path / "folds.csv"
    rc = main(["folds", "--csv", str(csv), "--id-col", "image_name", "--label-col", "target",
               "--group-col", "patient", "--folds", "4", "--seed", "7", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "pos_rate" in printed and "total" in printed
    got = pd.read_csv(out, dtype={"image_name": str})
    assert list(got.columns) == ["image_name", "fold"]
    assert got["image_name"].tolist() == df["image_name"].tolist()  # leading zeros kept, CSV order
    expected = assign_folds(df, 4, "target", group_col="patient", seed=7)
    np.testing.assert_array_equal(got["fold"].to_numpy(), expected)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # the API returns the frame it wrote
    again = folds_from_csv(csv, tmp_path / "f2.csv", "image_name", "target", "patient", 4, 7)
    pd.testing.assert_frame_equal(again.reset_index(drop=True), got, check_dtype=False)


@pytest.mark.parametrize(
    "rows, args, message",
    [
        ("id,label\n1,0\n2,1\n", ["--label-col", "target"], "no label column 'target'"),
        ("id,label\n1,0\n2,1\n", ["--group-col", "patient"], "no group column 'patient'"),
        ("image,label\n1,0\n2,1\n", [], "no id column 'id'"),
        ("id,label\n1,0\n2,1\n1,0\n", ["--folds", "2"], "line 4: duplicate id '1' (first at line 2)"),
        ("id,label\n1,0\n2,\n3,1\n", ["--folds", "2"], "line 3: label ('label') missing for id '2'"),
        ("id,label,g\n1,0,a\n2,1,\n", ["--folds", "2", "--group-col", "g"], "line 3: group ('g') missing"),
        ("id,label\n1,0\n2,1\n3,0\n", ["--folds", "1"], "--folds must be between 2 and the 3 rows"),
        ("id,label,g\n1,0,a\n2,1,a\n3,0,b\n", ["--folds", "3", "--group-col", "g"], "2 groups in 'g'"),
        ("id,label\n", [], "has no rows"),
        ("id,label\n1,0\n2,1\n", ["--bins", "-1", "--folds", "2"], "--bins must be 0"),
    ],
)
def test_bad_input_gives_one_line_error(tmp_path, capsys, rows, args, message):
    csv = _write(tmp_path, rows)
    out = tmp_path / "folds.csv"
    rc = main(["folds", "--csv", str(csv), "--out", str(out), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("tfkit: error:") and "\n" not in err
    assert message in err, err
    assert not out.exists()


def test_missing_csv_and_api_errors(tmp_path):
    with pytest.raises(TfkitError, match="not found"):
        folds_from_csv(tmp_path / "nope.csv", tmp_path / "f.csv")
    df = pd.DataFrame({"label": [0, 1, None]})
    with pytest.raises(TfkitError, match="label missing at row 2"):
        assign_folds(df, 2, "label")
    with pytest.raises(TfkitError, match="no label column"):
        assign_folds(df, 2, "target")
    with pytest.raises(TfkitError, match="more than the 2 rows"):
        assign_folds(pd.DataFrame({"label": [0, 1]}), 3, "label")
