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
    save_config,
)


def test_empty_file_is_the_defaults(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("")
    assert load_config(p) == Config()


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
    with pytest.raises(yaml.YAMLError):
        load_config(p)


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
