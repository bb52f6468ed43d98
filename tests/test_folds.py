"""Tests of tfkit.folds and its solver tfkit.stratify: group isolation, class/size balance,
multi-label and regression targets, determinism, the sparse scale path, CLI, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfkit import stratify
from tfkit.cli import main
from tfkit.folds import (
    LabelLists,
    as_label_lists,
    assign_folds,
    fold_label_counts,
    fold_table,
    folds_from_csv,
    format_fold_table,
    multilabel_folds,
    regression_folds,
)
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
        ("id,label\n1,a b\n2, \n3,b\n", ["--folds", "2", "--label-sep", " "], "line 3: no tags in 'label'"),
        ("id,a,b\n1,0,1\n2,1,2\n3,1,0\n", ["--folds", "2", "--label-cols", "a,b"], "line 3: 'b' must be 0 or 1, got 2"),
        ("id,a,b\n1,0,1\n2,1,0\n", ["--folds", "2", "--label-cols", "a,c"], "no label column 'c'"),
        ("id,y\n1,0.5\n2,x\n3,2\n", ["--folds", "2", "--target-cols", "y"], "line 3: target 'y' is not a number ('x')"),
        ("id,y\n1,0.5\n2,\n3,2\n", ["--folds", "2", "--target-cols", "y"], "line 3: label ('y') missing for id '2'"),
        ("id,y\n1,0.5\n2,1\n3,2\n", ["--folds", "2", "--target-cols", "y", "--bins", "0"], "--bins must be at least 1"),
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


def test_cli_multilabel_and_regression_round_trips(tmp_path, capsys):
    rng = np.random.default_rng(1)
    n = 90
    tags = np.array(["clear", "haze", "road", "water"])
    df = pd.DataFrame({
        "id": [f"im{i:03d}" for i in range(n)],
        "patient": [f"p{i // 3}" for i in range(n)],
        "tags": [" ".join(tags[rng.random(4) < 0.4]) or "clear" for _ in range(n)],
        "score": rng.gamma(2.0, 10.0, n),
    })
    for t in tags:
        df[t] = df["tags"].str.split().apply(lambda r, t=t: int(t in r))
    csv = tmp_path / "train.csv"
    df.to_csv(csv, index=False)
    common = ["folds", "--csv", str(csv), "--group-col", "patient", "--folds", "3", "--seed", "4"]
    assert main(common + ["--label-col", "tags", "--label-sep", " ", "--out", str(tmp_path / "a.csv")]) == 0
    printed = capsys.readouterr().out
    assert "n[haze]" in printed and "total" in printed
    assert main(common + ["--label-cols", ",".join(tags), "--out", str(tmp_path / "b.csv")]) == 0
    a, b = (pd.read_csv(tmp_path / f) for f in ("a.csv", "b.csv"))
    # tags and 0/1 columns are two spellings of the same targets: same folds
    pd.testing.assert_frame_equal(a, b)
    dense = df[list(tags)].to_numpy()
    expected = multilabel_folds(dense, 3, groups=df["patient"].to_numpy(), seed=4)
    np.testing.assert_array_equal(a["fold"].to_numpy(), expected)
    assert main(common + ["--target-cols", "score", "--bins", "5", "--out", str(tmp_path / "r.csv")]) == 0
    assert "mean[score]" in capsys.readouterr().out
    r = pd.read_csv(tmp_path / "r.csv")
    expected = regression_folds(df["score"].to_numpy(), 3, groups=df["patient"].to_numpy(), n_bins=5, seed=4)
    np.testing.assert_array_equal(r["fold"].to_numpy(), expected)


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


# --------------------------------------------------------------------------- multi-label


@st.composite
def multilabel_groups(draw, max_groups: int = 40):
    """Groups of 1..5 rows, 1..6 labels, each row a random (possibly empty) label set."""
    n_groups = draw(st.integers(2, max_groups))
    sizes = draw(st.lists(st.integers(1, 5), min_size=n_groups, max_size=n_groups))
    n_labels = draw(st.integers(1, 6))
    rows = [draw(st.sets(st.integers(0, n_labels - 1), max_size=n_labels)) for _ in range(sum(sizes))]
    groups = np.repeat([f"g{i}" for i in range(n_groups)], sizes)
    n_folds = draw(st.integers(2, min(5, n_groups)))
    seed = draw(st.integers(0, 2**31 - 1))
    return [sorted(r) for r in rows], groups, n_labels, n_folds, seed


@SETTINGS
@given(multilabel_groups())
def test_multilabel_groups_isolated_every_row_assigned_deterministic(case):
    rows, groups, n_labels, k, seed = case
    folds = multilabel_folds(rows, k, groups=groups, seed=seed, n_classes=n_labels)
    assert folds.shape == (len(rows),) and folds.dtype == np.int64
    assert folds.min() >= 0 and folds.max() < k
    assert (pd.Series(folds).groupby(groups).nunique() == 1).all()
    assert set(folds.tolist()) == set(range(k))
    np.testing.assert_array_equal(folds, multilabel_folds(rows, k, groups=groups, seed=seed, n_classes=n_labels))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(multilabel_groups(max_groups=15))
def test_label_forms_give_the_same_folds(case):
    rows, groups, n_labels, k, seed = case
    dense = np.zeros((len(rows), n_labels), dtype=np.uint8)
    for i, r in enumerate(rows):
        dense[i, r] = 1
    ll = as_label_lists(rows, n_labels)
    expected = multilabel_folds(rows, k, groups=groups, seed=seed, n_classes=n_labels)
    for form in (dense, dense.astype(bool), (ll.indptr, ll.indices), ll, [np.array(r) for r in rows]):
        got = multilabel_folds(form, k, groups=groups, seed=seed, n_classes=n_labels)
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(as_label_lists(dense).indices, ll.indices)


@SETTINGS
@given(
    sizes=st.lists(st.integers(1, 4), min_size=4, max_size=60),
    n_labels=st.integers(1, 5),
    k=st.integers(2, 5),
    seed=st.integers(0, 10_000),
)
def test_label_counts_within_largest_group_of_ideal(sizes, n_labels, k, seed):
    # An easy case: every image of a group carries the group's one label (a group moves
    # its whole label count at once), so each label's count per fold can always land
    # within the largest group of its ideal share.
    rng = np.random.default_rng(seed)
    if len(sizes) < k:
        return
    group_label = rng.integers(0, n_labels, len(sizes))
    groups = np.repeat(np.arange(len(sizes)), sizes)
    rows = [[int(group_label[g])] for g in groups]
    folds = multilabel_folds(rows, k, groups=groups, seed=seed, n_classes=n_labels)
    counts = fold_label_counts(rows, folds, k)
    ideal = counts.sum(axis=0) / k
    assert (np.abs(counts - ideal) <= max(sizes)).all(), (counts.tolist(), sizes)


@SETTINGS
@given(
    n=st.integers(10, 120),
    n_labels=st.integers(1, 6),
    k=st.integers(2, 5),
    seed=st.integers(0, 10_000),
)
def test_multilabel_without_groups_counts_within_one_per_label_in_easy_cases(n, n_labels, k, seed):
    # Without groups and with one label per row, every label's count per fold is the
    # floor or the ceiling of its ideal, and images per fold differ by at most one.
    rng = np.random.default_rng(seed)
    rows = [[int(c)] for c in rng.integers(0, n_labels, n)]
    folds = multilabel_folds(rows, k, seed=seed, n_classes=n_labels)
    counts = fold_label_counts(rows, folds, k)
    total = counts.sum(axis=0)
    assert ((counts >= total // k) & (counts <= -(-total // k))).all(), counts.tolist()
    assert np.ptp(np.bincount(folds, minlength=k)) <= 1


def _skewed_multilabel(n_groups: int, n_labels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grouped multi-hot data: label rates from 30% down to 1%, tilted per group."""
    rng = np.random.default_rng(seed)
    sizes = 1 + rng.poisson(2.0, n_groups)
    groups = np.repeat(np.arange(n_groups), sizes)
    base = 0.3 / np.arange(1, n_labels + 1) ** 1.2
    tilt = rng.lognormal(0.0, 1.0, (n_groups, n_labels))
    Y = (rng.random((len(groups), n_labels)) < np.clip(base * tilt[groups], 0, 0.9)).astype(np.uint8)
    return Y, groups


def _label_spread(Y: np.ndarray, folds: np.ndarray, k: int) -> float:
    """Mean over labels of the range across folds of the label's positive rate."""
    rate = fold_label_counts(Y, folds, k) / np.bincount(folds, minlength=k)[:, None]
    return float(np.mean(rate.max(axis=0) - rate.min(axis=0)))


def test_multilabel_with_groups_beats_a_random_group_split():
    ours, random_split = [], []
    for seed in range(5):
        Y, groups = _skewed_multilabel(300, 8, seed)
        ours.append(_label_spread(Y, multilabel_folds(Y, 5, groups=groups, seed=seed), 5))
        shuffled = np.random.default_rng(seed).permutation(groups.max() + 1) % 5
        random_split.append(_label_spread(Y, shuffled[groups], 5))
    # on average, and on every seed: stratification with groups is better than chance
    assert np.mean(ours) < 0.5 * np.mean(random_split), (ours, random_split)
    assert all(o < r for o, r in zip(ours, random_split))


def test_rows_without_labels_count_as_images():
    rows = [[] for _ in range(40)] + [[0]] * 10
    folds = multilabel_folds(rows, 5, seed=0)
    assert np.bincount(folds).tolist() == [10] * 5
    assert fold_label_counts(rows, folds, 5)[:, 0].tolist() == [2] * 5
    # no labels at all, in groups: images and groups are still balanced
    folds = multilabel_folds([[]] * 12, 2, groups=np.repeat(["a", "b", "c", "d", "e"], [2, 2, 2, 3, 3]), seed=0)
    assert sorted(np.bincount(folds).tolist()) == [6, 6]


@pytest.mark.parametrize(
    "labels, message",
    [
        ([[0, 1], [1, 1]], "row 1: label 1 is listed twice"),
        ([[0], [-1]], "row 1: class index -1 is outside"),
        ([[0], ["a"]], "row 1: labels must be integer class indices"),
        (np.array([[0, 1], [2, 0]]), "row 1, column 0 is not 0 or 1"),
        (np.array([[0.0, 1.0], [np.nan, 0.0]]), "row 1, column 0 is not 0 or 1"),
        ((np.array([0, 2, 1]), np.array([0, 1])), "indptr must start at 0, never decrease"),
    ],
)
def test_bad_multilabel_input_names_the_row(labels, message):
    with pytest.raises(TfkitError, match=message):
        as_label_lists(labels)


def test_label_index_beyond_n_classes_and_bad_groups():
    with pytest.raises(TfkitError, match="row 2: class index 3 is outside 0..2"):
        multilabel_folds([[0], [1], [3], [2]], 2, n_classes=3)
    with pytest.raises(TfkitError, match="group missing at row 1"):
        multilabel_folds([[0], [1], [0]], 2, groups=["a", None, "b"])
    with pytest.raises(TfkitError, match="expected one per row"):
        multilabel_folds([[0], [1], [0]], 2, groups=["a", "b"])
    with pytest.raises(TfkitError, match="more than the 2 groups"):
        multilabel_folds([[0], [1], [0]], 3, groups=["a", "b", "a"])


def test_label_lists_from_sparse_matrix():
    from scipy import sparse

    dense = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]])
    ll = as_label_lists(sparse.csr_matrix(dense))
    assert isinstance(ll, LabelLists)
    assert (ll.indptr.tolist(), ll.indices.tolist(), ll.n_classes) == ([0, 2, 2, 3], [0, 2, 1], 3)
    with pytest.raises(TfkitError, match="row 0, column 2 is not 0 or 1"):
        as_label_lists(sparse.csr_matrix(np.array([[1, 0, 2]])))


# --------------------------------------------------------------------------- regression


@SETTINGS
@given(
    n_groups=st.integers(10, 80),
    max_size=st.integers(1, 4),
    n_bins=st.integers(1, 8),
    k=st.integers(2, 5),
    seed=st.integers(0, 10_000),
)
def test_regression_bins_balanced_groups_isolated(n_groups, max_size, n_bins, k, seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_size + 1, n_groups)
    groups = np.repeat(np.arange(n_groups), sizes)
    # one target value per group (e.g. a patient's score), so a group sits in one bin
    y = rng.normal(size=n_groups)[groups] * 10
    folds = regression_folds(y, k, groups=groups, n_bins=n_bins, seed=seed)
    assert (pd.Series(folds).groupby(groups).nunique() == 1).all()
    assert set(folds.tolist()) == set(range(k))
    bins = pd.qcut(y, n_bins, labels=False, duplicates="drop")
    counts = pd.crosstab(folds, bins).reindex(range(k), fill_value=0).to_numpy()
    assert (np.abs(counts - counts.sum(axis=0) / k) <= max_size).all(), counts.tolist()


def test_regression_fold_means_agree_and_several_targets():
    rng = np.random.default_rng(0)
    y = rng.gamma(2.0, 10.0, 1000)
    folds = regression_folds(y, 5, n_bins=10, seed=0)
    means = np.array([y[folds == k].mean() for k in range(5)])
    shuffled = rng.permutation(1000) % 5
    random_means = np.array([y[shuffled == k].mean() for k in range(5)])
    # bins balanced and values dealt in order within each bin: fold means far closer than chance
    assert np.ptp(means) < 0.25 * np.ptp(random_means), (means, random_means)
    # a distribution target: every column's bins balanced at once
    Y = rng.dirichlet(np.ones(4), 600)
    folds = regression_folds(Y, 3, n_bins=4, seed=1)
    for j in range(4):
        counts = pd.crosstab(folds, pd.qcut(Y[:, j], 4, labels=False)).to_numpy()
        assert np.ptp(counts, axis=0).max() <= 2, (j, counts.tolist())


def test_bad_regression_targets():
    with pytest.raises(TfkitError, match="not finite at row 2, column 0"):
        regression_folds([1.0, 2.0, np.nan, 4.0], 2)
    with pytest.raises(TfkitError, match="n_bins must be at least 1"):
        regression_folds([1.0, 2.0, 3.0, 4.0], 2, n_bins=0)


# --------------------------------------------------------------------------- the solver


@settings(max_examples=200, deadline=None)
@given(
    cost=st.lists(st.floats(-50, 50, allow_nan=False), min_size=2, max_size=7),
    step=st.floats(0.05, 20.0),
    m=st.integers(1, 60),
    integral=st.booleans(),
)
def test_water_fill_equals_placing_items_one_at_a_time(cost, step, m, integral):
    # Integral costs and steps make exact ties, the case where the tie-break must match.
    cost = np.round(cost) if integral else np.array(cost)
    step = float(max(1, round(step))) if integral else step
    got = stratify._water_fill(np.asarray(cost, dtype=float), step, m)
    assert got.sum() == m and (got >= 0).all()
    if integral:
        n = np.zeros(len(cost), dtype=np.int64)
        for _ in range(m):
            n[int(np.argmin(cost + n * step))] += 1
        np.testing.assert_array_equal(got, n)
    else:  # the m cheapest slots, up to rounding in near-ties
        taken = max(c + (k - 1) * step for c, k in zip(cost, got) if k > 0)
        untaken = min(c + k * step for c, k in zip(cost, got))
        assert taken <= untaken + 1e-9 * (1 + abs(untaken)), (got, taken, untaken)
    order = stratify._fill_order(np.asarray(cost, dtype=float), step, got)
    np.testing.assert_array_equal(np.bincount(order, minlength=len(cost)), got)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(-5, 5), st.integers(0, 3), st.integers(-2**40, 2**40)), min_size=1, max_size=40))
def test_composite_key_sorts_like_the_tuple(rows):
    parts = [np.array(col, dtype=np.int64) for col in zip(*rows)]
    key = stratify._composite(parts)
    np.testing.assert_array_equal(np.argsort(key, kind="stable"), np.lexsort(parts[::-1]))


def test_many_classes_and_groups_stay_sparse():
    # 60,000 groups x 40,000 classes: a dense groups x classes matrix would need 19 GB.
    rng = np.random.default_rng(0)
    n = 120_000
    groups = rng.integers(0, 60_000, n)
    labels = (rng.zipf(1.3, n) - 1) % 40_000
    df = pd.DataFrame({"label": labels, "group": groups})
    folds = assign_folds(df, 5, "label", group_col="group", seed=0, n_bins=0)
    assert (pd.Series(folds).groupby(groups).nunique() == 1).all()
    assert np.ptp(np.bincount(folds)) <= 0.001 * n
    head = np.bincount(folds[labels == 0], minlength=5)
    assert np.ptp(head) <= 0.01 * head.sum()


def test_scan_window_and_chunks_on_a_small_problem(monkeypatch):
    # The scale paths (chunked move scan, a seeded window of groups per round) on a small input.
    monkeypatch.setattr(stratify, "CHUNK_GROUPS", 7)
    monkeypatch.setattr(stratify, "SCAN_GROUPS", 50)
    Y, groups = _skewed_multilabel(200, 5, 3)
    a = multilabel_folds(Y, 4, groups=groups, seed=3)
    b = multilabel_folds(Y, 4, groups=groups, seed=3)
    np.testing.assert_array_equal(a, b)
    assert (pd.Series(a).groupby(groups).nunique() == 1).all()
    shuffled = np.random.default_rng(3).permutation(groups.max() + 1) % 4
    assert _label_spread(Y, a, 4) < _label_spread(Y, shuffled[groups], 4)
