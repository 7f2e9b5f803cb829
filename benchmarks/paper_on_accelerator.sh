#!/usr/bin/env bash
# configs/paper.py on one accelerator: what BENCHMARKS.md's "On a GPU" section was measured with.
#
#   bash benchmarks/paper_on_accelerator.sh OUT_DIR
#
# Parts, cheapest first, each with its own time limit in seconds (environment variables) so that a part that
# runs out still leaves the others and its own log in OUT_DIR:
# 1. versions, the device and an import check of the package (seconds);
# 2. BASE_S (300): launch/benchmark.py on configs/paper.py, the classifier alone (Table 2's baseline): JAX
#    against the PyTorch twin on the same GPU (eager), SqueezeNet and ResNet-18, train and TRADES steps;
# 3. FLD_S (900): the same for the FLD + TRADES step (IC1 + IC2 'paper' + classifier, K = 10). Its first compile
#    is the long part: on an H200 it had not finished after 175 s (BENCHMARKS.md);
# 4. TRAIN_S (900): launch/train.py --config=configs/paper.py for EPOCHS (2) epochs on the embedded synthetic
#    data (224 px, RGB); log, metrics.jsonl and eval.json kept;
# 5. FORMS_S (600): the FLD + TRADES rows with the CPU rewrites of the layers forced (FLAX_FLD_LAYER_FORMS=cpu),
#    JAX only: what the backend switch in flax_fld/models/layer_forms.py buys on the accelerator.
# Expects jax with its CUDA plugin, torch with CUDA, and the package's dependencies importable.
set -uo pipefail
out=${1:?usage: bash benchmarks/paper_on_accelerator.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the package and benchmarks/ from this checkout
python=${PYTHON:-python3}
workdir=$(mktemp -d)/paper

stamp() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$out/parts.log"; }
benchmark() {  # benchmark LIMIT_S NAME ARGS...: launch/benchmark.py on configs/paper.py into OUT_DIR/NAME.{md,log}
  local limit=$1 name=$2; shift 2
  stamp "$name"
  timeout "$limit" "$python" launch/benchmark.py --config=configs/paper.py --classifiers=squeezenet1_1,resnet18 \
    --compile_ks= --devices= --out="$out/$name.md" "$@" > "$out/$name.log" 2>&1
  stamp "$name exit $?"
}

stamp "environment"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  "$python" -c "import sys, jax, jaxlib, flax, optax, orbax.checkpoint, torch
import flax_fld.train, benchmarks.jax_steps  # the whole package imports (TFDS, orbax, ...)
print('python', sys.version.split()[0], 'jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__,
      'optax', optax.__version__, 'torch', torch.__version__)
print('jax devices', jax.devices())" || exit 1
  nproc; uptime; } > "$out/environment.txt" 2>&1 || { cat "$out/environment.txt"; stamp "import check failed"; exit 1; }
cat "$out/environment.txt"

benchmark "${BASE_S:-300}" classifier_alone --steps="train step,TRADES step" --frameworks="jax,torch eager" \
  --torch_device=cuda
benchmark "${FLD_S:-900}" fld_trades --steps="FLD + TRADES step" --frameworks="jax,torch eager" --torch_device=cuda

stamp "train ${EPOCHS:-2} epochs"
timeout "${TRAIN_S:-900}" "$python" launch/train.py --config=configs/paper.py --workdir="$workdir" \
  --config.train.num_epochs="${EPOCHS:-2}" > "$out/train.log" 2>&1
stamp "train exit $?"
cp "$workdir/metrics.jsonl" "$workdir/eval.json" "$out/" 2>/dev/null

FLAX_FLD_LAYER_FORMS=cpu benchmark "${FORMS_S:-600}" fld_trades_cpu_forms --steps="FLD + TRADES step" --frameworks=jax
