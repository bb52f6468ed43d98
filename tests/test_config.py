"""The config object: defaults, YAML, --set overrides, presets, errors, saving."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tfkit.config import (
    AUGMENT_PRESETS,
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    load_config,
    resolve_tta_mode,
    save_config,
)


def test_empty_file_is_the_defaults(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("")
    defaults = Config()
    defaults.predict.tta_mode = resolve_tta_mode(defaults.augment)  # "auto" is made concrete at load
    assert load_config(p) == defaults and defaults.predict.tta_mode == "augment"


def test_yaml_then_overrides_win(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: 7\n  lr: 0.01\nmodel:\n  name: efficientnet_b0\n")
    cfg = load_config(p, ["train.lr=3e-4", "data.metadata=[age, sex]"])
    assert cfg.train.epochs == 7
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.model.name == "efficientnet_b0"
    assert cfg.data.metadata == ["age", "sex"]


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.lrr=1", "unknown config key 'train.lrr'"),
        ("nosuch.key=1", "unknown config key 'nosuch'"),
        ("train.epochs=abc", "train.epochs: expected an integer"),
        ("train.epochs=2.5", "train.epochs: expected an integer"),
        ("data.cache=3", "data.cache: expected true or false"),
        ("augment.preset=bogus", "unknown preset 'bogus'"),
        ("train.epochs", "--set expects key=value"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_key_in_file_names_it(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("augment:\n  hue_probability: 0.5\n")
    with pytest.raises(ConfigError, match="augment.hue_probability"):
        load_config(p)


def test_yaml_is_loaded_safely(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="invalid YAML at line 1 .*constructor") as e:
        load_config(p)
    assert "\n" not in str(e.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("preset", sorted(AUGMENT_PRESETS))
def test_presets_apply_and_explicit_keys_override_them(preset):
    cfg = load_config(None, [f"augment.preset={preset}", "augment.cutout_p=0.125"])
    for key, value in AUGMENT_PRESETS[preset].items():
        if key != "cutout_p":
            assert getattr(cfg.augment, key) == pytest.approx(value)
    assert cfg.augment.cutout_p == 0.125


def test_dihedral_is_off_for_digits_and_on_for_lesions():
    assert load_config(None, ["augment.preset=digits"]).augment.dihedral_p == 0.0
    assert load_config(None, ["augment.preset=lesion"]).augment.dihedral_p == 1.0


@settings(max_examples=30, deadline=None)
@given(
    epochs=st.integers(1, 1000),
    lr=st.floats(1e-7, 10, allow_nan=False),
    size=st.integers(8, 1024),
    folds=st.none() | st.lists(st.integers(0, 9), max_size=5),
)
def test_save_then_load_round_trips(tmp_path_factory, epochs, lr, size, folds):
    cfg = config_from_dict({"train": {"epochs": epochs, "lr": lr, "folds": folds}, "data": {"image_size": size}})
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert config_to_dict(again) == dataclasses.asdict(cfg)
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temp file left


# --------------------------------------------------------------------------- --set and YAML errors


def test_set_takes_several_pairs_after_one_flag_and_repeated_flags():
    from tfkit.cli import build_parser

    args = build_parser().parse_args(["train", "--out", "r", "--set", "train.lr=3e-4", "train.metrics=[accuracy,f1]",
                                      "--set", "data.image_size=48", "--folds", "0,1"])
    assert args.overrides == ["train.lr=3e-4", "train.metrics=[accuracy,f1]", "data.image_size=48"]
    assert args.folds == [0, 1]
    cfg = load_config(None, args.overrides)
    assert (cfg.train.lr, cfg.train.metrics, cfg.data.image_size) == (3e-4, ["accuracy", "f1"], 48)


@pytest.mark.parametrize("text, line", [
    ("train:\n  lr: 0.1\n  epochs: [1,\n", 4),
    ("train:\n  lr: 0.1\n bad: 1\n", 3),
    ("data:\n\timage_size: 3\n", 2),
])
def test_yaml_syntax_error_in_a_file_is_one_line_with_its_line(tmp_path, text, line):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg and f"line {line}" in msg


def test_non_utf8_config_is_one_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"train:\n  lr: 0.1 # caf\xe9\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 22\)") as e:
        load_config(p)
    assert "\n" not in str(e.value)


@given(st.text(alphabet="[]{},:'\"abc12 ", min_size=1, max_size=12))
@settings(max_examples=60, deadline=None)
def test_any_set_value_parses_or_fails_in_one_line(value):
    # Whatever a user types after '=', the result is a config or one ConfigError line, never a traceback.
    try:
        load_config(None, [f"train.metrics={value}"])
    except ConfigError as e:
        assert "\n" not in str(e)


def test_set_without_key_or_equals_is_refused():
    for text in ("=3", "train.lr"):
        with pytest.raises(ConfigError, match="--set expects key=value"):
            load_config(None, [text])


def test_bare_off_is_the_word_for_string_keys():
    assert load_config(None, ["train.mixed_precision=off"]).train.mixed_precision == "off"
