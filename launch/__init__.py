"""Launch tools: sweeps (sweep.py) and cluster scripts (tpu_vm.sh, gpu_slurm.sbatch,
xpk_gke.sh)."""
