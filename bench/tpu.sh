#!/usr/bin/env bash
# Every TPU measurement in one call, under 8 minutes on one TPU VM (the budget is enforced):
#   bash bench/tpu.sh            # on the TPU VM, from the repository root
#   SMOKE=1 bash bench/tpu.sh    # tiny shapes, any device: checks the script itself
# One line per run (name, exit code, the benchmark's JSON or its error); logs and compiled HLO
# in ${OUT:-bench_out_tpu}/, with env.txt (jax.print_environment_info, XLA flags). Runs use
# the defaults a TPU gets (bf16, Pallas splash attention, flash where T5's bias is, jax.random
# dropout) unless named otherwise. The rbg runs set the XLA flag that lets the SPMD
# partitioner generate random bits per shard (jax.random's documentation):
#   XLA_FLAGS=--xla_tpu_spmd_rng_bit_generator_unsafe=1
# Exit code 0 only when every run and HLO check passed.
set -u
cd "$(dirname "$0")/.."
out=${OUT:-bench_out_tpu}
mkdir -p "$out"
source bench/lib.sh

set_shapes 45  # seconds per run (bench/lib.sh)
t5shape="$shape512 --config.train.target_len=128"  # the kernels tile by 128: no 114-token tail
[ "${SMOKE:-0}" = 1 ] && t5shape=$shape512
on_device=0 rbg_flag=""
if python3 -c "import jax, sys; sys.exit(jax.default_backend() != 'tpu')" 2> /dev/null; then
  on_device=1 rbg_flag="--xla_tpu_spmd_rng_bit_generator_unsafe=1"  # unknown to other backends
fi
rbg_xla_flags=$(echo ${XLA_FLAGS:-} $rbg_flag)  # joined; XLA reads a lone space as a file
record_environment

splash="--config.model.attention_impl=splash"  # off the TPU (SMOKE): interpreted, or XLA
run medium_splash_remat_none $medium $mshape $splash --remat=none
run medium_splash_remat_save_dots $medium $mshape $splash --remat=save_dots
run medium_splash_remat_full $medium $mshape $splash --remat=full
run medium_splash_dropout0 $medium $mshape --remat=save_dots --config.model.dropout_rate=0
XLA_FLAGS="$rbg_xla_flags" run medium_splash_rbg $medium $mshape --remat=save_dots \
    --config.model.dropout_impl=rbg
XLA_FLAGS="$rbg_xla_flags" run medium_splash_unsafe_rbg $medium $mshape \
    --remat=save_dots --config.model.dropout_impl=unsafe_rbg
run medium_xla $medium $mshape --config.model.attention_impl=xla --remat=save_dots
run bert_base_splash $bert $shape512 $splash
run t5_base_flash $t5 $t5shape $splash
# Pallas kernels compile to Mosaic custom calls named after the kernel.
check_hlo medium_splash_remat_save_dots 'tpu_custom_call.*splash|splash.*tpu_custom_call' \
    "the splash attention kernel"
check_hlo t5_base_flash 'tpu_custom_call.*flash|flash.*tpu_custom_call' \
    "the flash attention kernel"
finish
