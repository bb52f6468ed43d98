"""The project's promises about itself: CI runs the README's test command, the
CLI documents every option, and the version is reported."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tfkit import __version__
from tfkit.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _readme_setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", section, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_gives_exactly_two_setup_commands_and_ci_runs_the_test_one():
    commands = _readme_setup_commands()
    assert len(commands) == 2, commands
    demo, tests = commands
    assert "tfkit demo" in demo
    assert "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert tests in ci, "the README's test command must appear verbatim in .ci/run"


def test_ci_treats_no_tests_collected_as_failure():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r'"\$rc" -eq 5', ci) and "exit 1" in ci


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"tfkit {__version__}"


def _subcommands(parser):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subcommands(sub))


def test_every_command_and_option_has_help():
    commands = dict(_subcommands(build_parser()))
    expected = {"datasets", "datasets export", "folds", "build-records", "show", "train", "lr-find",
                "schedule", "tune", "predict", "report", "demo"}
    assert expected <= set(commands)
    for name, sub in commands.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"tfkit {name} {action.option_strings[0]} has no help text"


def test_console_script_help_runs_without_tensorflow():
    # --help must not pay TensorFlow's import time.
    code = "import sys; from tfkit.cli import main\ntry:\n main(['train','--help'])\nexcept SystemExit: pass\nprint('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_user_error_exits_2_with_one_line(tmp_path, capsys):
    rc = main(["train", "--records", str(tmp_path), "--out", str(tmp_path / "run"), "--set", "train.nope=1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("tfkit: error: ") and "train.nope" in err and "\n" not in err


def _install_requires() -> list[str]:
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    return [r.strip() for r in cfg["options"]["install_requires"].splitlines() if r.strip()]


def test_install_replaces_nothing_in_kaggles_tpu_image():
    # Kaggle's TPU image (2026-08): Python 3.12, tensorflow-cpu 2.20.0 (which pins tensorboard~=2.20.0),
    # jax[tpu], keras 3. A plain `pip install tfkit-vision` must accept all of them as they are.
    from packaging.requirements import Requirement

    reqs = {Requirement(r).name.lower(): Requirement(r) for r in _install_requires()}
    assert not {"tensorflow", "tensorflow-cpu", "jax", "jaxlib"} & set(reqs)  # only through extras
    # tensorboard as tensorflow-cpu 2.20 pins it; keras and numpy: the oldest the image could plausibly hold
    image = {"keras": "3.10.0", "tensorboard": "2.20.0", "numpy": "2.0.2"}
    for name, version in image.items():
        assert reqs[name].specifier.contains(version), f"{reqs[name]} would replace {name} {version}"


def _option(command: str, dest: str):
    sub = dict(_subcommands(build_parser()))[command]
    return next(a for a in sub._actions if a.dest == dest)


def test_cli_choices_and_defaults_are_the_owning_modules_constants():
    # The CLI copies no list by hand: each choice list is the constant of the module that owns it.
    from tfkit.backend import BACKENDS
    from tfkit.clean import clean
    from tfkit.datasets import DATASETS
    from tfkit.demo import DEMO_TASKS, demo
    from tfkit.ensemble import DEFAULT_METHOD, GREEDY_STEPS, METHODS
    from tfkit.folds import DEFAULT_BINS
    from tfkit.records.images import VERIFY_MODES
    from tfkit.records.spec import SPLITS, BuildSpec
    from tfkit.report_page import DEFAULT_FORMAT, FORMATS
    from tfkit.search_space import DEFAULT_TUNER, TUNERS

    same = [("tune", "tuner", TUNERS, DEFAULT_TUNER), ("ensemble", "method", METHODS, DEFAULT_METHOD),
            ("report", "format", FORMATS, DEFAULT_FORMAT), ("build-records", "split", SPLITS, BuildSpec.split),
            ("build-records", "verify", VERIFY_MODES, BuildSpec.verify), ("train", "backend", BACKENDS, None)]
    for command, dest, constant, default in same:
        action = _option(command, dest)
        assert action.choices is constant, f"tfkit {command} --{dest}"
        assert action.default == default, f"tfkit {command} --{dest}"
    assert _option("datasets export", "name").choices == list(DATASETS)
    assert _option("demo", "task").choices == list(DEMO_TASKS)
    assert _option("demo", "task").default == inspect.signature(demo).parameters["task"].default
    assert _option("ensemble", "steps").default == GREEDY_STEPS
    assert _option("folds", "bins").default == DEFAULT_BINS
    assert _option("clean", "threshold").default == inspect.signature(clean).parameters["threshold"].default
    for dest, field in [("quality", "quality"), ("shard_size", "shard_size"), ("folds", "n_folds"), ("seed", "seed")]:
        assert _option("build-records", dest).default == getattr(BuildSpec, field), f"build-records {dest}"


def test_tfkit_help_of_every_command_imports_no_tensorflow():
    code = ("import sys; from tfkit.cli import main\n"
            "for c in ['tune', 'ensemble', 'report', 'build-records', 'folds', 'clean', 'demo']:\n"
            " try:\n  main([c, '--help'])\n except SystemExit: pass\n"
            "print(sorted(m for m in ('tensorflow', 'keras', 'jax', 'keras_tuner') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
