#!/usr/bin/env bash
# Build FlashMLA and DeepGEMM from source and run py3fs's GPU tests and benchmark.
#
#   scripts/gpu_kernels.sh FLASHMLA_DIR DEEPGEMM_DIR [OUT_DIR]
#
# FLASHMLA_DIR: a FlashMLA checkout with CUTLASS at csrc/cutlass (its submodule);
# DEEPGEMM_DIR: a DeepGEMM checkout with third-party/cutlass and third-party/fmt.
# Both are built in place (no pip install, no network): FlashMLA's extension with
# only its SM90 dense decode kernels (FLASH_MLA_FULL=1 builds everything it lists),
# DeepGEMM's host extension (its GEMM kernels are compiled by its JIT on first use).
# Then, with both on PYTHONPATH: tests/kernel_plugins (their real-kernel tests load
# KV pages and FP8 checkpoints from a local py3fs cluster) and
# benchmarks/gpu_kernels.py. Logs and the benchmark JSON go to OUT_DIR
# (default ./gpu-out). Steps already done are skipped on a rerun (SKIP_BUILD=1
# skips both builds). Needs nvcc, ninja, and PyTorch with CUDA.
set -euo pipefail
FLASHMLA=$(realpath "${1:?FlashMLA source dir}")
DEEPGEMM=$(realpath "${2:?DeepGEMM source dir}")
OUT=$(realpath -m "${3:-gpu-out}")
REPO=$(realpath "$(dirname "$0")/..")
PY=${PYTHON:-python3}
JOBS=${MAX_JOBS:-$(nproc)}
mkdir -p "$OUT"
export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}
# CUDA 13 keeps libcu++ (cuda/std/...) under include/cccl; nvcc looks there, the
# host compiler building FlashMLA's api.cpp needs telling.
export CPATH="$CUDA_HOME/include/cccl${CPATH:+:$CPATH}"

build_flashmla() {
    cd "$FLASHMLA"
    if [ "${FLASH_MLA_FULL:-0}" != 1 ]; then
        # Keep the sources and bindings of dense decode (FlashMLA's API for
        # DeepSeek V3 decoding, the one py3fs's plugin calls); the sparse and SM100
        # kernels are most of the build time and are not used on an H100/H200.
        "$PY" - <<'EOF'
import re
s = open("setup.py").read()
keep = [
    "csrc/api/api.cpp",
    "csrc/smxx/decode/get_decoding_sched_meta/get_decoding_sched_meta.cu",
    "csrc/smxx/decode/combine/combine.cu",
    "csrc/sm90/decode/dense/instantiations/bf16.cu",
]
s = re.sub(r"sources=\[.*?\],", "sources=%r," % keep, s, count=1, flags=re.S)
s = s.replace('subprocess.run(["git", "submodule"', 'None and subprocess.run(["git"')
open("setup.py", "w").write(s)
api = open("csrc/api/api.cpp").read()
api = "\n".join(
    line for line in api.splitlines()
    if not re.search(r"sparse_|dense_fwd|dense_prefill", line)
)
open("csrc/api/api.cpp", "w").write(api + "\n")
EOF
    fi
    FLASH_MLA_DISABLE_SM100=1 FLASH_MLA_DISABLE_FP16=1 MAX_JOBS=$JOBS \
        NVCC_THREADS=${NVCC_THREADS:-4} "$PY" setup.py build_ext --inplace
}

build_deepgemm() {
    cd "$DEEPGEMM"
    MAX_JOBS=$JOBS DG_USE_LOCAL_VERSION=0 "$PY" setup.py build_ext --inplace
}

start=$(date +%s)
# DeepGEMM's JIT reads CUTLASS from its package's include dir.
ln -sfn "$DEEPGEMM/third-party/cutlass/include/cutlass" "$DEEPGEMM/deep_gemm/include/cutlass"
ln -sfn "$DEEPGEMM/third-party/cutlass/include/cute" "$DEEPGEMM/deep_gemm/include/cute"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    if ! ls "$FLASHMLA"/flash_mla/cuda*.so >/dev/null 2>&1; then
        (build_flashmla) > "$OUT/build_flashmla.log" 2>&1 ||
            { tail -50 "$OUT/build_flashmla.log"; exit 1; }
    fi
    echo "FlashMLA built ($(($(date +%s) - start)) s)"
    if ! ls "$DEEPGEMM"/deep_gemm/_C*.so >/dev/null 2>&1; then
        (build_deepgemm) > "$OUT/build_deepgemm.log" 2>&1 ||
            { tail -50 "$OUT/build_deepgemm.log"; exit 1; }
    fi
    echo "DeepGEMM built ($(($(date +%s) - start)) s)"
fi

export PYTHONPATH="$FLASHMLA:$DEEPGEMM:$REPO${PYTHONPATH:+:$PYTHONPATH}"
# The extensions need the libstdc++ of the compiler that built them (a newer gcc
# than the system's on some GPU images, e.g. CXX=/opt/gcc/bin/g++): with the
# system's, DeepGEMM's JIT segfaults. Preloaded, since torch loads libstdc++ first.
libstdcxx=$(${CXX:-g++} -print-file-name=libstdc++.so.6)
if [ "${GPU_SYSTEM_LIBSTDCXX:-0}" != 1 ] && [ -f "$libstdcxx" ]; then
    export LD_PRELOAD="$(realpath "$libstdcxx")${LD_PRELOAD:+:$LD_PRELOAD}"
fi
export DG_JIT_CACHE_DIR=${DG_JIT_CACHE_DIR:-$OUT/.deep_gemm_jit}
cd "$REPO"
"$PY" - <<'EOF' | tee "$OUT/versions.txt"
import torch
from plugins import deep_gemm, flash_mla
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())
print("flash_mla backend", flash_mla.BACKEND, "deep_gemm backend", deep_gemm.BACKEND)
EOF
# Both always run; the script's status is the first failure's.
rc=0
if [ "${SKIP_TESTS:-0}" != 1 ]; then
    # DeepGEMM's kernel tests in a process of their own: a crash there must not
    # hide FlashMLA's results.
    "$PY" -X faulthandler -m pytest -v -rs -s -p no:cacheprovider tests/kernel_plugins \
        -k "not deep_gemm_kernel" > "$OUT/pytest_kernel_plugins.log" 2>&1 || rc=$?
    tail -15 "$OUT/pytest_kernel_plugins.log"
    "$PY" -X faulthandler -m pytest -v -rs -s -p no:cacheprovider tests/kernel_plugins \
        -k "deep_gemm_kernel" > "$OUT/pytest_deep_gemm_kernel.log" 2>&1 ||
        { r=$?; [ $rc != 0 ] || rc=$r; }
    tail -15 "$OUT/pytest_deep_gemm_kernel.log"
fi
if [ "${SKIP_BENCH:-0}" != 1 ]; then
    # shellcheck disable=SC2086
    "$PY" -X faulthandler benchmarks/gpu_kernels.py --json "$OUT/gpu_kernels.json" ${BENCH_ARGS:-} \
        > "$OUT/gpu_kernels_bench.log" 2>&1 || { r=$?; [ $rc != 0 ] || rc=$r; }
    tail -50 "$OUT/gpu_kernels_bench.log"
fi
exit $rc
