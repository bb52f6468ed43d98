"""The whole config is checked before any work: one-line errors naming the key, nothing left behind."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfkit.checks import monitor_names, validate
from tfkit.cli import main
from tfkit.config import load_config
from tfkit.manifest import Manifest
from tfkit.records import load_manifest
from tfkit.utils import TfkitError

TINY = ["data.image_size=16", "data.batch_size=8", "model.name=small_cnn", "model.width=4", "train.epochs=1",
        "train.verbose=0", "train.warmup_epochs=0"]

# (overrides, key the message names, a fragment of what it says was expected)
BAD = [
    (["model.name=resnet51"], "model.name", "small_cnn"),
    (["train.loss=hinge"], "train.loss", "crossentropy"),
    (["train.optimizer=rmsprop"], "train.optimizer", "adamw"),
    (["model.pooling=sum"], "model.pooling", "gem"),
    (["train.metrics=[accuracy, top5]"], "train.metrics", "log_loss"),
    (["train.schedule=linear"], "train.schedule", "onecycle"),
    (["train.lr=0"], "train.lr", "lr > 0"),
    (["train.lr=-1e-3"], "train.lr", "lr > 0"),
    (["train.lr=.nan"], "train.lr", "lr > 0"),
    (["train.epochs=0"], "train.epochs", ">= 1"),
    (["data.image_size=0"], "data.image_size", "at least 8"),
    (["data.batch_size=0"], "data.batch_size", "positive"),
    (["model.dropout=1.0"], "model.dropout", "[0, 1)"),
    (["model.dropout=-0.5"], "model.dropout", "[0, 1)"),
    (["augment.mixup_p=0.6", "augment.cutmix_p=0.6"], "augment.mixup_p + augment.cutmix_p", "<= 1"),
    (["train.monitor=val_top5"], "train.monitor", "val_accuracy"),
    (["train.monitor=val_rmse"], "train.monitor", "val_loss"),  # rmse is not logged for a multiclass run
    (["train.mixed_precision=float8"], "train.mixed_precision", "bfloat16"),
    (["data.augment_on=gpu"], "data.augment_on", "host or device"),
    (["train.swa_epochs=5"], "train.swa_epochs", "train.epochs=1"),
    (["train.class_weight=inverse"], "train.class_weight", "balanced"),
    (["train.ema=1.5"], "train.ema", "(0, 1)"),
    (["train.loss=mse"], "train.loss", "regression"),
    (["train.progressive=[[1, 4]]"], "train.progressive", "size >= 8"),
    (["model.task=ordinal"], "model.task", "multiclass"),
    (["model.head=cosface"], "model.head", "arcface"),
    (["model.head=arcface", "model.arcface_margin=2.0"], "model.arcface_margin", "[0, pi/2)"),
    (["model.head=arcface", "model.arcface_scale=0"], "model.arcface_scale", "positive"),
]


@pytest.fixture(scope="module")
def manifest(small_records):
    return Manifest.from_dict(load_manifest(small_records))


@pytest.mark.parametrize("overrides, key, expected", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_value_is_one_line_naming_the_key(overrides, key, expected, manifest):
    cfg = load_config(None, [*TINY, *overrides])
    with pytest.raises(TfkitError) as e:
        validate(cfg, manifest)
    message = str(e.value)
    assert "\n" not in message and message.startswith(key), message
    assert expected in message, message


def test_good_config_and_replicas(manifest):
    validate(load_config(None, TINY), manifest)
    validate(load_config(None, [*TINY, "train.sam_rho=0.05"]), manifest, replicas=1)
    with pytest.raises(TfkitError, match=r"^train.sam_rho > 0 runs on one TensorFlow replica only"):
        validate(load_config(None, [*TINY, "train.sam_rho=0.05"]), manifest, replicas=2)


def test_predict_section_checked_when_predicting(manifest):
    cfg = load_config(None, [*TINY, "predict.tta_mode=rotations"])
    validate(cfg, manifest)  # training ignores the predict section
    for bad, key in ((["predict.tta_mode=rotations"], "predict.tta_mode"),
                     (["predict.tta=9", "predict.tta_mode=dihedral"], "predict.tta=9"),
                     (["predict.tta=9", "augment.dihedral_p=0.5"], "predict.tta=9"),  # auto -> dihedral
                     (["predict.output=csv"], "predict.output"), (["predict.fold_weights=auc"], "predict.fold_weights")):
        with pytest.raises(TfkitError, match=f"^{key}"):
            validate(load_config(None, [*TINY, *bad]), manifest, predicting=True)


@settings(max_examples=40, deadline=None)
@given(dihedral=st.sampled_from([0.0, 0.5, 1.0]), hflip=st.sampled_from([0.0, 0.5]),
       vflip=st.sampled_from([0.0, 0.5]), explicit=st.sampled_from([None, "flips", "augment", "five_crop"]))
def test_auto_tta_views_are_those_training_drew(dihedral, hflip, vflip, explicit):
    overrides = [f"augment.dihedral_p={dihedral}", f"augment.hflip_p={hflip}", f"augment.vflip_p={vflip}"]
    cfg = load_config(None, overrides + ([f"predict.tta_mode={explicit}"] if explicit else []))
    if explicit:  # an explicit choice is kept
        assert cfg.predict.tta_mode == explicit
    elif dihedral:  # dihedral views only for a model trained on the 8 symmetries
        assert cfg.predict.tta_mode == "dihedral"
    else:  # no rotation by 90 degrees was ever seen: flips when both flips were drawn, else the training passes
        assert cfg.predict.tta_mode == ("flips" if hflip and vflip else "augment")


def test_auto_tta_mode_resolves_from_a_runs_own_augmentation(tmp_path):
    from tfkit.config import save_config

    path = tmp_path / "config.yaml"
    save_config(load_config(None, ["augment.preset=digits", "predict.tta_mode=auto"]), path)
    assert "tta_mode: augment" in path.read_text()  # the run folder records the concrete views
    # predict --set predict.tta_mode=auto on a run resolves against that run's augment section
    assert load_config(path, ["predict.tta_mode=auto"]).predict.tta_mode == "augment"
    assert load_config(path, ["predict.tta_mode=auto", "augment.dihedral_p=1"]).predict.tta_mode == "dihedral"


def test_monitor_names_follow_the_task():
    assert monitor_names(["accuracy", "qwk", "rmse"], "regression", 5) == ["loss", "val_loss", "qwk", "val_qwk",
                                                                           "rmse", "val_rmse"]
    assert "val_rmse" not in monitor_names(["accuracy", "rmse"], "binary", 2)


@pytest.mark.parametrize("overrides, key, expected", BAD[::4], ids=[" ".join(b[0]) for b in BAD[::4]])
def test_train_cli_exits_2_and_writes_nothing(overrides, key, expected, small_records, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--records", str(small_records), "--out", str(out)]
    rc = main([*argv, *sum((["--set", s] for s in [*TINY, *overrides]), [])])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(f"tfkit: error: {key}") and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_lr_find_and_tune_write_nothing_on_a_bad_config(small_records, tmp_path, capsys):
    bad = ["--set", "train.optimizer=rmsprop", *sum((["--set", s] for s in TINY), [])]
    assert main(["lr-find", "--records", str(small_records), "--out", str(tmp_path / "lr"), *bad]) == 2
    space = tmp_path / "space.yaml"
    space.write_text("train.lr: {choice: [0.01, 0.001]}\n")
    assert main(["tune", "--records", str(small_records), "--space", str(space), "--out", str(tmp_path / "tune"),
                 *bad]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]
    assert capsys.readouterr().err.count("tfkit: error: train.optimizer") == 2
