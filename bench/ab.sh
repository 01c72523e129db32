#!/usr/bin/env bash
# A/B of a bench script: an older commit against the working tree, in ABBA order.
#
#   bench/ab.sh REV PAIRS SCRIPT [ARGS...]
#   bench/ab.sh 1e399ef 3 drain_bench.py ""        (bench/ab_drain.sh REV PAIRS)
#   bench/ab.sh 1d57c71 3 latency_bench.py 40000
#
# SCRIPT is a file of bench/ that prints markdown tables; the last line of
# the last one is its result. The VM's speed moves between runs by more than
# most changes, so a change is measured by pairs run back to back, one fresh
# local stack per run. The old side runs the working tree's SCRIPT but
# imports tokenpulse from a worktree of REV: a sitecustomize on PYTHONPATH
# drops the editable install's finder and puts the worktree first; the
# worker subprocess inherits it. Runs from a scratch directory, because
# `python -m` (how the bench starts the worker) would otherwise import the
# checkout in the current directory.
set -euo pipefail
rev=${1:?usage: bench/ab.sh REV PAIRS SCRIPT [ARGS...]}
pairs=${2:?usage: bench/ab.sh REV PAIRS SCRIPT [ARGS...]}
script=${3:?usage: bench/ab.sh REV PAIRS SCRIPT [ARGS...]}
shift 3
repo=$(cd "$(dirname "$0")/.." && pwd)
py="$repo/.venv/bin/python"
scratch=$(mktemp -d /tmp/tp-ab.XXXXXX)
trap 'git -C "$repo" worktree remove --force "$scratch/old" >/dev/null 2>&1 || true; rm -rf "$scratch"' EXIT
git -C "$repo" worktree add --detach -q "$scratch/old" "$rev"
mkdir -p "$scratch/path"
cat > "$scratch/path/sitecustomize.py" <<PY
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "Editable" not in getattr(f, "__name__", "")]
sys.path.insert(0, "$scratch/old")
PY
cd "$scratch"
run() {  # label, then the environment prefix (if any) of the run
  local label=$1 out
  shift
  out=$(env "$@" "$py" "$repo/bench/$script" "${script_args[@]}" 2>/dev/null)
  if [ -z "${header_done:-}" ]; then
    # The header of the last table (the one the result line ends).
    echo "$out" | tac | awk '/^\|/ { print; n++; next } n { exit }' | tac | head -2 |
      sed '1s/^| /| side | /; 2s/^|/| --- |/'
    header_done=1
  fi
  echo "$out" | tail -1 | sed "s/^/| $label /"
}
script_args=("$@")
# ABBA: the side that runs first swaps every pair. Runs back to back are not
# independent (the second of two drains in one round 8 check was the slower
# one in 5 of 6 pairs, whichever it was), so a fixed order favours a side.
for i in $(seq "$pairs"); do
  if [ $((i % 2)) -eq 1 ]; then
    run "$rev" PYTHONPATH="$scratch/path"
    run "HEAD+tree"
  else
    run "HEAD+tree"
    run "$rev" PYTHONPATH="$scratch/path"
  fi
done
