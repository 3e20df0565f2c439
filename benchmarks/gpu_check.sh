#!/usr/bin/env bash
# The GPU rows of benchmarks/RESULTS.md in one call on a machine with a GPU: QMIX on SMAX
# (qmix_smax_throughput.py, PyMARL2 and JaxMARL settings, issue 10), DQN on MinAtar
# (dqn_minatar_throughput.py) and grouped vs patch convolutions under a seed vmap (vmapped_conv.py).
# Every program is compiled first, by parallel processes that fill one persistent compilation cache
# (compilation is CPU work and the machine has many cores); then each benchmark runs alone on the
# GPU, loads its programs from that cache and times its chunks.
#
# Usage, from the repository root: bash benchmarks/gpu_check.sh OUTDIR
#   OUTDIR gets log.txt (everything printed), pytest.txt, dmon.txt (GPU utilization each second)
#   and logs.tgz (one log per compiling process). Python packages the machine lacks can come as
#   wheels in .whl/ (installed into /tmp/site first); wheels in .whl/fallback/ are installed only if
#   the smoke test fails without them (e.g. flax/optax/chex at the versions plastix pins). The call
#   of 2026-12-04 (H200 image: jax 0.11.2, Python 3.12) carried, fetched with `pip download --no-deps
#   --only-binary=:all: --python-version 3.12 ...`: gymnax 1.0.1, gymnasium 1.3.0,
#   farama-notifications 0.0.6, jaxmarl 0.2.0, flashbax 0.1.3; fallback flax 0.12.8, optax 0.2.8,
#   chex 0.1.92 (not needed).
# A real run goes last: PAPER_CELL (the arguments of `plastix run`, "" skips it; default QMIX alone on
#   smax-task-drift at paper scale, 8 seeds, 800k env steps each: the replay of 5,000 battles per
#   seed, checkpoints and evaluation of a paper-scale run), timed end to end after a first run of the
#   same command during compilation (its programs then come from the cache), each chunk's end taken
#   from its checkpoint's time (PAPER_LIMIT s, 150).
# Settings (environment): PYTHON (python3), BUDGET (s for the whole script, 560), WARM_LIMIT (s, 240),
#   WARM_JOBS (compiling processes at a time, 6: XLA:GPU compiles with several threads; with 13 at
#   once on 16 cores a QMIX program took 90-215+ s, one alone about 45 s),
#   QMIX_ENVS, QMIX_SEEDS ("1 8 32"), QMIX_CHUNK (periods, 1), JAXMARL_SEEDS ("1 8"), JAXMARL_CHUNK (4),
#   DQN_SEEDS ("1 8 64"), DQN_CHUNK (periods, 5), PROFILE_SEEDS (seeds of the traced DQN chunk, 64),
#   CONV_SEEDS (seeds of vmapped_conv.py, "1 8 64"); an empty list skips its step(s),
#   REPEATS (timed chunks per program, 2), TESTS (test files run on the GPU; output in
#   OUTDIR/pytest.txt), TEST_WORKERS (pytest-xdist processes, 8), JAX_TEST_PLATFORM (cuda).
# Steps after compiling, each within what is left of BUDGET, most wanted first: the GPU tests (run
# during compilation when TESTS_WHILE_COMPILING=1, the default), QMIX (PyMARL2 settings), the paper
# cell, the convolution micro-benchmark, the DQN profile, QMIX at JaxMARL settings, DQN scaling.
set -u
out=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
exec > >(tee -a "$out/log.txt") 2>&1
start=$SECONDS
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-560}
WARM_LIMIT=${WARM_LIMIT:-240}
WARM_JOBS=${WARM_JOBS:-6}
QMIX_ENVS=${QMIX_ENVS-smax-drift smax/3s_vs_5z}  # the 5-unit programs compile slowest: first
QMIX_SEEDS=${QMIX_SEEDS-1 8 32}
QMIX_CHUNK=${QMIX_CHUNK:-1}
JAXMARL_SEEDS=${JAXMARL_SEEDS-1 8}
JAXMARL_CHUNK=${JAXMARL_CHUNK:-4}
DQN_SEEDS=${DQN_SEEDS-1 8 64}
DQN_CHUNK=${DQN_CHUNK:-5}
PROFILE_SEEDS=${PROFILE_SEEDS-64}
CONV_SEEDS=${CONV_SEEDS-1 8 64}
PAPER_CELL=${PAPER_CELL-smax-task-drift --scale paper --mixers qmix --methods none --seeds 8 --env-steps 800000}
PAPER_LIMIT=${PAPER_LIMIT:-150}
TESTS_WHILE_COMPILING=${TESTS_WHILE_COMPILING:-1}
REPEATS=${REPEATS:-2}
TESTS=${TESTS-tests/test_metrics_arrays.py tests/test_metrics_network.py tests/test_knife.py tests/test_recurrent_mixer.py}
TEST_WORKERS=${TEST_WORKERS:-8}
JAX_TEST_PLATFORM=${JAX_TEST_PLATFORM:-cuda}
work=$(mktemp -d)
cache=$work/cache
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}

install() { "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$@"; }
smoke() {
  timeout 120 "$PY" - <<'EOF'
import time
t = time.time()
import chex, flax, jax, optax
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, "chex", chex.__version__)
print("devices", jax.devices())
import dqn_minatar_throughput, qmix_smax_throughput  # noqa: F401  (plastix, gymnax, jaxmarl)
import plastix.cli, tyro  # noqa: F401  (the paper cell runs through the CLI)
from plastix.envs import make_env
make_env("smax-drift"), make_env("Breakout-MinAtar")
print(f"smoke test passed in {time.time() - t:.1f} s")
EOF
}
left() { echo $((BUDGET - (SECONDS - start))); }
plastix() { "$PY" -c 'import sys; from plastix.cli import main; sys.exit(main(sys.argv[1:]))' "$@"; }

echo "== $(date -u +%FT%TZ) gpu_check on $(hostname), $(nproc) cores"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
if compgen -G ".whl/*.whl" >/dev/null; then install .whl/*.whl || exit 2; fi
if ! smoke; then
  compgen -G ".whl/fallback/*.whl" >/dev/null && install .whl/fallback/*.whl && smoke || { echo "smoke test failed"; exit 3; }
fi

if command -v nvidia-smi >/dev/null; then
  nvidia-smi dmon -s u -d 1 >"$out/dmon.txt" 2>&1 &
  dmon=$!
fi
echo "== compiling in parallel (limit ${WARM_LIMIT} s each), $(left) s left"
warming=()
warm() {
  local name=$1
  shift
  while [ "$(jobs -rp | wc -l)" -gt "$WARM_JOBS" ]; do wait -n; done  # WARM_JOBS + nvidia-smi dmon
  (
    timeout "$WARM_LIMIT" "$PY" "$@" --cache "$cache" --warm >"$work/warm_$name.log" 2>&1
    echo "  $name: exit $? at $((SECONDS - start)) s"
  ) &
  warming+=($!)
}
if [ -n "$PAPER_CELL" ]; then  # compiles the cell's programs into the cache (and runs it once)
  (
    PLASTIX_COMPILATION_CACHE=$cache timeout "$WARM_LIMIT" bash -c "$(declare -f plastix); PY=$PY plastix run $PAPER_CELL --name warm --runs-dir $work/runs" >"$work/warm_paper.log" 2>&1
    echo "  paper cell (first run): exit $? at $((SECONDS - start)) s"
  ) &
  warming+=($!)
fi
for env in $QMIX_ENVS; do
  for s in $QMIX_SEEDS; do
    warm "qmix_${env##*/}_$s" benchmarks/qmix_smax_throughput.py --envs "$env" --seeds "$s" --skip-overhead --chunk-periods "$QMIX_CHUNK"
  done
  [ "$env" = smax-drift ] && warm qmix_overhead benchmarks/qmix_smax_throughput.py --seeds --chunk-periods "$QMIX_CHUNK"
done
for s in $JAXMARL_SEEDS; do
  warm "qmix_jaxmarl_$s" benchmarks/qmix_smax_throughput.py --settings jaxmarl --seeds "$s" --chunk-periods "$JAXMARL_CHUNK"
done
for s in $DQN_SEEDS; do
  warm "dqn_$s" benchmarks/dqn_minatar_throughput.py --seeds "$s" --skip-overhead --chunk-periods "$DQN_CHUNK"
done
[ -n "$DQN_SEEDS" ] && warm dqn_overhead benchmarks/dqn_minatar_throughput.py --seeds --chunk-periods "$DQN_CHUNK"
[ -n "$CONV_SEEDS" ] && warm conv benchmarks/vmapped_conv.py --seeds $CONV_SEEDS
[ -n "$PROFILE_SEEDS" ] && warm dqn_profile benchmarks/dqn_minatar_throughput.py --seeds "$PROFILE_SEEDS" --skip-overhead --chunk-periods 1

limit() {  # seconds for the next step: at most $1, at most what is left
  local want=$1 remaining
  remaining=$(left)
  echo $((want < remaining ? want : remaining))
}
# Tests whose code has backend-dependent branches or float tolerances, on the GPU (conftest picks the
# CPU unless JAX_PLATFORMS says otherwise); -v names each result as it comes, so a step cut off by its
# limit still says which tests failed (their tracebacks are in pytest.txt when pytest ends).
run_tests() {  # $1: limit in seconds, $2: pytest workers
  echo "== $(date -u +%T) (limit $1 s) tests on $JAX_TEST_PLATFORM: $TESTS"
  JAX_PLATFORMS=$JAX_TEST_PLATFORM timeout "$1" "$PY" -m pytest -v -rfE -p no:cacheprovider --tb=short -n "$2" $TESTS >"$out/pytest.txt" 2>&1
  echo "  tests: exit $? at $((SECONDS - start)) s: $(tail -1 "$out/pytest.txt")"
  grep -E "^\[gw[0-9]+\].* (FAILED|ERROR) " "$out/pytest.txt" | sed 's/^/  /'  # names, even when cut off
}
if [ -n "$TESTS" ] && [ "$TESTS_WHILE_COMPILING" = 1 ]; then
  run_tests "$WARM_LIMIT" 4 &
  warming+=($!)
fi
wait "${warming[@]}"  # not a bare wait: that would wait for dmon and the log's tee too
echo "  cache: $(find "$cache" -type f 2>/dev/null | wc -l) files, $(du -sh "$cache" 2>/dev/null | cut -f1)"
rm -rf "$work/runs/warm"  # a paper-scale checkpoint is ~12 GB

timed() {  # at most $1 seconds, then the benchmark command
  local seconds
  seconds=$(limit "$1")
  shift
  echo "== $(date -u +%T) (limit ${seconds} s) $*"
  if [ "$seconds" -lt 20 ]; then
    echo "  skipped: too little time left"
    return
  fi
  timeout "$seconds" "$PY" "$@" --cache "$cache" --repeats "$REPEATS"
  echo "  exit $?"
}
if [ -n "$TESTS" ] && [ "$TESTS_WHILE_COMPILING" != 1 ]; then
  seconds=$(limit 150)
  if [ "$seconds" -ge 20 ]; then run_tests "$seconds" "$TEST_WORKERS"; else echo "== tests skipped: too little time left"; fi
fi
[ -n "$QMIX_ENVS" ] && [ -n "$QMIX_SEEDS" ] && timed 150 benchmarks/qmix_smax_throughput.py --envs $QMIX_ENVS --seeds $QMIX_SEEDS --chunk-periods "$QMIX_CHUNK"
[ -n "$QMIX_ENVS" ] && [ -z "$QMIX_SEEDS" ] && timed 100 benchmarks/qmix_smax_throughput.py --seeds --chunk-periods "$QMIX_CHUNK"
# The paper cell again, alone, programs from the cache: wall time end to end, and each checkpoint's
# time (a checkpoint is written after every chunk but the last) polled every second.
seconds=$(limit "$PAPER_LIMIT")
if [ -n "$PAPER_CELL" ] && [ "$seconds" -ge 30 ]; then
  echo "== $(date -u +%T) (limit ${seconds} s) plastix run $PAPER_CELL"
  runs=$work/runs
  paper_start=$SECONDS
  (
    seen=""
    while sleep 1; do
      for f in "$runs"/timed/*/*/rows-*.parquet "$runs"/timed/*/rows-*.parquet; do
        [ -e "$f" ] || continue
        case " $seen " in *" $f "*) continue ;; esac
        seen="$seen $f"
        echo "  checkpoint $(basename "$f") at $((SECONDS - paper_start)) s, $(du -sh "$(dirname "$f")" 2>/dev/null | cut -f1) on disk"
      done
    done
  ) &
  poller=$!
  PLASTIX_COMPILATION_CACHE=$cache timeout "$seconds" bash -c "$(declare -f plastix); PY=$PY plastix run $PAPER_CELL --name timed --runs-dir $runs"
  echo "  exit $? after $((SECONDS - paper_start)) s (the first run: $(grep -E 'chunks' "$work/warm_paper.log" | tail -1))"
  kill "$poller" 2>/dev/null
  cp "$runs"/timed/report.md "$out/paper_report.md" 2>/dev/null
  nvidia-smi --query-gpu=memory.used --format=csv 2>/dev/null | tail -1 | sed 's/^/  GPU memory in use now: /'
elif [ -n "$PAPER_CELL" ]; then
  echo "== paper cell skipped: too little time left"
fi
if [ -n "$CONV_SEEDS" ]; then  # grouped vs patches convolutions under a seed vmap (the DQN seed-scaling lead)
  seconds=$(limit 60)
  echo "== $(date -u +%T) (limit ${seconds} s) benchmarks/vmapped_conv.py --seeds $CONV_SEEDS"
  if [ "$seconds" -ge 20 ]; then
    timeout "$seconds" "$PY" benchmarks/vmapped_conv.py --seeds $CONV_SEEDS --cache "$cache" --repeats 20
    echo "  exit $?"
  else
    echo "  skipped: too little time left"
  fi
fi
# DQN's seed scaling misses issue 4's GPU targets: where a 64-seed chunk's GPU time goes, by kernel
[ -n "$PROFILE_SEEDS" ] && timed 90 benchmarks/dqn_minatar_throughput.py --seeds --skip-overhead --chunk-periods 1 --profile-seeds "$PROFILE_SEEDS"
[ -n "$JAXMARL_SEEDS" ] && timed 70 benchmarks/qmix_smax_throughput.py --settings jaxmarl --seeds $JAXMARL_SEEDS --chunk-periods "$JAXMARL_CHUNK"
[ -n "$DQN_SEEDS" ] && timed 150 benchmarks/dqn_minatar_throughput.py --seeds $DQN_SEEDS --chunk-periods "$DQN_CHUNK"
[ -n "${dmon:-}" ] && kill "$dmon" 2>/dev/null
tar czf "$out/logs.tgz" -C "$work" --exclude cache --exclude runs . 2>/dev/null
echo "== done in $((SECONDS - start)) s"
