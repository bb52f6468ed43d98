"""kill -9 of real ``tfkit`` processes: mid-epoch, mid-save, mid-predict; the re-run completes.

Mid-epoch kills come from outside (SIGKILL once an epoch has finished). Mid-save
kills are exact: the child replaces ``os.replace`` by one that sends itself
SIGKILL just before the rename that would publish a chosen file, the worst
moment (its content is fully written under a temporary name, not yet under
the final one). A kill of ``tune`` mid-trial is tests/test_tune.py::test_killed_search_resumes.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from tfkit.data import read_index

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.image_size=16", "data.batch_size=8", "model.width=4", "train.epochs=3", "train.verbose=0",
        "train.warmup_epochs=0", "train.mixed_precision=off"]
# Runs tfkit's CLI; with TFKIT_KILL_AT=<name> the process SIGKILLs itself the first time it
# would rename a file onto a path ending in <name>.
CHILD = """
import os, signal, sys
target = os.environ.get("TFKIT_KILL_AT")
if target:
    real = os.replace
    def replace(src, dst, *a, **k):
        if str(dst).endswith(target):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst, *a, **k)
    os.replace = replace
from tfkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env(**extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.pop("TFKIT_KILL_AT", None)
    env.update(extra)
    return env


def _start(argv: list, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, *argv], env=_env(**env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _run(argv: list, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, *argv], env=_env(**env), capture_output=True, text=True,
                          timeout=900)


def _final_files_are_whole(root: Path) -> None:
    """Every file under a final (non-temporary) name parses: no half-written file is ever published."""
    for p in root.rglob("*"):
        if not p.is_file() or ".tmp" in p.name or p.name.startswith("."):
            continue
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".csv":
            pd.read_csv(p)
        elif p.suffix == ".keras":
            with zipfile.ZipFile(p) as z:
                assert z.testzip() is None, p


def test_train_killed_mid_epoch_and_mid_save_resumes_with_every_row_once(small_records, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--records", str(small_records), "--out", str(out), "--set", *TINY]
    # 1. SIGKILL from outside during fold 0's second epoch.
    proc = _start(argv)
    deadline = time.time() + 600
    while not (out / "fold0" / "resume" / "state.json").is_file():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "fold0" / "done.json").exists()
    _final_files_are_whole(out)
    # 2-4. Killed just before publishing a best checkpoint, a fold's OOF rows and its done.json.
    for target in ("fold1/model.keras", "fold1/oof.csv", "fold2/done.json"):
        res = _run(argv, TFKIT_KILL_AT=target)
        assert res.returncode == -signal.SIGKILL, (target, res.returncode, res.stderr[-2000:])
        assert not (out / target).exists()
        _final_files_are_whole(out)
    # 5. The plain re-run completes.
    res = _run(argv)
    assert res.returncode == 0, res.stderr[-3000:]
    oof = pd.read_csv(out / "oof.csv", dtype={"id": str})
    ids = read_index(small_records)["id"]
    assert sorted(oof["id"]) == sorted(ids) and not oof["id"].duplicated().any()  # every row exactly once
    for k in range(3):
        assert (oof.loc[oof["fold"] == k, "id"].sort_values().tolist()
                == read_index(small_records, folds=[k])["id"].sort_values().tolist())
    from tfkit.run import recompute_cv

    cv = json.loads((out / "cv.json").read_text())
    assert cv["metrics"] == pytest.approx(recompute_cv(out)["metrics"])
    _final_files_are_whole(out)
    assert not any((out / f"fold{k}" / "resume").exists() for k in range(3))


def test_predict_killed_mid_save_leaves_no_submission_and_reruns(tiny_run, small_records, small_csv, digits_dir,
                                                                  tmp_path):
    from tfkit.records import build_records

    run = tiny_run
    test = tmp_path / "test"
    build_records(csv=small_csv, images=digits_dir / "images", out=test, size=32, split="test", workers=1,
                  classes_from=small_records / "manifest.json", progress=False)
    sub = tmp_path / "sub.csv"
    argv = ["predict", "--run", str(run), "--records", str(test), "--out", str(sub), "--tta", "2"]
    res = _run(argv, TFKIT_KILL_AT="sub.csv")
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert not sub.exists()  # the complete temporary file never became the submission
    res = _run(argv)
    assert res.returncode == 0, res.stderr[-3000:]
    frame = pd.read_csv(sub, dtype={"id": str})
    assert sorted(frame["id"]) == sorted(read_index(test)["id"])
