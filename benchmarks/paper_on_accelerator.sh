#!/usr/bin/env bash
# configs/paper.py on an accelerator lent for minutes: two stages, each within one 600 s call of the lender.
#
#   STAGE=compile bash benchmarks/paper_on_accelerator.sh OUT_DIR   # where the step's compile goes, compile options
#   STAGE=run     bash benchmarks/paper_on_accelerator.sh OUT_DIR   # one short epoch, JAX against PyTorch
#
# Why this shape: the paper-scale step compiles for minutes on a GPU, so a script that measures everything in
# one go runs out of its lease before it reports anything. Here every part has its own time limit (timeout -k),
# the limits add up to the stage's STAGE_S (540 s), every part writes its own result file in OUT_DIR when it
# ends (a stand-in with its exit status and seconds when it ran out of time or failed), its log as it goes
# (OUT_DIR/NAME.log), and a line in OUT_DIR/summary-STAGE.tsv; the first parts are the ones never measured.
#
# Stage compile (budgets in s, environment variables):
#   ENV_S 20      environment-compile.json: versions, devices, the package's import, which compile-option
#                 presets the installed XLA knows (benchmarks/accelerator_env.py: no PyTorch needed);
#   PARTS_S 100   parts.md, parts.jsonl: the step's parts compiled alone under jax.profiler, the decouplers'
#                 program first (PARTS_PROGRAMS), each reported with XLA's compile events when it is compiled;
#   OPTION_S 60   options_VARIANT.json for each of OPTION_VARIANTS ("default autotune_0 triton_gemm_off
#                 parallel_llvm fast_compile": presets of flax_fld/runtime/gpu_compile_options.py, or
#                 xla_NAME=VALUE), each in a fresh process: OPTIONS_PROGRAM (decouplers, the part with the
#                 most kernels, so that every variant can finish; step for the whole step) compiled with
#                 it, compile s and the median of 5 calls after 3 warm-up calls;
#   MEMORY_S 90   memory.json: the whole step at the config's per-device batch compiled once (with
#                 MEMORY_OPTIONS, fast_compile by default, so that it fits), XLA's memory analysis, its compile
#                 s and the median of 5 calls.
# Stage run:
#   ENV_S 20      environment-run.json;
#   TRAIN_S 220   train.log, train.json (+ metrics.jsonl, eval.json): launch/train.py for 1 epoch on
#                 TRAIN_EXAMPLES (112) embedded synthetic images (2 steps of 32 at 224 px), compilation cache
#                 off; the log has the compile count before the first step;
#   BASE_S 80     rows_baseline.md: launch/benchmark.py, the classifier alone (train and TRADES steps), JAX
#                 against the PyTorch twin on TORCH_DEVICE (cuda where nvidia-smi is found), SqueezeNet and ResNet-18;
#   FLD_S 100     rows_fld_squeezenet1_1.md, then rows_fld_resnet18.md (ROWS_CLASSIFIERS): the FLD + TRADES
#                 step, the same way.
#                 ROWS_COMPILE_OPTIONS (a spec, empty by default) compiles these rows with options too.
# KILL_S (3) seconds after a part's limit its process is killed; each part's KILL_S counts in the stage's sum.
# A rehearsal on a CPU: PRESET=tiny (configs/tiny.py), IMAGE_SIZE, BATCH, K and smaller budgets
# (tests/test_accelerator_script.py). Expects jax (with its CUDA plugin on a GPU) and the package's
# dependencies importable; torch only for the PyTorch rows (without it they measure JAX alone).
set -uo pipefail
stage=${STAGE:-}
if [[ $stage != compile && $stage != run ]]; then
  echo "paper_on_accelerator.sh: STAGE must be compile or run (got '${stage}')" >&2; exit 2
fi
[[ $# -eq 1 ]] || { echo "usage: STAGE=compile|run bash benchmarks/paper_on_accelerator.sh OUT_DIR" >&2; exit 2; }
mkdir -p "$1" && out=$(cd "$1" && pwd) || { echo "paper_on_accelerator.sh: cannot create $1" >&2; exit 2; }
cd "$(dirname "$0")/.." || exit 2

STAGE_S=${STAGE_S:-540} KILL_S=${KILL_S:-3} ENV_S=${ENV_S:-20}
PARTS_S=${PARTS_S:-100} OPTION_S=${OPTION_S:-60} MEMORY_S=${MEMORY_S:-90}
TRAIN_S=${TRAIN_S:-220} BASE_S=${BASE_S:-80} FLD_S=${FLD_S:-100}
OPTION_VARIANTS=${OPTION_VARIANTS:-default autotune_0 triton_gemm_off parallel_llvm fast_compile}
read -r -a variants <<< "$OPTION_VARIANTS"
read -r -a classifiers <<< "${ROWS_CLASSIFIERS:-squeezenet1_1 resnet18}"
if [[ $stage == compile ]]; then
  budgets=("$ENV_S" "$PARTS_S" "$MEMORY_S"); for _ in "${variants[@]}"; do budgets+=("$OPTION_S"); done
else
  budgets=("$ENV_S" "$TRAIN_S" "$BASE_S"); for _ in "${classifiers[@]}"; do budgets+=("$FLD_S"); done
fi
total=0; for budget in "${budgets[@]}"; do total=$(( total + budget + KILL_S )); done
if (( total > STAGE_S )); then
  echo "paper_on_accelerator.sh: the $stage stage's budgets and kill delays add up to $total s," \
    "over STAGE_S=$STAGE_S" >&2
  exit 2
fi

config=configs/${PRESET:-paper}.py
[[ -f $config ]] || { echo "paper_on_accelerator.sh: no $config (PRESET=${PRESET:-paper})" >&2; exit 2; }
probe_args=(); train_args=()  # the rehearsal's smaller sizes, for the probes and for --config.* overrides
if [[ -n ${IMAGE_SIZE:-} ]]; then
  probe_args+=(--image_size="$IMAGE_SIZE"); train_args+=(--config.data.image_size="$IMAGE_SIZE")
fi
if [[ -n ${BATCH:-} ]]; then
  probe_args+=(--per_device_batch_size="$BATCH"); train_args+=(--config.train.per_device_batch_size="$BATCH")
fi
if [[ -n ${K:-} ]]; then probe_args+=(--num_steps="$K"); train_args+=(--config.adv.num_steps="$K"); fi
rows_args=(--attack_steps="${K:-10}")  # launch/benchmark.py's own K (TRADES' 10, configs/paper.py's)

export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" FLAX_FLD_COMPILATION_CACHE=0  # these parts measure compiles
unset JAX_COMPILATION_CACHE_DIR
python=${PYTHON:-python3}
workdir=$(mktemp -d)
deadline=$(( $(date +%s) + STAGE_S ))
summary=$out/summary-$stage.tsv
printf 'part\tstatus\texit\tseconds\tlimit_s\n' > "$summary"

stamp() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$out/parts-$stage.log"; }
fallback() {  # fallback RESULT STATUS RC SECONDS LIMIT: a result file saying why the part left none
  [[ -s $1 ]] && return
  if [[ $1 == *.json ]]; then
    printf '{"status": "%s", "exit": %s, "seconds": %s, "limit_s": %s}\n' "$2" "$3" "$4" "$5" > "$1"
  else
    printf '(no result: %s, exit %s after %s s, limit %s s; see the log beside this file)\n' "$2" "$3" "$4" "$5" > "$1"
  fi
}
part() {  # part BUDGET_S NAME RESULT STDOUT COMMAND...: COMMAND under timeout; its stderr in OUT/NAME.log
  local budget=$1 name=$2 result=$3 stdout=$4; shift 4
  local limit=$(( deadline - $(date +%s) - KILL_S )) start rc status
  (( limit > budget )) && limit=$budget
  if (( limit < 1 )); then
    stamp "$name skipped: the stage's $STAGE_S s are spent"
    rm -f "$result"; fallback "$result" skipped 0 0 0; printf '%s\tskipped\t0\t0\t0\n' "$name" >> "$summary"; return 0
  fi
  stamp "$name (limit $limit s)"
  rm -f "$result"  # a file from an earlier run in OUT_DIR would pass for this one's
  start=$(date +%s)
  if [[ $stdout == "$out/$name.log" ]]; then
    timeout -k "$KILL_S" "$limit" "$@" > "$stdout" 2>&1
  else
    timeout -k "$KILL_S" "$limit" "$@" > "$stdout" 2> "$out/$name.log"
  fi
  rc=$?
  local seconds=$(( $(date +%s) - start ))
  case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=error ;; esac
  fallback "$result" "$status" "$rc" "$seconds" "$limit"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$seconds" "$limit" >> "$summary"
  stamp "$name: $status (exit $rc) after $seconds s"
  [[ $status == ok ]] || tail -n 3 "$out/$name.log" 2>/dev/null | sed 's/^/   | /'
  [[ $result == *.json ]] && head -c 1500 "$result" | tr -s ' \n' ' ' && echo
  return 0
}

command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
  --format=csv > "$out/nvidia-smi.csv" 2>&1
part "$ENV_S" environment "$out/environment-$stage.json" "$out/environment.log" \
  "$python" -m benchmarks.accelerator_env "$out/environment-$stage.json"
if ! grep -q '"versions"' "$out/environment-$stage.json"; then
  stamp "the environment check failed: nothing else can run"; cat "$out/environment.log"; exit 1
fi

if [[ $stage == compile ]]; then
  rm -f "$out/parts.jsonl"  # appended to line by line
  part "$PARTS_S" parts "$out/parts.md" "$out/parts.md" "$python" benchmarks/compile_probe.py --config="$config" \
    --parts --parts_programs="${PARTS_PROGRAMS:-decouplers,attack,loss,update,step}" --jsonl="$out/parts.jsonl" \
    ${probe_args[@]+"${probe_args[@]}"}
  for variant in "${variants[@]}"; do  # a preset name, or xla_NAME=VALUE (the file name keeps [A-Za-z0-9_] only)
    spec=$variant; [[ $variant == default ]] && spec=""
    variant=${variant//[^A-Za-z0-9_]/_}
    part "$OPTION_S" "options_$variant" "$out/options_$variant.json" "$out/options_$variant.log" \
      "$python" -m benchmarks.compile_variants --config="$config" --program="${OPTIONS_PROGRAM:-decouplers}" \
      --options="$spec" --name="$variant" --out="$out/options_$variant.json" ${probe_args[@]+"${probe_args[@]}"}
  done
  part "$MEMORY_S" memory "$out/memory.json" "$out/memory.log" "$python" -m benchmarks.compile_variants \
    --config="$config" --program=step --options="${MEMORY_OPTIONS-fast_compile}" --name=memory \
    --out="$out/memory.json" ${probe_args[@]+"${probe_args[@]}"}
else
  part "$TRAIN_S" train "$out/train.log" "$out/train.log" "$python" launch/train.py --config="$config" \
    --workdir="$workdir/run" --config.data.data_dir="$workdir/data" --config.train.num_epochs=1 \
    --config.data.num_examples="${TRAIN_EXAMPLES:-112}" --config.train.log_every_steps=1 \
    ${train_args[@]+"${train_args[@]}"}
  compiled=$(grep -m1 'XLA programs compiled' "$out/train.log" | sed 's/\\/\\\\/g; s/"/\\"/g')
  printf '{"status": "%s", "compile_count_line": "%s", "steps_logged": %s, "eval_json": %s}\n' \
    "$(tail -n 1 "$summary" | cut -f2)" "$compiled" "$(grep -c '^step ' "$out/train.log")" \
    "$([[ -f $workdir/run/eval.json ]] && echo true || echo false)" > "$out/train.json"
  cp "$workdir/run/metrics.jsonl" "$workdir/run/eval.json" "$out/" 2>/dev/null
  cat "$out/train.json"

  torch_device=${TORCH_DEVICE:-$(command -v nvidia-smi > /dev/null && echo cuda || echo cpu)}
  rows_env=()
  if [[ -n ${ROWS_COMPILE_OPTIONS:-} ]]; then  # only the flags this XLA knows: an unknown one in XLA_FLAGS aborts
    rows_env=(env "XLA_FLAGS=${XLA_FLAGS:-} $(timeout -k 2 30 "$python" -m flax_fld.runtime.gpu_compile_options \
      "$ROWS_COMPILE_OPTIONS")")
  fi
  rows() {  # rows BUDGET_S NAME ARGS...: launch/benchmark.py's markdown into OUT/NAME.md, its row lines in NAME.log
    local budget=$1 name=$2; shift 2
    part "$budget" "$name" "$out/$name.md" "$out/$name.md" ${rows_env[@]+"${rows_env[@]}"} \
      "$python" launch/benchmark.py --config="$config" --compile_ks= --devices= --torch_device="$torch_device" \
      --warmup="${ROWS_WARMUP:-2}" --rounds="${ROWS_ROUNDS:-5}" "${rows_args[@]}" ${train_args[@]+"${train_args[@]}"} "$@"
  }
  rows "$BASE_S" rows_baseline --classifiers="$(IFS=,; echo "${classifiers[*]}")" --steps="train step,TRADES step" \
    --frameworks="jax,torch eager"
  for classifier in "${classifiers[@]}"; do
    rows "$FLD_S" "rows_fld_$classifier" --classifiers="$classifier" --steps="FLD + TRADES step" \
      --frameworks="jax,torch eager"
  done
fi
rm -rf "$workdir"
stamp "$stage stage done: $(cut -f2 "$summary" | tail -n +2 | sort | uniq -c | tr -s ' \n' ' ')"
