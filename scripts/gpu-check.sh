#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and a preinstalled PyTorch (no .venv, no network): build
# ot_flow._C against that PyTorch with the CUDA kernels, run the CUDA tests (the CPU ones are
# CI's), on the default kernels and on the tensor-core engine, a compute-sanitizer subset and the
# GPU benchmarks, and keep what they print under benchmarks/results/ (under $OUT too, where the
# device tool brings files back from, so a run cut by its time limit still returns its log).
#   bash scripts/gpu-check.sh [STAGES]   (or: make gpu-check)
# STAGES, comma-separated, in the order given (default tests,sanitize,bench, the order of what
# matters most, so that a run cut short has done the first):
#   tests     build, the CUDA tests on the tensor-core engine, then on the default kernels
#   sanitize  compute-sanitizer memcheck: the mips crash of issue #16, a small engine subset
#   bench     the GPU benchmarks, each under its own time limit
# One device call has 10 minutes and a session 15 in all, start-up included: `tests` alone is the
# first call's job (a few minutes on 16 cores); `sanitize,bench` a second one, on the warm
# machine, where the build is kept.
set -uo pipefail
stages=",${1:-tests,sanitize,bench},"
want() { [[ "$stages" == *",$1,"* ]]; }
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Requirements the device image lacks (torchdiffeq; the benchmarks' peers FlashSinkhorn, and POT
# with torchcfm for the OT-FM batch sizes) travel as wheels in .whl/ (git-ignored: fetched, never
# committed; ~34 MB, within a device call's 64 MiB) with
#   pip download --no-deps -d .whl torchdiffeq==0.2.5 flash-sinkhorn==0.4.1 torchcfm==1.0.7
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 -d .whl POT==0.9.7.post1
# (see requirements.txt, requirements-bench*.txt; the image's python is 3.12), and are installed
# without their dependencies: flash-sinkhorn's (numpy, torch>=2.5, triton>=3.1) and POT's (numpy,
# scipy) are the image's own. Without a wheel the benchmarks print why that peer is skipped.
if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export OT_FLOW_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# The GPU at hand only: a faster build than the default list.
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}
stamp=$(date -u +%Y%m%d)
gpu=$($PY -c 'import torch; print(torch.cuda.get_device_name().replace(" ", "-"))')
out=${OUT:-benchmarks/results}/gpu-check-$gpu-$stamp.txt
mkdir -p "$(dirname "$out")"
{
  echo "# gpu-check: $(date -u +%FT%TZ), $gpu, command: bash scripts/gpu-check.sh ${1:-}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  nvcc --version | tail -1
} | tee -a "$out"
# Incremental (ninja): a second call on the warm machine finds the build done.
build_start=$(date +%s)
$PY setup.py build_ext --inplace > build-gpu.log 2>&1 || { tail -50 build-gpu.log | tee -a "$out"; exit 1; }
echo "build: $(( $(date +%s) - build_start )) s" | tee -a "$out"
sanitizer=${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer
tests_rc=0 engine_rc=0
if want tests; then
  # The CUDA mips crash of issue #16 (integer points, ties, bias=None), first and alone: a segfault
  # would end the whole pytest run below without its summary, so where it crashes here it is
  # deselected there (and the sanitize stage names the fault).
  echo "## tests/test_mips.py -k cuda_ties, alone" | tee -a "$out"
  timeout 120 $PY -X faulthandler -m pytest tests/test_mips.py -q -p no:cacheprovider -k cuda_ties 2>&1 | tail -25 \
    | tee -a "$out"
  mips_rc=${PIPESTATUS[0]}
  deselect=()
  [ "$mips_rc" -eq 0 ] || deselect=(--deselect tests/test_mips.py::test_cuda_ties_opcheck_and_limits)
  # The engine's own tests and the ops' CUDA tests on the tensor-core engine first (it has never
  # run, and whether its tests pass decides the default), then every CUDA test on the FMA kernels
  # (the default, verified on an H200 before the newer CUDA code around them).
  echo "## CUDA tests, OT_FLOW_CUDA_ENGINE=tensor_cores" | tee -a "$out"
  OT_FLOW_CUDA_ENGINE=tensor_cores timeout 240 $PY -m pytest tests/test_cuda_engine.py tests/test_cuda_sass.py \
    tests/test_lse.py tests/test_barycentric.py tests/test_mips.py tests/test_sinkhorn.py tests/test_batched.py -m cuda -q \
    -p no:cacheprovider ${deselect[@]+"${deselect[@]}"} 2>&1 | tail -25 | tee -a "$out"
  engine_rc=${PIPESTATUS[0]}
  echo "## CUDA tests, default kernels (pytest -m cuda)" | tee -a "$out"
  timeout 300 $PY -m pytest tests -m cuda -q -p no:cacheprovider ${deselect[@]+"${deselect[@]}"} 2>&1 | tail -15 | tee -a "$out"
  tests_rc=${PIPESTATUS[0]}
  [ "$mips_rc" -eq 0 ] || tests_rc=$mips_rc
fi
if want sanitize && [ -x "$sanitizer" ]; then
  # With the caching allocator off, an access past a tensor's end is not hidden in a pooled block:
  # a device-side fault is named with its kernel and source line (-lineinfo), a host-side one shows
  # as a Python traceback (faulthandler).
  echo "## compute-sanitizer memcheck: tests/test_mips.py -k cuda_ties" | tee -a "$out"
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 150 "$sanitizer" --tool memcheck --error-exitcode 99 \
    $PY -X faulthandler -m pytest tests/test_mips.py -q -p no:cacheprovider -k cuda_ties 2>&1 | tail -25 | tee -a "$out"
  echo "## compute-sanitizer memcheck: small engine cases" | tee -a "$out"
  OT_FLOW_CUDA_ENGINE=tensor_cores PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 120 "$sanitizer" --tool memcheck \
    --error-exitcode 99 $PY -m pytest tests/test_cuda_engine.py -q -p no:cacheprovider \
    -k "65-129-17 or large_scale or (top_k and 67-4099-3-5 and random) or (128_row_blocks and 129-257-64) \
        or (mips_one_pass_is and 67-4099-3 and integers)" 2>&1 \
    | tail -8 | tee -a "$out"
fi
if want bench; then
  # Each benchmark under its own limit (seconds), most wanted first: the engine against the FMA
  # kernels (#16, #17), then batching on the GPU (#18's target), then the peers.
  run_bench() {
    local limit=$1
    shift
    echo "## $* --device cuda (limit ${limit} s)" | tee -a "$out"
    timeout "$limit" $PY "$@" --device cuda 2>&1 | tail -40 | tee -a "$out"
  }
  # Its rows print as they are measured (stderr), its tables at the end, whole under $OUT too.
  echo "## benchmarks/bench_engine.py (limit 180 s)" | tee -a "$out"
  timeout 180 $PY benchmarks/bench_engine.py --out "$(dirname "$out")/bench_engine-$gpu-$stamp.txt" 2>&1 | tail -250 \
    | tee -a "$out"
  # bench_batched: 10 problems x n = 1024, d = 2 and 64, one batched call vs 10 calls (streamed), on
  # the FMA kernels and on the tensor-core engine. Each solve is launch-bound (a half-step's 1024^2
  # entries take microseconds; ~25 iterations per problem): ~0.2 s for the 10 separate calls, less
  # batched; 12 rows x 5 runs (warm-up, 3 timed, 1 profiled) ~15 s, plus start-up, the floor rates
  # and the profiler's CUPTI start, ~25 s in all.
  run_bench 90 benchmarks/bench_batched.py --batch 10 --n 1024 --dims 2 64
  # bench_lse: ot_flow against FlashSinkhorn (TF32, fp32) and torch dense (fp32, TF32) per row. Two
  # sizes: FlashSinkhorn autotunes 44 Triton configs on its first call per (n, d, TF32) shape,
  # minutes on a fresh machine (untimed, but inside the device call).
  run_bench 180 benchmarks/bench_lse.py --sizes 16384 65536
  run_bench 180 benchmarks/bench_sinkhorn.py --sizes 4096 65536 --dims 64 --methods ot_flow "ot_flow streamed" \
    "torch dense" OTT-JAX FlashSinkhorn
  run_bench 120 benchmarks/bench_mips.py --methods ot_flow torch "torch bf16" --fit-sizes 10000 100000
  # bench_unbalanced: ot_flow unbalanced (tau 0.9) vs its balanced solve per iteration, against
  # FlashSinkhorn's unbalanced solver (reach = sqrt(rho), TF32 only here: each mode is one more
  # autotune per shape) at n = 4096 and 65536, d = 64. GPU time, estimated from the work: ours at
  # n = 65536 ~85 ms/iter (the FMA kernels' H200 balanced figure, README), 2 x 17 timed iterations
  # plus <= 30 to tol and a float64 mass pass, ~6 s; n = 4096 under 1 s; FlashSinkhorn's autotune
  # ~10 s per shape (44 configs; the kernels compiled by bench_sinkhorn's runs of the same shapes
  # are in Triton's disk cache), its timed and to-tol iterations at ~7 ms, ~2 s; start-up and the
  # floor rates ~10 s. About 40 s; 1.5 minutes if Triton has to compile afresh.
  run_bench 120 benchmarks/bench_unbalanced.py --sizes 4096 65536 --dims 64 --flash-precisions tf32
  # OT-FM batch sizes on the GPU, what a torchcfm user compares against: ours on the device against
  # torchcfm's POT Sinkhorn (on the CPU: it copies the cost matrix over), at its stopThr and at our
  # accuracy, and FlashSinkhorn + torch multinomial. Small solves, ~20 s with FlashSinkhorn's
  # autotune per size.
  run_bench 90 benchmarks/bench_sampling.py --sizes 256 1024 4096 --methods ot_flow "torchcfm sinkhorn (POT)" \
    "torchcfm sinkhorn (POT), our L1" "FlashSinkhorn + torch multinomial"
  # bench_sampling: ours against torch dense + multinomial and FlashSinkhorn (TF32) + torch
  # multinomial (#17), whose autotune adds ~10 s per size (d = 32 shapes are new to it).
  run_bench 180 benchmarks/bench_sampling.py --sizes 4096 16384 65536 262144 --methods ot_flow \
    "torch dense + multinomial" "FlashSinkhorn + torch multinomial"
  # Seed paper 002's scale on one GPU (#16): one full solve at n = 2^20, d = 64, tol 1e-3, on the
  # engine, with its time and peak device memory. At the engine's lse target (2.6 ms at 65,536^2)
  # an iteration is ~0.7 s, ~30 iterations; on the FMA kernels it would take ~15 s an iteration.
  OT_FLOW_CUDA_ENGINE=tensor_cores run_bench 150 benchmarks/bench_sinkhorn.py --memory-run 1048576 --dims 64
fi
[ "$tests_rc" -eq 0 ] && exit "$engine_rc"
