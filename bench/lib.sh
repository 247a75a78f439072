# Shared by bench/gpu.sh and bench/tpu.sh (sourced, not run): a time budget for the whole
# script, one benchmark run per call with its exit code, the compiled-HLO kernel check, and
# the environment record. Each run's log and HLO go to $out/NAME.log and $out/NAME.hlo.

budget=${BUDGET_S:-480}  # the whole script, seconds (8 minutes)
started=$SECONDS
failures=0

record_environment() {  # record_environment: versions, devices and flags into $out/env.txt
  {
    echo "XLA_FLAGS=${XLA_FLAGS:-}"
    echo "JAX_PLATFORMS=${JAX_PLATFORMS:-}"
    python3 -c "import jax; jax.print_environment_info(); print('devices:', jax.devices())"
  } > "$out/env.txt" 2>&1
  echo "env: exit=$? ($(grep -m1 '^devices:' "$out/env.txt"))"
}

run() {  # run NAME ARGS...: one benchmark under what is left of the budget; prints its line
  local name=$1
  shift
  local left=$((budget - (SECONDS - started)))
  local cap=$((left < per_run ? left : per_run))
  if [ "$cap" -lt 20 ]; then
    echo "$name: skipped, the ${budget}s budget is spent"
    failures=$((failures + 1))
    return
  fi
  timeout "$cap" python3 -m lm_research.bench --steps="$steps" --hlo_out="$out/$name.hlo" "$@" \
      > "$out/$name.log" 2>&1
  local rc=$?
  [ "$rc" = 0 ] || failures=$((failures + 1))
  echo "$name: exit=$rc $(grep -E '^\{|Error|error' "$out/$name.log" | tail -1)"
}

check_hlo() {  # check_hlo NAME REGEX WHAT: the compiled step of run NAME holds WHAT
  local name=$1 pattern=$2 what=$3
  if [ "$on_device" != 1 ]; then
    echo "$name hlo: $(wc -l < "$out/$name.hlo" 2>/dev/null || echo no) lines written;" \
         "$what not looked for (it exists on the accelerator only)"
  elif grep -qE "$pattern" "$out/$name.hlo" 2>/dev/null; then
    echo "$name hlo: $what present ($(grep -cE "$pattern" "$out/$name.hlo") lines)"
  else
    echo "$name hlo: $what MISSING"
    failures=$((failures + 1))
  fi
}

finish() {  # finish: the total time and failures; the script's exit code
  echo "total: $((SECONDS - started)) s of ${budget} s, $failures failed or skipped"
  [ "$failures" = 0 ] && [ $((SECONDS - started)) -le "$budget" ]
}

set_shapes() {  # set_shapes PER_RUN: the models and shapes both scripts measure (SMOKE=1: tiny)
  medium="--config=configs/gpt2_small.py --config.model.d_model=1024 --config.model.num_layers=24
          --config.model.num_heads=16 --config.model.d_ff=4096"
  mshape="--batch_size=16 --seq_len=1024"
  bert="--config=configs/bert_base.py" t5="--config=configs/t5_base.py"
  shape512="--batch_size=32 --seq_len=512"
  steps=10 per_run=$1
  if [ "${SMOKE:-0}" = 1 ]; then
    medium="--config=configs/gpt_tiny.py" mshape="--batch_size=2 --seq_len=64"
    bert="--config=configs/bert_tiny.py" t5="--config=configs/t5_tiny.py" shape512=$mshape
    steps=2 per_run=300 budget=${BUDGET_S:-2400}  # a script check: room for a busy CPU
  fi
}
