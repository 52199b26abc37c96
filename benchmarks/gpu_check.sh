#!/usr/bin/env bash
# GPU check for the Triton kernels: tests compiled on CUDA, then the benchmarks (each step has a timeout; about 5 minutes in all on one H200).
#
#   bash benchmarks/gpu_check.sh            # needs torch with CUDA and triton; writes benchmarks/results/*.json
#
# 1. the kernel tests of tests/test_triton_kernels.py and tests/test_hard_negatives.py on CUDA
#    (UNIMLIP_TEST_DEVICE=cuda; the same tests CI runs under TRITON_INTERPRET=1 on CPU);
# 2. benchmarks/bench_kernels_gpu.py: bf16 D=768 matmul rate, one-pass vs two-pass fwd+bwd up to
#    N=65536, peak memory at N=1,048,576 -> results/kernels_gpu.json;
# 3. the sampler (triton vs tiled vs ALBEF N×N) and the contrastive loss (triton vs tiled vs baseline)
#    on CUDA -> results/hard_negatives_cuda.json, results/contrastive_cuda.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
unset TRITON_INTERPRET
export UNIMLIP_TEST_DEVICE=cuda

"$PY" - <<'PYEOF'
import torch, triton
assert torch.cuda.is_available(), "gpu_check.sh needs a CUDA GPU"
print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name(0))
PYEOF

echo "== kernel tests on CUDA"
timeout 90 "$PY" -m pytest -q tests/test_triton_kernels.py tests/test_hard_negatives.py

echo "== Triton InfoNCE: speed vs matmul, one-pass vs two-pass, memory at N=2^20"
timeout 120 "$PY" benchmarks/bench_kernels_gpu.py

echo "== hard-negative sampler on CUDA"
timeout 40 "$PY" benchmarks/bench_hard_negatives.py --device cuda --dtype bfloat16 --dim 768 \
    --sizes 4096 16384 --repeats 3

echo "== contrastive loss on CUDA"
timeout 45 "$PY" benchmarks/bench_contrastive.py --device cuda --dtype bfloat16 --dim 768 \
    --sizes 4096 16384 65536 --backends triton tiled baseline --repeats 3
echo "done: benchmarks/results/{kernels_gpu,hard_negatives_cuda,contrastive_cuda}.json"
