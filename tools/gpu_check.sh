#!/usr/bin/env bash
# The GPU checks of docs/performance.md, on a machine with an NVIDIA GPU and numba-cuda
# (and, for the comparison rows, a CUDA build of torch), from the repository root,
# nothing installed (the source tree is put on PYTHONPATH). Stages (STAGES, default all
# four, in this order):
#   tests   the CUDA tests on the real device (FASTMOMENTS_REAL_GPU=1: no simulator);
#   bench   `fastmoments bench --backend cuda` at 1e6, 1e7 and 1e8 elements (FlatParams),
#           each row timed against the in-place CUDA ceiling of its traffic (one kernel
#           per pass for LAMB) and the device's copy bandwidth (a device-to-device
#           copy), with torch's fused CUDA optimizers alongside; plus the 10-element and
#           1000 x 1000 scenarios;
#   blocks  the threads per block (--block-sizes 128,256,512,1024) for SGD, Adam and
#           LAMB at 1e7 and 1e8 elements: the fastest per row, for
#           fastmoments.config.cuda_threads_per_block;
#   asv     the asv suite's CUDA benchmarks at 1e7 float32 elements, when asv can be
#           imported (--quick; ASV_BENCH replaces the selection, a regular expression).
# Each stage has its own time limit, so that a stage that hangs leaves the others their
# time; together they can take longer than one 10-minute device call, so a lent machine
# runs them in two calls (STAGES="tests bench", then STAGES="blocks asv"). The outputs go
# to $OUT (default ./gpu-out): versions.txt, gpu-tests.txt, bench-cuda.txt/.json,
# gbps-vs-size-cuda.png, blocks-cuda.txt/.json, asv-cuda.txt.
#
#   [STAGES="tests bench"] bash tools/gpu_check.sh [seconds per bench row, default 0.5]
#
# SCENARIOS replaces the bench's sizes and scenarios (default: --sizes 1e6,1e7,1e8 --tiny
# --many), BLOCK_SCENARIOS and BLOCK_SIZES the block-size stage's (default: --sizes 1e7,1e8
# and 128,256,512,1024); e.g.
# SCENARIOS="--sizes 40" BLOCK_SCENARIOS="--sizes 40" BLOCK_SIZES=4,8 NUMBA_ENABLE_CUDASIM=1
# tries the script itself under numba's simulator.
# Wheels in .whl/ (asv for a machine without a package index: tools/gpu_wheels.sh fetches
# them) are installed into /tmp/site first.
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
py=${PYTHON:-python3}
stages=" ${STAGES:-tests bench blocks asv} "
for stage in $stages; do
    case $stage in tests|bench|blocks|asv) ;; *) echo "STAGES: unknown stage $stage" >&2; exit 2;; esac
done
want() { [[ $stages == *" $1 "* ]]; }
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

{
    date -u
    nvidia-smi -L
    "$py" - <<'EOF'
import numba, numpy
from numba import cuda
print("numba", numba.__version__, "numpy", numpy.__version__)
print("cuda available:", cuda.is_available())
if cuda.is_available():
    print("device:", getattr(cuda.get_current_device(), "name", "numba's CUDA simulator"))
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.cuda.is_available())
except ImportError:
    print("torch: not installed (no comparison rows)")
EOF
} 2>&1 | tee "$out/versions.txt"

if want tests; then
    echo "== CUDA tests on the device" | tee "$out/gpu-tests.txt"
    FASTMOMENTS_REAL_GPU=1 timeout 240 "$py" -m pytest -q -p no:cacheprovider \
        tests/test_cuda.py tests/test_cuda_extra.py 2>&1 | tee -a "$out/gpu-tests.txt"
    FASTMOMENTS_REAL_GPU=1 timeout 60 "$py" -m pytest -q -p no:cacheprovider \
        tests/test_bench.py -k "copy or cuda_pass_ceiling" 2>&1 | tee -a "$out/gpu-tests.txt"
fi

if want bench; then
    echo "== fastmoments bench --backend cuda" | tee "$out/bench-cuda.txt"
    timeout 300 "$py" -m fastmoments bench --backend cuda --compare torch --torch-impls fused \
        --paths flat ${SCENARIOS:---sizes 1e6,1e7,1e8 --tiny --many} --budget "${1:-0.5}" \
        --quiet --save "$out/bench-cuda.json" --plot "$out/gbps-vs-size-cuda.png" 2>&1 \
        | tee -a "$out/bench-cuda.txt"
fi

if want blocks; then
    echo "== threads per block" | tee "$out/blocks-cuda.txt"
    timeout 150 "$py" -m fastmoments bench --backend cuda --rules sgd,adam,lamb --paths flat \
        --block-sizes "${BLOCK_SIZES:-128,256,512,1024}" ${BLOCK_SCENARIOS:---sizes 1e7,1e8} \
        --budget "${1:-0.5}" --quiet --save "$out/blocks-cuda.json" 2>&1 \
        | tee -a "$out/blocks-cuda.txt"
fi

if want asv; then
    if "$py" -c "import asv" 2>/dev/null; then
        # float32 at 1e7 elements (FlatParams): every rule, the ceilings, torch and NumPy
        # rows; asv drops PYTHONPATH and reads ASV_PYTHONPATH instead
        echo "== asv, CUDA benchmarks" | tee "$out/asv-cuda.txt"
        (cd asv_benches && "$py" -m asv machine --yes >/dev/null \
            && ASV_PYTHONPATH="$PYTHONPATH" timeout 240 "$py" -m asv run --python=same \
                --quick --bench "${ASV_BENCH:-10000000, 'float32', ('flat', )?'cuda'\)}" 2>&1) \
            | tee -a "$out/asv-cuda.txt"
    else
        echo "asv is not importable: asv GPU benchmarks not run" | tee "$out/asv-cuda.txt"
    fi
fi
