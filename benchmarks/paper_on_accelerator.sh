#!/usr/bin/env bash
# configs/paper.py on one accelerator: where its compile time and memory go, one epoch of it, then JAX against
# the PyTorch twin. What BENCHMARKS.md's "On a GPU" and "Compile time at paper scale" sections ask a device for.
#
#   bash benchmarks/paper_on_accelerator.sh OUT_DIR
#
# Parts, in order, each with its own time limit in seconds (environment variables) so that a part that runs
# out still leaves the others and its own log in OUT_DIR; the first minutes go to what was never measured:
# 1. versions, the device and an import check of the package (seconds);
# 2. PROBE_S (480): benchmarks/compile_probe.py on configs/paper.py as it is (224 px, batch 32, K = 10, PGD-20):
#    every XLA program a training run compiles up to its first validation and test evaluation, with lowering
#    and compile seconds, StableHLO size and distinct convolution shapes, and a second epoch that must compile
#    nothing (OUT_DIR/compile_probe.md);
# 3. PARTS_S (300): the same script's --parts: the FLD + TRADES step and its four parts (decouplers, attack,
#    loss, update) compiled alone under jax.profiler, with the compile's largest XLA events (on a GPU:
#    autotuning, ptxas, LLVM), so that the step's minutes of compilation are attributed (parts.md);
# 4. MEMORY_S (240): the same script's XLA memory analysis of the FLD + TRADES step at per-device batch 8, 16,
#    32 and 64 (32 first; each point is in memory.log as it comes), on the accelerator's own compiler (memory.md);
# 5. TRAIN_S (600): launch/train.py --config=configs/paper.py for EPOCHS (1) epoch(s) on the embedded synthetic
#    data (224 px, RGB, 1056 images), compilation cache off: the log (with its compile count before the first
#    step), metrics.jsonl and eval.json are kept;
# 6. BASE_S (300): launch/benchmark.py on configs/paper.py, the classifier alone (Table 2's baseline): JAX
#    against the PyTorch twin on the same GPU (eager), SqueezeNet and ResNet-18, train and TRADES steps;
# 7. FLD_S (600): the same for the FLD + TRADES step (IC1 + IC2 'paper' + classifier, K = 10);
# 8. FORMS_S (600): the FLD + TRADES rows with the CPU rewrites of the layers forced (FLAX_FLD_LAYER_FORMS=cpu),
#    JAX only: what the backend switch in flax_fld/models/layer_forms.py buys on the accelerator.
# The defaults add up to about 52 minutes; on a 15-minute lease keep the first parts, e.g.
#   PROBE_S=240 PARTS_S=180 MEMORY_S=120 TRAIN_S=240 BASE_S=1 FLD_S=1 FORMS_S=1 bash benchmarks/paper_on_accelerator.sh OUT
# Expects jax with its CUDA plugin, torch with CUDA, and the package's dependencies importable.
set -uo pipefail
out=${1:?usage: bash benchmarks/paper_on_accelerator.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the package and benchmarks/ from this checkout
python=${PYTHON:-python3}
workdir=$(mktemp -d)/paper

stamp() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$out/parts.log"; }
part() {  # part LIMIT_S NAME COMMAND...: COMMAND's stdout into OUT_DIR/NAME.md, its stderr into NAME.log
  local limit=$1 name=$2; shift 2
  stamp "$name"
  timeout "$limit" "$@" > "$out/$name.md" 2> "$out/$name.log"
  stamp "$name exit $?"
}
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
import flax_fld.training.train, benchmarks.jax_steps  # the whole package imports (TFDS, orbax, ...)
print('python', sys.version.split()[0], 'jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__,
      'optax', optax.__version__, 'torch', torch.__version__)
print('jax devices', jax.devices())" || exit 1
  nproc; uptime; } > "$out/environment.txt" 2>&1 || { cat "$out/environment.txt"; stamp "import check failed"; exit 1; }
cat "$out/environment.txt"

part "${PROBE_S:-480}" compile_probe "$python" benchmarks/compile_probe.py --config=configs/paper.py \
  --data_dir="$workdir/../probe_data"
part "${PARTS_S:-300}" parts "$python" benchmarks/compile_probe.py --config=configs/paper.py --parts
part "${MEMORY_S:-240}" memory "$python" benchmarks/compile_probe.py --config=configs/paper.py --memory_only \
  --memory_batches=32,64,8,16

stamp "train ${EPOCHS:-1} epoch(s)"
FLAX_FLD_COMPILATION_CACHE=0 timeout "${TRAIN_S:-600}" "$python" launch/train.py --config=configs/paper.py \
  --workdir="$workdir" --config.train.num_epochs="${EPOCHS:-1}" > "$out/train.log" 2>&1
stamp "train exit $?"
cp "$workdir/metrics.jsonl" "$workdir/eval.json" "$out/" 2>/dev/null

benchmark "${BASE_S:-300}" classifier_alone --steps="train step,TRADES step" --frameworks="jax,torch eager" \
  --torch_device=cuda
benchmark "${FLD_S:-600}" fld_trades --steps="FLD + TRADES step" --frameworks="jax,torch eager" --torch_device=cuda

FLAX_FLD_LAYER_FORMS=cpu benchmark "${FORMS_S:-600}" fld_trades_cpu_forms --steps="FLD + TRADES step" --frameworks=jax
