#!/usr/bin/env bash
# Smoke run in a stand-in for Kaggle's TPU image (Kaggle/docker-python tpu/, snapshot 2026-08):
# Python 3.12 with tensorflow-cpu 2.20.0, jax and Keras 3 preinstalled. Then, as a Kaggle user would:
#   1. pip install tfkit into it: no preinstalled TensorFlow / JAX / Keras / tensorboard may change;
#   2. build records of the embedded digits, train 2 folds on JAX over 2 forced host devices
#      (the CPU stands in for the v5e-8's chips: same code path, keras DataParallel);
#   3. predict with TTA on JAX;
#   4. load the same run on TensorFlow, predict again and compare (within 1e-3);
#   5. none of these commands printed a TensorFlow C++ line (run as a new user: no TF_CPP_MIN_LOG_LEVEL).
# .ci/run runs it after the test suite (the venv downloads ~600 MB: ~3 min, the run ~3 min).
#   bash bench/kaggle_tpu_smoke.sh    # PY=/path/to/python3.12 VENV=/tmp/kaggle_tpu_venv KEEP=1 (reuse it) TTA=4 EPOCHS=3
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# A candidate counts only if it runs and is 3.12: a pyenv shim named python3.12 sits on PATH
# even when pyenv's selected version is another one, and then fails when called.
is_312() { [ -n "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1; }
if [ -z "${PY:-}" ]; then
  PYENV_DIR=${PYENV_ROOT:-${HOME:-/root}/.pyenv}
  for cand in "$(command -v python3.12 || true)" /usr/bin/python3.12 /usr/local/bin/python3.12 \
              "$PYENV_DIR"/versions/3.12*/bin/python3.12 /root/.pyenv/versions/3.12*/bin/python3.12; do
    if is_312 "$cand"; then PY=$cand; break; fi
  done
fi
if ! is_312 "${PY:-}"; then
  echo "kaggle_tpu_smoke: no working Python 3.12 found (tried python3.12 on PATH, /usr/bin, /usr/local/bin and pyenv's versions); set PY=/path/to/python3.12" >&2
  exit 2
fi
VENV=${VENV:-/tmp/kaggle_tpu_venv}
WORK=$(mktemp -d /tmp/kaggle_tpu_smoke.XXXXXX)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
unset TF_CPP_MIN_LOG_LEVEL TFKIT_VERBOSE  # as a new user runs it: tfkit's own quiet start-up
t0=$(date +%s)
step() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

if [ ! -x "$VENV/bin/python" ] || [ -z "${KEEP:-}" ]; then
  step "the image: $("$PY" --version), tensorflow-cpu==2.20.0, jax[cpu], keras>3"
  rm -rf "$VENV" && "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q "tensorflow-cpu==2.20.0" "jax[cpu]" "keras>3"
fi
. "$VENV/bin/activate"
frozen() { pip freeze | grep -iE '^(tensorflow|tensorflow[-_]cpu|tensorboard|jax|jaxlib|keras|numpy)==' | sort; }
frozen > "$WORK/before.txt"
step "pip install tfkit (no extras: the image's TensorFlow and JAX must stay)"
pip install -q "$ROOT"
frozen > "$WORK/after.txt"
if ! diff "$WORK/before.txt" "$WORK/after.txt"; then
  echo "FAIL: installing tfkit changed the image's packages (above)" >&2
  exit 1
fi
echo "unchanged: $(tr '\n' ' ' < "$WORK/after.txt")"
cd "$WORK"  # run the installed tfkit, not the checkout

step "records of the digits (16 px, 5 folds)"
tfkit datasets export digits --out data >/dev/null
tfkit build-records --csv data/train.csv --images data/images --out records --size 16 --folds 5 >/dev/null
tfkit build-records --csv data/test.csv --images data/images --out test_records --size 16 --split test \
  --classes-from records/manifest.json >/dev/null

TTA=${TTA:-4}
CFG=(--config "$ROOT/tfkit/configs/digits.yaml" --set train.epochs="${EPOCHS:-3}" --set train.verbose=0)
step "train folds 0,1 on JAX, 2 host devices"
XLA_FLAGS=--xla_force_host_platform_device_count=2 tfkit train --backend jax --records records --out run \
  --folds 0,1 "${CFG[@]}" 2> train.err; cat train.err >&2
step "TTA predict on JAX"
XLA_FLAGS=--xla_force_host_platform_device_count=2 tfkit predict --backend jax --run run --records test_records \
  --tta "$TTA" --set predict.tta_mode=flips --out sub_jax.csv 2> predict_jax.err; cat predict_jax.err >&2
step "the same run on TensorFlow"
tfkit predict --backend tensorflow --run run --records test_records --tta "$TTA" --set predict.tta_mode=flips \
  --out sub_tf.csv 2> predict_tf.err; cat predict_tf.err >&2
if grep -nE 'absl::InitializeLog|^[IWE][0-9]{4} [0-9:.]+ +[0-9]+ [^ ]+:[0-9]+\]|oneDNN custom operations|cpu_feature_guard' \
    train.err predict_jax.err predict_tf.err >&2; then
  echo "FAIL: TensorFlow C++ lines reached a new user's terminal (above)" >&2
  exit 1
fi
echo "no TensorFlow C++ line in the output of train and the two predicts"
python - <<'PY'
import json
import numpy as np, pandas as pd
a, b = pd.read_csv("sub_jax.csv", dtype={"id": str}), pd.read_csv("sub_tf.csv", dtype={"id": str})
assert a["id"].tolist() == b["id"].tolist()
diff = float(np.abs(a.iloc[:, 1:].to_numpy() - b.iloc[:, 1:].to_numpy()).max())
done = [json.load(open(f"run/fold{k}/done.json")) for k in (0, 1)]
print(f"runtime: {json.dumps(done[0]['runtime'])}")
print(f"folds 0,1 accuracy on JAX: {[round(d['metrics']['accuracy'], 4) for d in done]}; "
      f"train time {[d['seconds'] for d in done]} s")
print(f"max |p_jax - p_tf| over {len(a)} test images x {a.shape[1] - 1} classes: {diff:.2e}")
assert done[0]["runtime"]["backend"] == "jax" and done[0]["runtime"]["devices"] == 2
assert diff < 1e-3, diff
PY
step "OK (work folder $WORK)"
