"""Bad input on every command, as one table: each row is one line naming the thing, exit 2,
raised before any work or write, leaving nothing that blocks the corrected command.

Every row runs the real CLI (``tfkit.cli.main``) on copies of real records and a
real (tiny) trained run, damaged the way a user or a disk would damage them.
After the call, the row's watched path (its ``--out``, or the run it reads) must
be exactly as before: not created when it did not exist, unchanged when it did.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest

from tfkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.image_size=16", "data.batch_size=8", "model.width=4", "train.epochs=1", "train.verbose=0",
        "train.warmup_epochs=0", "train.mixed_precision=off"]
UNWRITABLE = "/proc/tfkit-no-such-dir"  # no one, not even root, can create anything there


@pytest.fixture(scope="module")
def world(small_records, small_csv, digits_dir, tiny_run, tmp_path_factory):
    """Pristine inputs every row copies: records, a trained run, test records, records with other folds."""
    from tfkit.records import build_records

    base = tmp_path_factory.mktemp("bad_input")
    run = tiny_run
    test = base / "test"
    build_records(csv=small_csv, images=digits_dir / "images", out=test, size=32, split="test", workers=1,
                  classes_from=small_records / "manifest.json", meta_cols=["age", "site"], progress=False)
    test16 = base / "test16"
    build_records(csv=small_csv, images=digits_dir / "images", out=test16, size=16, split="test", workers=1,
                  classes_from=small_records / "manifest.json", progress=False)
    other = base / "other_folds"
    build_records(csv=small_csv, images=digits_dir / "images", out=other, group_col="group", size=32, n_folds=3,
                  seed=7, meta_cols=["age", "site"], workers=1, progress=False)
    space = base / "space.yaml"
    space.write_text("train.lr: {choice: [0.001, 0.01]}\n")
    return dict(records=small_records, run=run, test=test, test16=test16, other=other, space=space, csv=small_csv,
                images=digits_dir / "images")


class Ctx:
    """One row's sandbox: copies of the pristine inputs, damaged by the row's set-up."""

    def __init__(self, world: dict, tmp: Path):
        self.w, self.tmp = world, tmp

    def copy(self, key: str) -> Path:
        dst = self.tmp / key
        if not dst.exists():
            shutil.copytree(self.w[key], dst)
        return dst

    @property
    def rec(self) -> Path:
        return self.copy("records")

    @property
    def run(self) -> Path:
        return self.copy("run")

    @property
    def test(self) -> Path:
        return self.copy("test")

    def file(self, name: str, data: bytes | str = b"") -> Path:
        p = self.tmp / name
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        return p


def _edit_manifest(folder: Path, fn: Callable[[dict], None]) -> None:
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    fn(m)
    path.write_text(json.dumps(m))


def _shard(folder: Path) -> Path:
    return sorted(folder.glob("*.tfrec"))[0]


def _truncate(folder: Path) -> None:
    p = _shard(folder)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip(folder: Path) -> None:
    p = _shard(folder)
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0x40
    p.write_bytes(bytes(b))


def _lambda_model(path: Path) -> None:
    import keras

    inp = keras.Input((4,))
    keras.Model(inp, keras.layers.Lambda(lambda x: x * 2)(inp)).save(path)


@dataclasses.dataclass
class Case:
    id: str
    argv: Callable[[Ctx], list]
    expect: str
    setup: Callable[[Ctx], None] = lambda c: None
    watch: Callable[[Ctx], Path] | None = None  # default: the path after --out


def train_argv(c: Ctx, *extra: str, records: Path | None = None, out: str = "new_run") -> list:
    # TINY first: a row's own --set comes later and wins
    return ["train", "--records", str(records or c.rec), "--out", str(c.tmp / out), "--set", *TINY, *extra]


def predict_argv(c: Ctx, *extra: str, source: list | None = None, out: str | None = None) -> list:
    return ["predict", "--run", str(c.run), *(source or ["--records", str(c.test)]),
            "--out", out or str(c.tmp / "sub.csv"), *extra]


def tune_argv(c: Ctx, *extra: str, space: Path | None = None) -> list:
    return ["tune", "--records", str(c.rec), "--space", str(space or c.w["space"]), "--out", str(c.tmp / "tune"),
            "--trials", "1", "--in-process", "--set", *TINY, *extra]


CASES = [
    # ------------------------------------------------------------------ train: config
    Case("train-yaml-syntax", lambda c: train_argv(c, "--config", str(c.file("c.yaml", "train:\n  lr: [0.1,\n"))),
         r"c\.yaml: invalid YAML at line 3"),
    Case("train-config-not-utf8", lambda c: train_argv(c, "--config", str(c.file("c.yaml", b"train:\n  lr: 0.1 # \xe9\n"))),
         r"not UTF-8 text"),
    Case("train-set-yaml-syntax", lambda c: train_argv(c, "--set", "train.lr=[1,"), r"--set 'train.lr=\[1,': invalid YAML"),
    Case("train-wrong-type", lambda c: train_argv(c, "--set", "data.batch_size=abc"), r"data.batch_size: expected an integer"),
    Case("train-batch-0", lambda c: train_argv(c, "--set", "data.batch_size=0"), r"data.batch_size"),
    Case("train-batch-negative", lambda c: train_argv(c, "--set", "data.batch_size=-5"), r"data.batch_size"),
    Case("train-lr-0", lambda c: train_argv(c, "--set", "train.lr=0"), r"train.lr"),
    Case("train-lr-nan", lambda c: train_argv(c, "--set", "train.lr=.nan"), r"train.lr"),
    Case("train-epochs-0", lambda c: train_argv(c, "--set", "train.epochs=0"), r"train.epochs"),
    Case("train-image-size-0", lambda c: train_argv(c, "--set", "data.image_size=0"), r"data.image_size"),
    Case("train-dropout", lambda c: train_argv(c, "--set", "model.dropout=1.5"), r"model.dropout"),
    Case("train-mixup-cutmix", lambda c: train_argv(c, "--set", "augment.mixup_p=0.7", "augment.cutmix_p=0.6"), r"mixup"),
    Case("train-unknown-model", lambda c: train_argv(c, "--set", "model.name=resnet9000"), r"resnet9000"),
    Case("train-unknown-loss", lambda c: train_argv(c, "--set", "train.loss=hinge"), r"train.loss.*hinge"),
    Case("train-unknown-optimizer", lambda c: train_argv(c, "--set", "train.optimizer=lion"), r"train.optimizer.*lion"),
    Case("train-unknown-schedule", lambda c: train_argv(c, "--set", "train.schedule=step"), r"train.schedule.*step"),
    Case("train-unknown-pooling", lambda c: train_argv(c, "--set", "model.pooling=sum"), r"model.pooling.*sum"),
    Case("train-unknown-metric", lambda c: train_argv(c, "--set", "train.metrics=[top5]"), r"train.metrics.*top5"),
    Case("train-unknown-monitor", lambda c: train_argv(c, "--set", "train.monitor=val_foo"), r"train.monitor.*val_foo"),
    Case("train-unknown-key", lambda c: train_argv(c, "--set", "train.nope=1"), r"unknown config key 'train.nope'"),
    Case("train-precise-bn", lambda c: train_argv(c, "--set", "train.precise_bn=maybe"), r"train.precise_bn"),
    Case("train-folds-empty", lambda c: train_argv(c, "--folds", ""), r"--folds: no fold"),
    Case("train-folds-out-of-range", lambda c: train_argv(c, "--folds", "7"), r"fold\(s\) \[7\] do not exist"),
    # ------------------------------------------------------------------ train: records
    Case("train-records-missing", lambda c: train_argv(c, records=c.tmp / "nope"), r"records folder .*nope not found"),
    Case("train-records-empty", lambda c: train_argv(c, records=c.tmp / "empty"), r"manifest.json not found",
         setup=lambda c: (c.tmp / "empty").mkdir()),
    Case("train-manifest-not-json", lambda c: train_argv(c), r"manifest.json: not valid JSON",
         setup=lambda c: (c.rec / "manifest.json").write_text("{oops")),
    Case("train-shard-truncated", lambda c: train_argv(c), r"train00-\S+\.tfrec: shard is truncated or corrupted",
         setup=lambda c: _truncate(c.rec)),
    Case("train-shard-bitflip", lambda c: train_argv(c), r"train00-\S+\.tfrec: shard is truncated or corrupted",
         setup=lambda c: _flip(c.rec)),
    Case("train-shard-missing", lambda c: train_argv(c), r"shard listed in manifest.json is missing",
         setup=lambda c: _shard(c.rec).unlink()),
    Case("train-shard-foreign", lambda c: train_argv(c), r"train09-000-5\.tfrec: shard not listed in manifest.json",
         setup=lambda c: (c.rec / "train09-000-5.tfrec").write_bytes(b"x")),
    Case("train-shard-name-escapes", lambda c: train_argv(c), r"shard name '\.\./x\.tfrec' leaves the records folder",
         setup=lambda c: _edit_manifest(c.rec, lambda m: m["shards"][0].update(file="../x.tfrec"))),
    Case("train-manifest-size-edited", lambda c: train_argv(c), r"stored images are 32x32 but manifest.json says 16x16",
         setup=lambda c: _edit_manifest(c.rec, lambda m: m["image"].update(size=[16, 16]))),
    Case("train-classes-padded", lambda c: train_argv(c), r"lists 12 classes but 2 have no example .*padded",
         setup=lambda c: _edit_manifest(c.rec, lambda m: m.update(classes=m["classes"] + ["10", "11"]))),
    Case("train-classes-cut", lambda c: train_argv(c), r"lists 5 classes but the shards hold label index 9.*cut",
         setup=lambda c: _edit_manifest(c.rec, lambda m: m.update(classes=m["classes"][:5]))),
    # ------------------------------------------------------------------ train: output
    Case("train-out-is-file", lambda c: train_argv(c, out="afile"), r"--out .*afile is a file",
         setup=lambda c: c.file("afile", "keep")),
    Case("train-out-unwritable", lambda c: ["train", "--records", str(c.rec), "--out", UNWRITABLE + "/run"],
         r"cannot write in /proc", watch=lambda c: Path(UNWRITABLE)),
    Case("train-out-not-a-run", lambda c: train_argv(c, out="test"), r"is not empty and is not a tfkit run folder",
         setup=lambda c: c.test),
    Case("train-resume-other-folds", lambda c: train_argv(c, records=c.w["other"], out="run"),
         r"was trained on other records .*folds or shard checksums differ", setup=lambda c: c.run),
    # ------------------------------------------------------------------ lr-find
    Case("lr-find-steps", lambda c: ["lr-find", "--records", str(c.rec), "--out", str(c.tmp / "lr"), "--steps", "5"],
         r"--steps must be at least 10"),
    Case("lr-find-lr-range", lambda c: ["lr-find", "--records", str(c.rec), "--out", str(c.tmp / "lr"),
                                        "--min-lr", "1", "--max-lr", "0.1"], r"--min-lr < --max-lr"),
    Case("lr-find-out-is-file", lambda c: ["lr-find", "--records", str(c.rec), "--out", str(c.file("lr", "x"))],
         r"--out .*lr is a file"),
    Case("lr-find-shard-truncated", lambda c: ["lr-find", "--records", str(c.rec), "--out", str(c.tmp / "lr"), "--set", *TINY],
         r"\.tfrec: shard is truncated", setup=lambda c: _truncate(c.rec)),
    Case("lr-find-unknown-optimizer", lambda c: ["lr-find", "--records", str(c.rec), "--out", str(c.tmp / "lr"),
                                                 "--set", "train.optimizer=lion"], r"train.optimizer"),
    # ------------------------------------------------------------------ schedule
    Case("schedule-yaml", lambda c: ["schedule", "--out", str(c.tmp / "s.png"), "--config", str(c.file("c.yaml", "a: [\n"))],
         r"invalid YAML at line 2"),
    Case("schedule-steps-0", lambda c: ["schedule", "--out", str(c.tmp / "s.png"), "--steps-per-epoch", "0"],
         r"--steps-per-epoch: expected at least 1"),
    Case("schedule-out-is-dir", lambda c: ["schedule", "--out", str(c.tmp / "d")], r"--out .*d is a folder",
         setup=lambda c: (c.tmp / "d").mkdir()),
    Case("schedule-unknown", lambda c: ["schedule", "--out", str(c.tmp / "s.png"), "--set", "train.schedule=step"],
         r"train.schedule.*step"),
    Case("schedule-out-unwritable", lambda c: ["schedule", "--out", UNWRITABLE + "/s.png"], r"cannot write in /proc",
         watch=lambda c: Path(UNWRITABLE)),
    # ------------------------------------------------------------------ show
    Case("show-records-missing", lambda c: ["show", "--records", str(c.tmp / "nope"), "--out", str(c.tmp / "show")],
         r"not found"),
    Case("show-out-is-file", lambda c: ["show", "--records", str(c.rec), "--out", str(c.file("show", "x"))], r"is a file"),
    Case("show-yaml", lambda c: ["show", "--records", str(c.rec), "--out", str(c.tmp / "show"),
                                 "--config", str(c.file("c.yaml", "augment: {a: 1\n"))], r"invalid YAML"),
    Case("show-n-0", lambda c: ["show", "--records", str(c.rec), "--out", str(c.tmp / "show"), "--n", "0"], r"--n >= 1"),
    Case("show-bad-augment", lambda c: ["show", "--records", str(c.rec), "--out", str(c.tmp / "show"),
                                        "--set", "augment.hflip_p=2"], r"augment.hflip_p"),
    Case("show-shard-truncated", lambda c: ["show", "--records", str(c.rec), "--out", str(c.tmp / "show")],
         r"shard is truncated", setup=lambda c: _truncate(c.rec)),
    # ------------------------------------------------------------------ tune
    Case("tune-trials-0", lambda c: tune_argv(c, "--trials", "0"), r"--trials: expected at least 1"),
    Case("tune-unknown-objective", lambda c: tune_argv(c, "--objective", "val_foo"), r"--objective 'val_foo'"),
    Case("tune-space-yaml", lambda c: tune_argv(c, space=c.file("s.yaml", "train.lr: {min: 1\n")), r"invalid YAML"),
    Case("tune-space-unknown-key", lambda c: tune_argv(c, space=c.file("s.yaml", "train.nope: {choice: [1, 2]}\n")),
         r"train.nope"),
    Case("tune-space-bad-value", lambda c: tune_argv(c, space=c.file("s.yaml", "data.batch_size: {choice: [0, 8]}\n")),
         r"data.batch_size"),
    Case("tune-out-is-file", lambda c: ["tune", "--records", str(c.rec), "--space", str(c.w["space"]),
                                        "--out", str(c.file("tune", "x"))], r"is a file"),
    Case("tune-shard-truncated", lambda c: tune_argv(c), r"shard is truncated", setup=lambda c: _truncate(c.rec)),
    # ------------------------------------------------------------------ predict
    Case("predict-run-missing", lambda c: ["predict", "--run", str(c.tmp / "nope"), "--records", str(c.test),
                                           "--out", str(c.tmp / "sub.csv")], r"run folder not found"),
    Case("predict-run-is-records", lambda c: ["predict", "--run", str(c.rec), "--records", str(c.test),
                                              "--out", str(c.tmp / "sub.csv")], r"missing config.yaml"),
    Case("predict-run-manifest-broken", lambda c: predict_argv(c), r"manifest.json: not valid JSON",
         setup=lambda c: (c.run / "manifest.json").write_text("[1,")),
    Case("predict-run-config-broken", lambda c: predict_argv(c), r"config.yaml: invalid YAML",
         setup=lambda c: (c.run / "config.yaml").write_text("train: [\n")),
    Case("predict-model-missing", lambda c: predict_argv(c), r"model.keras: model not found although fold 0 finished",
         setup=lambda c: (c.run / "fold0" / "model.keras").unlink()),
    Case("predict-model-truncated", lambda c: predict_argv(c), r"model.keras: fold 0 model is not a valid \.keras file",
         setup=lambda c: (c.run / "fold0" / "model.keras").write_bytes(
             (c.run / "fold0" / "model.keras").read_bytes()[:3000])),
    Case("predict-model-random", lambda c: predict_argv(c), r"model.keras: fold 1 model is not a valid \.keras file",
         setup=lambda c: (c.run / "fold1" / "model.keras").write_bytes(os.urandom(4096))),
    Case("predict-model-lambda", lambda c: predict_argv(c), r"refused to load fold 0 model: it holds a Lambda layer",
         setup=lambda c: _lambda_model(c.run / "fold0" / "model.keras")),
    Case("predict-classes-differ", lambda c: predict_argv(c), r"classes .* differ from the run's",
         setup=lambda c: _edit_manifest(c.test, lambda m: m.update(classes=list(reversed(m["classes"]))))),
    Case("predict-size-differs", lambda c: predict_argv(c, source=["--records", str(c.w["test16"])]),
         r"image size \(16, 16\) differs from the run's training records \(\(32, 32\)\)"),
    Case("predict-test-shard-truncated", lambda c: predict_argv(c), r"test-\S+\.tfrec: shard is truncated",
         setup=lambda c: _truncate(c.test)),
    Case("predict-out-is-dir", lambda c: predict_argv(c, out=str(c.tmp / "d")), r"--out .*d is a folder",
         setup=lambda c: (c.tmp / "d").mkdir()),
    Case("predict-out-unwritable", lambda c: predict_argv(c, out=UNWRITABLE + "/sub.csv"), r"cannot write in /proc",
         watch=lambda c: Path(UNWRITABLE)),
    Case("predict-set-train-key", lambda c: predict_argv(c, "--set", "train.lr=0.5"),
         r"--set train.lr=0.5: predict reads only predict\.\* keys"),
    Case("predict-tta-0", lambda c: predict_argv(c, "--tta", "0"), r"predict.tta"),
    Case("predict-images-garbage", lambda c: predict_argv(c, source=["--images", str(c.tmp / "imgs")]),
         r"bad\.png: not a PNG image", setup=lambda c: _image_dir(c, b"garbage" * 50)),
    Case("predict-images-empty-file", lambda c: predict_argv(c, source=["--images", str(c.tmp / "imgs")]),
         r"bad\.png: empty file", setup=lambda c: _image_dir(c, b"")),
    Case("predict-oof-other-records", lambda c: ["predict", "--run", str(c.run), "--records", str(c.w["other"]), "--oof"],
         r"not the records the run was trained on", watch=lambda c: c.run),
    # ------------------------------------------------------------------ report
    Case("report-run-missing", lambda c: ["report", "--run", str(c.tmp / "nope"), "--out", str(c.tmp / "rep")],
         r"run folder not found"),
    Case("report-out-is-file", lambda c: ["report", "--run", str(c.run), "--out", str(c.file("rep", "x"))], r"is a file"),
    Case("report-worst-negative", lambda c: ["report", "--run", str(c.run), "--out", str(c.tmp / "rep"), "--worst", "-1"],
         r"--worst: expected"),
    Case("report-gradcam-unknown", lambda c: ["report", "--run", str(c.run), "--out", str(c.tmp / "rep"),
                                              "--gradcam", "nope"], r"--gradcam: id\(s\) not in the run's oof.csv"),
    Case("report-other-records", lambda c: ["report", "--run", str(c.run), "--out", str(c.tmp / "rep"),
                                            "--records", str(c.w["other"])], r"not the records this run was trained on"),
    # ------------------------------------------------------------------ folds
    Case("folds-csv-missing", lambda c: ["folds", "--csv", str(c.tmp / "nope.csv"), "--out", str(c.tmp / "f.csv")],
         r"CSV .*nope.csv not found"),
    Case("folds-k-1", lambda c: ["folds", "--csv", str(c.w["csv"]), "--out", str(c.tmp / "f.csv"), "--folds", "1"],
         r"--folds must be between 2"),
    Case("folds-out-is-dir", lambda c: ["folds", "--csv", str(c.w["csv"]), "--out", str(c.tmp / "d")], r"is a folder",
         setup=lambda c: (c.tmp / "d").mkdir()),
    Case("folds-label-missing", lambda c: ["folds", "--csv", str(c.w["csv"]), "--out", str(c.tmp / "f.csv"),
                                           "--label-col", "grade"], r"no label column 'grade'"),
    # ------------------------------------------------------------------ datasets, demo
    Case("datasets-out-is-file", lambda c: ["datasets", "export", "digits", "--out", str(c.file("d", "x"))],
         r"exists and is not a folder"),
    Case("datasets-test-size", lambda c: ["datasets", "export", "digits", "--out", str(c.tmp / "d"), "--test-size", "1.5"],
         r"--test-size must be in \(0, 1\)"),
    Case("datasets-out-unwritable", lambda c: ["datasets", "export", "digits", "--out", UNWRITABLE + "/d"],
         r"cannot create it", watch=lambda c: Path(UNWRITABLE)),
    Case("demo-out-is-file", lambda c: ["demo", "--out", str(c.file("demo", "x"))], r"exists and is not a folder"),
    Case("demo-out-unwritable", lambda c: ["demo", "--out", UNWRITABLE + "/demo"], r"cannot create it",
         watch=lambda c: Path(UNWRITABLE)),
]


def _image_dir(c: Ctx, bad: bytes) -> None:
    d = c.tmp / "imgs"
    d.mkdir()
    src = sorted(c.w["images"].glob("*.png"))[:3]
    for p in src:
        shutil.copy(p, d / p.name)
    (d / "bad.png").write_bytes(bad)


def _snapshot(path: Path) -> dict | None:
    if not path.exists():
        return None
    if path.is_file():
        return {"": (path.stat().st_size, path.stat().st_mtime_ns)}
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


def _watched(case: Case, c: Ctx, argv: list) -> Path:
    if case.watch is not None:
        return case.watch(c)
    if "--out" in argv:
        return Path(argv[argv.index("--out") + 1])
    return c.tmp


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, world, tmp_path, capsys):
    c = Ctx(world, tmp_path)
    case.setup(c)
    argv = case.argv(c)
    watched = _watched(case, c, argv)
    before = _snapshot(watched)
    rc = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert rc == 2, (case.id, captured.out[-2000:], err[-2000:])
    assert err.startswith("tfkit: error: ") and "\n" not in err, err
    assert re.search(case.expect, err), (case.expect, err)
    assert _snapshot(watched) == before, f"{case.id}: {watched} changed"


def test_every_command_has_rows():
    commands = {c.id.split("-")[0] for c in CASES} | {"lr-find" for c in CASES if c.id.startswith("lr-find")}
    assert {"train", "lr", "schedule", "show", "tune", "predict", "report", "folds", "datasets", "demo"} <= commands


def test_corrected_command_runs_after_a_refused_one(world, tmp_path, capsys):
    # A refused train (bad config) leaves nothing that blocks the corrected one.
    out = tmp_path / "run"
    assert main(["train", "--records", str(world["records"]), "--out", str(out), "--folds", "0",
                 "--set", *TINY, "train.lr=0"]) == 2
    assert not out.exists()
    assert main(["train", "--records", str(world["records"]), "--out", str(out), "--folds", "0", "--set", *TINY]) == 0
    assert (out / "fold0" / "done.json").is_file()


@pytest.mark.parametrize("damage, argv", [
    ("shard", lambda w, t: ["train", "--records", str(t / "rec"), "--out", str(t / "run"), "--set", *TINY]),
    ("model", lambda w, t: ["predict", "--run", str(t / "run"), "--records", str(w["test"]), "--out", str(t / "s.csv")]),
])
def test_one_line_even_after_tensorflow_is_imported(world, tmp_path, damage, argv):
    """Through a real process with a new user's environment: stderr is exactly the error line."""
    shutil.copytree(world["records"], tmp_path / "rec")
    shutil.copytree(world["run"], tmp_path / "run")
    if damage == "shard":
        _truncate(tmp_path / "rec")
    else:
        (tmp_path / "run" / "fold0" / "model.keras").write_bytes(b"PK\x03\x04 not really")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TFKIT_QUIET_TF_LOG")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # import tensorflow first, as a stage would, so its start-up output would come before the error
    code = "import sys, tfkit, tensorflow; from tfkit.cli import main; sys.exit(main(sys.argv[1:]))"
    res = subprocess.run([sys.executable, "-c", code, *argv(world, tmp_path)], capture_output=True, text=True,
                         env=env, timeout=600)
    assert res.returncode == 2, res.stderr[-3000:]
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tfkit: error: "), res.stderr


def test_lambda_model_is_refused_and_never_run(tmp_path):
    """A .keras file carrying Python code: refused in one line, and its code never runs."""
    import keras

    from tfkit.models import load_model
    from tfkit.utils import TfkitError

    marker = tmp_path / "pwned"

    def payload(x):
        marker.write_text("ran")  # what a malicious model would do when its graph is rebuilt
        return x

    inp = keras.Input((4,))
    keras.Model(inp, keras.layers.Lambda(payload)(inp)).save(tmp_path / "evil.keras")
    marker.unlink()  # building the model ran it once, here, on purpose
    with pytest.raises(TfkitError, match="holds a Lambda layer") as e:
        load_model(tmp_path / "evil.keras")
    assert "\n" not in str(e.value)
    assert not marker.exists()
