#!/usr/bin/env bash
# One call on a GPU machine that has JAX but no TensorFlow: the Fashion-MNIST accuracy recipe, then the
# throughput benchmark against torch.compile. Everything it prints and writes lands in $OUT.
#
#   bash benchmarks/gpu_run.sh                   # on the GPU: flags/fashion_mnist_gpu.cfg, then gpu_benchmark.py
#   bash benchmarks/gpu_run.sh --only=recipe     # one half (recipe or benchmark), for a 10-minute call limit
#   bash benchmarks/gpu_run.sh --smoke           # anywhere (CPU): tiny shapes, a few steps; checks it runs
#   RECIPE_FLAGS="--train_epochs=80" bash benchmarks/gpu_run.sh --only=recipe    # the recipe, changed
#   RECIPE_TRAIN_S=240 bash benchmarks/gpu_run.sh --only=recipe   # fit the epochs to 240 s of training, not 285
#   BENCH_FLAGS="--xla_variant=NAME=XLA_FLAGS" bash benchmarks/gpu_run.sh --only=benchmark   # A/B XLA flags
#
# Unless RECIPE_FLAGS names --train_epochs, the recipe's epoch count is fitted to the training-time budget
# (RECIPE_TRAIN_S, 285 s: the 5-minute target with a margin) from a 2-epoch calibration run on the same GPU:
# its first epoch's extra time (compilation) and its second epoch's ms a step (Keras's own epoch line), less 8%
# for the kNN curve and checkpoints of the real run. The arithmetic is in $OUT/train_epochs.txt.
#
# It needs in the working tree what benchmarks/prepare_gpu_carry.sh prepares: Keras's wheels in .whl/
# (keras 3.15.1, namex 0.1.0, optree 0.20.0; installed with pip --no-index into /tmp/site) unless Keras is
# installed, and Fashion-MNIST's four idx files in .data/fashion-mnist/ unless /usr/share/datasets/fashion-mnist
# exists.
# TensorFlow is blocked from import in every process (tests/training/without_tensorflow.py's check, as a
# module on PYTHONPATH), so a run here behaves as on the GPU machine. Results: $OUT/calibration.log,
# train_epochs.txt, recipe.log, feature_eval.json, learning_curve.json/.png, train_wall_s.txt,
# gpu_benchmark.txt/.json, versions.txt, trace/ (a profiler trace of the synthetic step) and trace_summary.txt
# (its device time by kernel kind).
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=0 ONLY=all
for arg in "$@"; do
  case $arg in
    --smoke) SMOKE=1 ;;
    --only=recipe|--only=benchmark) ONLY=${arg#--only=} ;;
    *) echo "gpu_run: unknown argument $arg (use --smoke, --only=recipe or --only=benchmark)" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 KERAS_BACKEND=jax TF_CPP_MIN_LOG_LEVEL=2
PY=${PYTHON:-python3}

if [ -d .whl ] && ! "$PY" -c "import keras" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_run: installing the carried wheels failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# A `tensorflow` that cannot be imported, first on the path: every process sees a machine without it.
BLOCK=$(mktemp -d)
for name in tensorflow tensorflow_datasets tensorflow_hub; do
  mkdir -p "$BLOCK/$name" && echo 'raise ImportError("TensorFlow is blocked: this run must not need it")' \
    > "$BLOCK/$name/__init__.py"
done
export PYTHONPATH=$PWD:$BLOCK${PYTHONPATH:+:$PYTHONPATH}

DATA=.data/fashion-mnist
[ -d "$DATA" ] || DATA=/usr/share/datasets/fashion-mnist
{ date -u +%Y-%m-%dT%H:%M:%SZ; git rev-parse HEAD 2>/dev/null || echo "(no git)"
  "$PY" -c "import sys, jax, keras, numpy; print('python', sys.version.split()[0], '| jax', jax.__version__, \
'| keras', keras.__version__, '| numpy', numpy.__version__); print(jax.devices())"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "(no nvidia-smi)"
} | tee "$OUT/versions.txt"

RECIPE_STATUS=skipped BENCH_STATUS=skipped
# ---- 1. Accuracy: the recipe, timed; its reports copied to $OUT (checkpoints stay behind).
if [ $ONLY != benchmark ]; then
RUN=$(mktemp -d)/fashion_mnist_gpu
read -r -a EXTRA <<< "${RECIPE_FLAGS:-}"
if [ $SMOKE = 1 ]; then
  EXTRA+=(--train_steps=6 --checkpoint_steps=3 --train_batch_size=64 --width_multiplier=0.125 --image_size=16
         --precision=float32 --knn_monitor_examples=500 --feature_eval_examples=1000)
fi
if [[ " ${EXTRA[*]} " != *" --train_epochs="* ]]; then
  # Calibration: the recipe for 2 epochs, a checkpoint after each, no kNN curve and no report.
  "$PY" run.py --flagfile=flags/fashion_mnist_gpu.cfg --dataset="idx:$DATA" --model_dir="$(mktemp -d)/calibration" \
    "${EXTRA[@]}" --train_epochs=2 --warmup_epochs=1 --checkpoint_epochs=1 --knn_monitor_examples=0 \
    --feature_eval=False 2>&1 | tee "$OUT/calibration.log"
  EPOCHS=$("$PY" - "$OUT/calibration.log" "${RECIPE_TRAIN_S:-285}" $SMOKE <<'PY' | tee "$OUT/train_epochs.txt" | tail -1
import re, sys
log, budget, smoke = open(sys.argv[1]).read(), float(sys.argv[2]), sys.argv[3] == "1"
unit = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
# Keras's epoch line under verbose=2: "117/117 - 38s - 325ms/step - contrast_loss: ..."
epochs = [(int(steps), float(total), float(per) * unit[u]) for steps, total, per, u in
          re.findall(r"(\d+)/\d+ - (\d+)s - (\d+(?:\.\d+)?)(us|ms|s)/step", log)]
if len(epochs) < 2:
    print(f"calibration: no two epoch lines in {sys.argv[1]}; keeping the recipe's epochs", file=sys.stderr)
    print(50)
    sys.exit()
(steps, first_s, _), (_, second_s, step_s) = epochs[:2]
compile_s = max(0.0, first_s - second_s)
fitted = int((budget - compile_s) * 0.92 / (step_s * steps))
chosen = max(1, fitted) if smoke else min(max(fitted, 10), 400)
print(f"calibration: {steps} steps an epoch, {step_s * 1e3:.1f} ms a step, first epoch {first_s:.0f} s, second "
      f"{second_s:.0f} s (compilation about {compile_s:.0f} s); ({budget:.0f} s - {compile_s:.0f} s) x 0.92 / "
      f"({step_s * 1e3:.1f} ms x {steps}) = {fitted} epochs; running {chosen}")
print(chosen)
PY
)
  EXTRA+=(--train_epochs="$EPOCHS")
fi
START=$(date +%s.%N)
"$PY" run.py --flagfile=flags/fashion_mnist_gpu.cfg --dataset="idx:$DATA" --model_dir="$RUN" "${EXTRA[@]}" \
  2>&1 | tee "$OUT/recipe.log"
RECIPE_STATUS=${PIPESTATUS[0]}
END=$(date +%s.%N)
for f in feature_eval.json learning_curve.json learning_curve.png flags.json; do
  [ -f "$RUN/$f" ] && cp "$RUN/$f" "$OUT/"
done
# Training's own wall time: from the first "Training pretrain" log line to the last checkpoint's.
"$PY" - "$OUT/recipe.log" "$START" "$END" <<'PY' | tee "$OUT/train_wall_s.txt"
import re, sys
lines = open(sys.argv[1]).read().splitlines()
stamps = lambda pattern: [l[:8] for l in lines if re.match(r"\d\d:\d\d:\d\d [IW] " + pattern, l)]
def secs(t): h, m, s = map(int, t.split(":")); return 3600 * h + 60 * m + s
begin, saved = stamps("Training pretrain"), stamps("Saved checkpoint")
if begin and saved:
    print(f"training wall time: {(secs(saved[-1]) - secs(begin[0])) % 86400} s (log stamps, 1 s resolution); "
          f"whole run with evaluation: {float(sys.argv[3]) - float(sys.argv[2]):.0f} s")
else:
    print("training wall time: not found in the log")
PY
fi

# ---- 2. Speed: tf_simclr on Keras/JAX against torch.compile, one process per part.
if [ $ONLY != recipe ]; then
  read -r -a BENCH <<< "${BENCH_FLAGS:-}"
  BENCH+=(--out "$OUT/gpu_benchmark.json" --trace_dir "$OUT/trace")
  [ $SMOKE = 1 ] && BENCH+=(--smoke --parts jax_synthetic jax_end_to_end jax_two_pass_bn)
  "$PY" benchmarks/gpu_benchmark.py "${BENCH[@]}" 2>&1 | tee "$OUT/gpu_benchmark.txt"
  BENCH_STATUS=${PIPESTATUS[0]}
  # Where the synthetic step's device time goes; only the Perfetto trace is kept (the .pb files are large).
  find "$OUT/trace" -name '*.pb' -delete -o -name '*.trace.json.gz' -delete 2>/dev/null
  "$PY" benchmarks/trace_summary.py "$OUT/trace" 2>&1 | tee "$OUT/trace_summary.txt"
fi
echo "gpu_run: recipe exit $RECIPE_STATUS, benchmark exit $BENCH_STATUS; results in $OUT"
case "$RECIPE_STATUS $BENCH_STATUS" in *[1-9]*) exit 1 ;; esac  # A failed half fails the call; "skipped" does not.
