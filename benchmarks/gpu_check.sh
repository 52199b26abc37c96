#!/usr/bin/env bash
# GPU check for the Triton kernels: tests compiled on CUDA, then the benchmarks, then the ahead-of-time compile
# check. Each step has a timeout (585 s in all, under the device tool's 600 s per command; about 6 minutes
# expected on one H200); a failing step does not stop the later ones, and the script exits 1 if any failed.
#
#   bash benchmarks/gpu_check.sh            # needs torch with CUDA and triton; writes benchmarks/results/*.json
#
# 1. the kernel tests of tests/test_triton_kernels.py and tests/test_hard_negatives.py on CUDA
#    (UNIMLIP_TEST_DEVICE=cuda; the same tests CI runs under TRITON_INTERPRET=1 on CPU);
#    then the first-use self-check of each Triton backend (state, error, seconds) -> results/selfcheck_cuda.json;
# 2. benchmarks/bench_kernels_gpu.py: bf16 D=768 matmul rate, a short config sweep, one-pass vs two-pass
#    fwd+bwd up to N=65536, peak memory at N=1,048,576, the sampler against one forward at N=65536, and the
#    registers/spills the CUDA driver reports for each compiled kernel -> results/kernels_gpu.json;
# 3. the sampler (triton vs tiled vs ALBEF N×N) and the contrastive loss (triton vs tiled vs baseline)
#    on CUDA -> results/hard_negatives_cuda.json, results/contrastive_cuda.json;
# 4. tests/test_triton_compile.py (sm_80/sm_90 ahead-of-time compile and resource limits; CPU only, last so it
#    never costs the GPU steps their time).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
unset TRITON_INTERPRET
export UNIMLIP_TEST_DEVICE=cuda
export UNIMLIP_BENCH_RESULTS=${UNIMLIP_BENCH_RESULTS:-committed}  # the GPU numbers are meant to be recorded
failed=()

step() {  # step NAME TIMEOUT_S CMD...
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    local t0=$SECONDS
    timeout "$limit" "$@"
    local rc=$?
    echo "-- $name: rc $rc in $((SECONDS - t0)) s"
    [ "$rc" -eq 0 ] || failed+=("$name (rc $rc)")
}

"$PY" - <<'PYEOF' || exit 1
import torch, triton
assert torch.cuda.is_available(), "gpu_check.sh needs a CUDA GPU"
print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name(0),
      "capability", torch.cuda.get_device_capability(0))
PYEOF

step "kernel tests on CUDA" 120 "$PY" -m pytest -q tests/test_triton_kernels.py tests/test_hard_negatives.py

step "first-use self-checks: state and cost per (op, dtype) -> results/selfcheck_cuda.json" 60 "$PY" -c "
import json
from unimlip_kit.info import collect_info
checks = collect_info()['self_checks']
print(json.dumps(checks, indent=1))
open('benchmarks/results/selfcheck_cuda.json', 'w').write(json.dumps(checks, indent=1) + '\n')
"

step "Triton InfoNCE: speed vs matmul, one-pass vs two-pass, memory at N=2^20, sampler vs forward" 180 \
    "$PY" benchmarks/bench_kernels_gpu.py

step "hard-negative sampler on CUDA" 45 "$PY" benchmarks/bench_hard_negatives.py --device cuda --dtype bfloat16 \
    --dim 768 --sizes 4096 16384 --repeats 3

step "contrastive loss on CUDA" 60 "$PY" benchmarks/bench_contrastive.py --device cuda --dtype bfloat16 --dim 768 \
    --sizes 4096 16384 65536 --backends triton tiled baseline --repeats 3

step "ahead-of-time compile check (sm_80, sm_90)" 120 env -u UNIMLIP_TEST_DEVICE "$PY" -m pytest -q \
    tests/test_triton_compile.py

echo "results: benchmarks/results/{kernels_gpu,hard_negatives_cuda,contrastive_cuda}.json"
if [ ${#failed[@]} -gt 0 ]; then
    printf 'FAILED: %s\n' "${failed[@]}"
    exit 1
fi
echo "all steps passed"
