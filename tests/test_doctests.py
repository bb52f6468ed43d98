"""Every ``>>>`` example in these modules runs and prints what its docstring says.

Examples that cannot run here (they need a records folder or a trained run) are
written as plain ``Example::`` code blocks instead, so none is skipped. The
``tfkit.records`` modules' examples run in ``tests/test_records.py``.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

MODULES = [
    "utils", "config", "backend", "strategy", "manifest", "datasets", "data", "show", "models", "losses", "metrics", "scheduler",
    "optim", "swa", "train_step", "callbacks", "checks", "folds", "preflight", "quiet", "batchnorm",
    "report_targets", "augment", "augment.backend", "augment.batch", "augment.checks", "augment.colour", "augment.draws",
    "augment.layer", "augment.views", "metadata", "metrics_multilabel", "metrics_regression", "targets", "thresholds",
    "fold_setup", "lr_find", "run", "train", "tune",
    "predict", "report", "report_page", "search_space", "demo", "cli", "heads", "exclude", "run_view", "ensemble", "clean", "runs", "distill",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    module = importlib.import_module(f"tfkit.{name}")
    assert "doctest: +SKIP" not in inspect.getsource(module)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of tfkit.{name} failed"
