#!/usr/bin/env bash
# The GPU run in one command: GPU tests, zoo correctness check, benchmark. Each stage
# tees its output into $OUT (default benchmarks/gpu/out); the tables also land in
# $OUT/check_zoo.md, $OUT/tune_check.md, $OUT/bench.md and $OUT/models.md. Stages to run are the arguments (default: all):
#
#   bash benchmarks/gpu/run_all.sh                 # tests check bench (~10-12 min on an H200)
#   bash benchmarks/gpu/run_all.sh tests check     # under 10 minutes: split the run in two calls
#   bash benchmarks/gpu/run_all.sh tune            # the real tuner on 3 kernels (tune_check.py)
#   bash benchmarks/gpu/run_all.sh bench --models mlp,gpt2_block   # args after "bench" go to bench.py
#   bash benchmarks/gpu/run_all.sh models --resume  # real models, fp16 (models.py; args after it go there);
#                                                   # again with --resume until no row says "not run"
#
# Every stage runs even if an earlier one fails; the exit status is the worst of them.
set -u
cd "$(dirname "$0")/../.."
export OUT="${OUT:-benchmarks/gpu/out}"
export TILEFX_CACHE_DIR="${TILEFX_CACHE_DIR:-/tmp/tilefx-cache}"  # generated kernels stay out of $OUT
mkdir -p "$OUT"
stages=("$@"); [ ${#stages[@]} -eq 0 ] && stages=(tests check bench)
status=0
run() {  # run NAME SECONDS CMD...: one stage, its log in $OUT/NAME.log
    local name=$1 seconds=$2; shift 2
    echo "== $name: $*" | tee "$OUT/$name.log"
    local t0=$SECONDS
    timeout "$seconds" "$@" 2>&1 | tee -a "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/$name.log"
    [ "$rc" -gt "$status" ] && status=$rc
}
while [ ${#stages[@]} -gt 0 ]; do
    stage=${stages[0]}; stages=("${stages[@]:1}")
    case "$stage" in
        tests) run gpu_tests 300 python -m pytest -q -m gpu tests/codegen/triton_backend tests/autotune/test_tuner_cuda.py ;;
        tune) run tune_check 300 python benchmarks/gpu/tune_check.py ;;
        check) run check_zoo 420 python benchmarks/gpu/check_zoo.py ;;
        bench) run bench 480 python benchmarks/gpu/bench.py "${stages[@]}"; stages=() ;;
        models) run models 590 python benchmarks/gpu/models.py --dtype fp16 --deadline 550 "${stages[@]}"; stages=() ;;
        *) echo "unknown stage $stage (use tests, check, tune, bench, models)"; exit 2 ;;
    esac
done
exit "$status"
