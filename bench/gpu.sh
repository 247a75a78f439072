#!/usr/bin/env bash
# Every GPU measurement in one call, under 8 minutes on one H200 (the budget is enforced):
#   bash bench/gpu.sh            # on the GPU machine, from the repository root
#   SMOKE=1 bash bench/gpu.sh    # tiny shapes, any device: checks the script itself
# One line per run (name, exit code, the benchmark's JSON or its error); logs and compiled HLO
# in ${OUT:-bench_out}/, with env.txt (jax.print_environment_info, XLA flags) and
# nvidia-smi.txt. Runs use the defaults a GPU gets (bf16, cuDNN flash attention, jax.random
# dropout) unless named otherwise. Exit code 0 only when every run and HLO check passed.
set -u
cd "$(dirname "$0")/.."
out=${OUT:-bench_out}
mkdir -p "$out"
source bench/lib.sh

set_shapes 65  # seconds per run (bench/lib.sh)
on_device=0
if command -v nvidia-smi > /dev/null; then
  nvidia-smi -q > "$out/nvidia-smi.txt" 2>&1 && on_device=1
fi
echo "nvidia-smi: $(grep -m1 "Product Name" "$out/nvidia-smi.txt" 2>/dev/null || echo none)"
record_environment

cudnn="--config.model.attention_impl=cudnn"
[ $on_device = 1 ] || cudnn=""  # off the GPU (SMOKE) the runs take 'auto': the XLA attention
run medium_cudnn_remat_none $medium $mshape $cudnn --remat=none
run medium_cudnn_remat_save_dots $medium $mshape $cudnn --remat=save_dots
run medium_cudnn_remat_full $medium $mshape $cudnn --remat=full
run medium_cudnn_dropout0 $medium $mshape $cudnn --remat=save_dots --config.model.dropout_rate=0
run medium_xla $medium $mshape --config.model.attention_impl=xla --remat=save_dots
run bert_base_cudnn $bert $shape512 $cudnn
run t5_base_cudnn $t5 $shape512 $cudnn
# cuDNN's fused attention is a custom call to one of its __cudnn$fmha* targets.
fmha='custom_call_target="__cudnn\$fmha'
for name in medium_cudnn_remat_save_dots bert_base_cudnn t5_base_cudnn; do
  check_hlo $name "$fmha" "cuDNN fused attention"
done
finish
