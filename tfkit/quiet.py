"""Quiet start-up: TensorFlow's C++ start-up lines are held back; everything else is shown.

While its shared libraries load, TensorFlow 2.21 prints lines a user cannot act
on (``WARNING: All log messages before absl::InitializeLog() ...``, "oneDNN
custom operations are on", ``cpu_feature_guard`` and, on GPU builds,
"Unable to register cuDNN factory"). They are logged through absl before
``absl::InitializeLog()`` runs, and absl then ignores every threshold
(abseil-cpp#1718): measured here, the oneDNN line appears even with
``TF_CPP_MIN_LOG_LEVEL=3``. So setting the log level is not enough, and tfkit:

1. sets ``TF_CPP_MIN_LOG_LEVEL=2`` unless the user set it (hides C++ INFO and
   WARNING lines logged after start-up; errors still show);
2. while ``tensorflow`` is imported for the first time, points file descriptor 2
   at a temporary file and afterwards replays every line except the start-up
   chatter matched by :data:`STARTUP_NOISE`.

Nothing else is filtered: warnings that have a cause in tfkit are fixed at
their cause (e.g. no ``tf.function`` is retraced per fold).

Both steps are skipped when the user set ``TF_CPP_MIN_LOG_LEVEL`` themselves or
``TFKIT_VERBOSE=1``; ``tfkit <command> --verbose`` sets the latter
(:func:`show_everything`). Child processes (tune trials) inherit the choice
through the environment.

Example (``show_everything`` changes this process's environment, so it is not run here)::

    import tfkit       # installs the quiet import (tfkit/__init__.py calls install())
    show_everything()  # what tfkit <command> --verbose does before TensorFlow is imported
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from typing import Any, Iterator

# Set beside TF_CPP_MIN_LOG_LEVEL when tfkit (not the user) chose the level, so a
# child process can tell the two apart.
_MARK = "TFKIT_QUIET_TF_LOG"
VERBOSE_ENV = "TFKIT_VERBOSE"

STARTUP_NOISE = tuple(re.compile(p) for p in (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    # absl-format INFO/WARNING lines (I0000 00:00:1796218391.312143  7673 port.cc:153] ...)
    r"^[IW]\d{4} [\d:.]+\s+\d+ [\w./-]+:\d+\] ",
    # the older TensorFlow format (2025-09-17 14:44:05.157831: I external/...)
    r"^\d{4}-\d\d-\d\d [\d:.]+: [IW] ",
    # continuation of cpu_feature_guard's INFO line
    r"^To enable the following instructions: .*rebuild TensorFlow",
    # duplicate plugin registration on GPU builds: logged as errors, harmless
    r"Unable to register cu(DNN|FFT|BLAS) factory",
))


def is_startup_noise(line: str) -> bool:
    """Whether ``line`` is TensorFlow start-up chatter that tfkit holds back.

    Example:
        >>> is_startup_noise("I0000 00:00:1.5  7673 port.cc:153] oneDNN custom operations are on.")
        True
        >>> is_startup_noise("Traceback (most recent call last):")
        False
    """
    return any(p.search(line) for p in STARTUP_NOISE)


def wanted() -> bool:
    """Whether tfkit should quiet TensorFlow's start-up in this process (see the module docstring)."""
    if os.environ.get(VERBOSE_ENV) == "1":
        return False
    return "TF_CPP_MIN_LOG_LEVEL" not in os.environ or os.environ.get(_MARK) == "1"


def install() -> None:
    """Set the C++ log level and hook the first ``import tensorflow`` (no-op when not :func:`wanted`)."""
    if not wanted():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ[_MARK] = "1"
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())


def show_everything() -> None:
    """Undo :func:`install` (``--verbose``): TensorFlow prints whatever it prints."""
    _uninstall()
    if os.environ.pop(_MARK, None) == "1":
        os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
    os.environ[VERBOSE_ENV] = "1"


@contextlib.contextmanager
def held_stderr() -> Iterator[None]:
    """Send fd 2 to a temporary file for the block, then replay all but :func:`is_startup_noise` lines.

    C++ libraries write to the file descriptor, not to ``sys.stderr``, so the
    descriptor itself is redirected. When fd 2 cannot be duplicated (closed),
    nothing is held back.
    """
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
            kept = "".join(line for line in text.splitlines(keepends=True) if not is_startup_noise(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


_first_compile_done = False


def first_xla_compile() -> None:
    """Run this process's first XLA compilation under :func:`held_stderr` (once; no-op unless :func:`wanted`).

    TensorFlow 2.20 (the version in Kaggle's TPU image) logs ``Compiled cluster
    using XLA!`` (with absl's "before InitializeLog" preamble) at a process's
    first XLA compilation, through absl before ``InitializeLog``, so no log level
    hides it (2.21 does not log it). Compiling a one-op program here uses up that
    once-per-process line. It runs an op, so call it only where TensorFlow's
    runtime is already in use (devices cannot be configured afterwards):
    :func:`tfkit.augment.batch_augmenter` calls it, when a pipeline is built.
    """
    global _first_compile_done
    if _first_compile_done or not wanted():
        return
    _first_compile_done = True
    import tensorflow as tf

    with held_stderr():
        tf.function(lambda x: x + 1.0, jit_compile=True)(tf.constant(1.0))


class _HeldLoader(importlib.abc.Loader):
    """Runs the real loader of ``tensorflow`` inside :func:`held_stderr`, then steps aside."""

    def __init__(self, loader: Any):
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        _uninstall()  # the import happens now: once is enough
        try:
            with held_stderr():
                self._loader.exec_module(module)
        finally:
            # The module keeps its own loader (importlib.resources and pickling look at it).
            module.__loader__ = self._loader
            if getattr(module, "__spec__", None) is not None:
                module.__spec__.loader = self._loader

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _QuietImport(importlib.abc.MetaPathFinder):
    """Import hook: the first ``import tensorflow`` runs under :func:`held_stderr`.

    It stays installed until that import executes: a mere
    ``importlib.util.find_spec("tensorflow")`` (tfkit.records asks where
    TensorFlow's library lies) must not use it up.
    """

    def __init__(self) -> None:
        self._finding = False

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "tensorflow" or self._finding:
            return None
        self._finding = True  # the real finders answer the nested lookup
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._finding = False
        if spec is not None and spec.loader is not None:
            spec.loader = _HeldLoader(spec.loader)
        return spec


def _uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietImport)]
