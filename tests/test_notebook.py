"""The Kaggle TPU notebook runs top to bottom on CPU with its small setting, on each Keras backend.

The notebook's kernel is its own process, so the JAX run needs no subprocess of ours. It stands in
for Kaggle's TPU VM: 2 forced host devices for the chips and ``TPU_ACCELERATOR_TYPE`` set as a TPU VM
sets it, with no backend named, so the notebook's second cell picks JAX by itself (``auto``) before
Keras is imported, and its tune cell trains the trial in the kernel's process, as it must beside a TPU.
Its tune, K-fold training, TTA prediction and report cells then run on JAX with
``keras.distribution.DataParallel``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
import numpy as np
import pandas as pd
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "kaggle_tpu.ipynb"


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_kaggle_notebook_executes_and_writes_a_submission(backend, tmp_path, monkeypatch, jax_env):
    if backend == "jax":  # a TPU VM stand-in: "auto" must pick JAX
        for key in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"):
            monkeypatch.setenv(key, jax_env[key])
        monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v5litepod-8")
        monkeypatch.delenv("TFKIT_BACKEND", raising=False)
    else:
        monkeypatch.setenv("TFKIT_BACKEND", backend)
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setenv("TFKIT_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("TFKIT_NOTEBOOK_OUT", str(tmp_path / "work"))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    # the kernel must be this interpreter (the venv with tfkit and ipykernel), whatever kernelspecs exist
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code)  # every cell ran
    text = "".join(o.get("text", "") for c in code for o in c.get("outputs", []) if o.get("output_type") == "stream")
    assert "small=True" in text and "CV accuracy" in text and "held-out" in text
    replicas = 2 if backend == "jax" else 1
    assert f"on {backend} |" in text and f"with {replicas} replica(s)" in text
    work = tmp_path / "work"
    sub = pd.read_csv(work / "submission.csv", dtype={"id": str})
    test = pd.read_csv(work / "test_small.csv", dtype={"id": str})
    assert sorted(sub["id"]) == sorted(test["id"])
    np.testing.assert_allclose(sub.drop(columns="id").sum(1), 1.0, atol=1e-5)
    assert (work / "run" / "report" / "report.html").is_file()
    assert (work / "tune" / "trials.csv").is_file()
    done = json.loads((work / "run" / "fold0" / "done.json").read_text())
    assert done["runtime"]["backend"] == backend and done["replicas"] == replicas
