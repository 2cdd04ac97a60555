#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one prepared run (about 5 minutes on one GPU).
# Run from the repository root, in an environment with a CUDA build of torch and the package installed
# (pip install -e ".[test]"). Writes every output under ${OUT:-gpu_results}/ and stops at the first failure.
set -euo pipefail
out="${OUT:-gpu_results}"
mkdir -p "$out"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" | tee "$out/device.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$out/device.txt" || true
# 1. CUDA results equal the CPU ones (counts, H, MI, KSG, curvature, the callback, FSDP on one GPU): the tests
#    that need CUDA
python -m pytest -q -p no:cacheprovider -k "cuda" tests 2>&1 | tee "$out/cuda_tests.txt"
# 2. all-pairs MI with the one-hot matmul kernel (pairs x samples per second) and the streaming metrics
python benchmarks/pairwise_mi.py --device cuda 2>&1 | tee "$out/pairwise_mi.txt"
# 3. KSG (torch backend on the GPU) against the authors' per-pair loop, exactness checked
python benchmarks/ksg_mi.py --device cuda --reference-pairs 50 2>&1 | tee "$out/ksg_mi.txt"
# 4. callback overhead on ResNet-18 stages (and the MLP), 512 and 2,048 validation samples
python benchmarks/callback_overhead.py --device cuda --families resnet18 mlp --layer-sets recipe 2>&1 | tee "$out/callback_overhead_512.txt"
python benchmarks/callback_overhead.py --device cuda --families resnet18 mlp --layer-sets recipe --samples 2048 2>&1 | tee "$out/callback_overhead_2048.txt"
# 5. curvature probes on CUDA
python benchmarks/curvature_cost.py --device cuda 2>&1 | tee "$out/curvature_cost.txt"
echo "done: $out"
