#!/usr/bin/env bash
# Every GPU measurement of the performance issue in one call, each run capped so the whole
# script stays under 8 minutes on one H200:
#   bash bench/gpu.sh            # on the GPU machine, from the repository root
#   SMOKE=1 bash bench/gpu.sh    # tiny shapes, any device: checks the script itself
# Prints one line per run (name, then the benchmark's JSON or the error); full logs go to
# ${OUT:-bench_out}/NAME.log. The GPT-2-medium-size decoder (24 layers, 1024 wide, 16 heads)
# at seq 1024 in bf16 with cuDNN flash attention is the issue's >= 45% MFU target. The GPU
# machine needs the project's requirements (requirements.txt) besides jax with CUDA.
set -u
cd "$(dirname "$0")/.."
out=${OUT:-bench_out}
mkdir -p "$out"
python3 -c "import jax; print('devices:', jax.devices())"

medium="--config=configs/gpt2_small.py --config.model.d_model=1024 --config.model.num_layers=24
        --config.model.num_heads=16 --config.model.d_ff=4096"
batch=16 seq=1024 steps=10 cap=100
if [ "${SMOKE:-0}" = 1 ]; then
  medium="--config=configs/gpt_tiny.py"
  batch=2 seq=64 steps=2 cap=120
fi
bf16="--config.model.dtype=bfloat16"

run() {  # run NAME ARGS...: one benchmark, its JSON line (or its last error line) printed
  local name=$1
  shift
  timeout "$cap" python3 -m lm_research.bench --steps="$steps" "$@" > "$out/$name.log" 2>&1
  echo "$name: $(grep -E '^\{|Error|error' "$out/$name.log" | tail -1)"
}

run medium_bf16_cudnn $medium $bf16 --config.model.attention_impl=cudnn \
    --batch_size=$batch --seq_len=$seq
run medium_bf16_cudnn_save_dots $medium $bf16 --config.model.attention_impl=cudnn \
    --batch_size=$batch --seq_len=$seq --remat=save_dots
run medium_bf16_xla $medium $bf16 --batch_size=$batch --seq_len=$seq
run medium_f32_xla $medium --batch_size=$batch --seq_len=$seq
if [ "${SMOKE:-0}" = 1 ]; then
  run bert_bf16 --config=configs/bert_tiny.py $bf16 --batch_size=$batch --seq_len=$seq
else
  run bert_base_bf16 --config=configs/bert_base.py $bf16 --batch_size=64 --seq_len=128
  run gpt2_small_bf16_cudnn --config=configs/gpt2_small.py $bf16 \
      --config.model.attention_impl=cudnn --batch_size=32 --seq_len=1024
fi
