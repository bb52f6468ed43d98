"""tfkit.scheduler: the shape of every schedule, XLA compilation, serialisation, plot."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from tfkit.cli import main as cli_main
from tfkit.config import TrainConfig
from tfkit.scheduler import (
    ONECYCLE_DIV,
    SCHEDULES,
    TfkitSchedule,
    create_schedule,
    plot_schedule,
    schedule_callbacks,
    schedule_values,
)
from tfkit.utils import TfkitError


def cfg(**kw):
    base = dict(epochs=10, lr=1e-2, min_lr=1e-4, warmup_epochs=2)
    base.update(kw)
    return TrainConfig(**base)


@settings(max_examples=25, deadline=None)
@given(
    spe=st.integers(1, 20),
    epochs=st.integers(3, 12),
    warm=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    lr=st.floats(1e-4, 1.0),
    ratio=st.floats(0.0, 0.5),
)
def test_warmup_cosine_shape(spe, epochs, warm, lr, ratio):
    c = cfg(schedule="cosine", epochs=epochs, warmup_epochs=warm, lr=lr, min_lr=lr * ratio)
    v = schedule_values(c, spe).astype(np.float64)
    w = int(round(warm * spe))
    assert len(v) == epochs * spe
    if w:
        assert np.all(np.diff(v[:w]) > 0)  # warmup strictly up
        assert v[w - 1] == pytest.approx(lr, rel=1e-5)
    assert v.max() == pytest.approx(lr, rel=1e-5)  # the peak is lr, never above
    assert np.all(np.diff(v[w:]) <= 1e-7 * lr)  # then non-increasing
    assert v[-1] == pytest.approx(lr * ratio, rel=1e-4, abs=1e-7 * lr)  # ends at min_lr


def test_onecycle_shape():
    v = schedule_values(cfg(schedule="onecycle", warmup_epochs=0), 10)
    w = int(round(0.3 * 100))
    assert v[0] == pytest.approx(1e-2 / ONECYCLE_DIV, rel=1e-5)
    assert int(np.argmax(v)) == w - 1 and v.max() == pytest.approx(1e-2, rel=1e-6)
    assert np.all(np.diff(v[:w]) > 0) and np.all(np.diff(v[w:]) <= 0)
    assert v[-1] == pytest.approx(1e-4, rel=1e-4)


@pytest.mark.parametrize("mult", [1.0, 2.0, 1.5])
def test_cosine_restarts_restart_at_the_right_steps(mult):
    spe, warm, first = 4, 1, 2  # warmup 4 steps, first cycle 8 steps
    c = cfg(schedule="cosine_restarts", epochs=30, warmup_epochs=warm, restart_epochs=first, restart_mult=mult)
    v = schedule_values(c, spe)
    starts, s, length = [], warm * spe, float(first * spe)
    while s < len(v):
        starts.append(int(round(s)))
        s += length
        length *= mult
    # lr exactly at each cycle start, strictly below just before it, decreasing inside a cycle
    for i, s in enumerate(starts):
        assert v[s] == pytest.approx(1e-2, rel=1e-6), (i, s)
        if i:
            assert v[s - 1] < 0.5 * 1e-2
    bounds = starts + [len(v)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        assert np.all(np.diff(v[a:b]) < 0)
    # cycle lengths follow the multiplier
    lengths = np.diff(starts)
    np.testing.assert_allclose(lengths[1:] / lengths[:-1], mult, rtol=0.1)
    # exact restart points are where the value jumps up
    jumps = [i + 1 for i in np.flatnonzero(np.diff(v) > 0) if i + 1 >= warm * spe]
    assert jumps == starts[1:]


def test_rampup_sustain_then_exponential_decay_per_epoch():
    spe = 5
    c = cfg(schedule="rampup", epochs=12, warmup_epochs=3, sustain_epochs=2, decay=0.7, lr=1e-3, min_lr=1e-5)
    v = schedule_values(c, spe).astype(np.float64)
    ramp, sustain = 3 * spe, 2 * spe
    assert np.all(np.diff(v[:ramp]) > 0)
    np.testing.assert_allclose(v[ramp - 1: ramp + sustain + 1], 1e-3, rtol=1e-6)  # flat at the peak
    at_epochs = v[ramp + sustain::spe]  # value at the start of each decay epoch
    ratios = (at_epochs[1:] - 1e-5) / (at_epochs[:-1] - 1e-5)
    np.testing.assert_allclose(ratios, 0.7, rtol=1e-3)
    assert np.all(np.diff(v[ramp + sustain:]) < 0) and v.min() > 1e-5


@pytest.mark.parametrize("height_decay", [1.0, 0.5])
def test_cyclic_triangles_between_min_lr_and_lr(height_decay):
    spe, lo, hi = 4, 1e-4, 1e-2
    c = cfg(schedule="cyclic", epochs=9, warmup_epochs=1, cycle_epochs=2, cycle_decay=height_decay, lr=hi, min_lr=lo)
    v = schedule_values(c, spe).astype(np.float64)[spe:]  # after warmup
    cycle = 2 * spe
    for i in range(len(v) // cycle):
        tri = v[i * cycle:(i + 1) * cycle]
        peak = lo + (hi - lo) * height_decay**i
        assert tri[0] == pytest.approx(lo, rel=1e-5)  # each cycle starts at the trough
        assert tri.max() == pytest.approx(peak, rel=1e-5)  # ... and peaks mid-cycle
        assert int(np.argmax(tri)) == cycle // 2
        assert np.all(np.diff(tri[: cycle // 2 + 1]) > 0) and np.all(np.diff(tri[cycle // 2:]) < 0)


def test_constant_and_plateau():
    v = schedule_values(cfg(schedule="constant", warmup_epochs=0), 3)
    np.testing.assert_allclose(v, 1e-2, rtol=1e-6)
    p = cfg(schedule="plateau", plateau_factor=0.3, plateau_patience=4, monitor="val_accuracy")
    assert create_schedule(p, 10) == 1e-2  # a float: ReduceLROnPlateau cannot change a schedule
    (cb,) = schedule_callbacks(p)
    assert isinstance(cb, keras.callbacks.ReduceLROnPlateau)
    assert (cb.factor, cb.patience, cb.min_lr, cb.monitor, cb.mode) == (0.3, 4, 1e-4, "val_accuracy", "max")
    assert schedule_callbacks(cfg(schedule="cosine")) == []
    opt = keras.optimizers.Adam(create_schedule(p, 10))
    opt.learning_rate = 1e-3  # what ReduceLROnPlateau does: must be allowed
    assert float(opt.learning_rate) == pytest.approx(1e-3)


@pytest.mark.parametrize("kind", [k for k in SCHEDULES if k != "plateau"])
def test_xla_matches_eager_and_serialises(kind):
    c = cfg(schedule=kind, epochs=6, restart_epochs=1, sustain_epochs=1)
    sched = create_schedule(c, 7)
    steps = tf.range(42, dtype=tf.int64)
    eager = schedule_values(c, 7)
    xla = tf.function(lambda s: tf.map_fn(sched, s, fn_output_signature=tf.float32), jit_compile=True)(steps)
    np.testing.assert_allclose(xla.numpy(), eager, rtol=1e-5)
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(sched))
    assert isinstance(again, TfkitSchedule) and again.get_config() == sched.get_config()
    # The optimizer reads it at its iteration counter.
    opt = keras.optimizers.AdamW(sched)
    assert float(opt.learning_rate) == pytest.approx(float(eager[0]), rel=1e-6)


def test_schedule_inside_a_compiled_model_fit():
    c = cfg(schedule="cosine", epochs=2, warmup_epochs=1)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    opt = keras.optimizers.SGD(create_schedule(c, 4))
    model.compile(opt, "mse", jit_compile=True)
    model.fit(np.ones((8, 3)), np.ones((8, 1)), batch_size=2, epochs=1, verbose=0)
    assert int(opt.iterations) == 4
    assert float(opt.learning_rate) == pytest.approx(float(schedule_values(c, 4)[4]), rel=1e-6)


def test_errors():
    with pytest.raises(TfkitError, match="unknown schedule"):
        create_schedule(cfg(schedule="linear"), 10)
    with pytest.raises(TfkitError, match="min_lr"):
        create_schedule(cfg(lr=1e-4, min_lr=1e-3), 10)
    with pytest.raises(TfkitError, match="steps_per_epoch"):
        create_schedule(cfg(), 0)


def test_plot_schedule_png_and_cli(tmp_path, capsys):
    out = plot_schedule(cfg(schedule="cosine_restarts", restart_epochs=2), 10, tmp_path / "lr.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr.png"]  # no temp file left
    rc = cli_main(["schedule", "--steps-per-epoch", "5", "--out", str(tmp_path / "c.png"),
                   "--set", "train.schedule=rampup", "--set", "train.epochs=4"])
    assert rc == 0 and (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert cli_main(["schedule", "--out", str(tmp_path / "d.png"), "--set", "train.schedule=nope"]) == 2
