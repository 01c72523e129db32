#!/usr/bin/env bash
# A/B of the worker's drain rate: an older commit against the working tree, alternating.
#
#   bench/ab_drain.sh REV [PAIRS]      e.g. bench/ab_drain.sh 1e399ef 3
#
# The VM's speed moves between runs by more than most changes, so a change is
# measured by pairs run back to back (bench/drain_bench.py, defaults, one
# fresh local stack per run). The old side imports tokenpulse from a worktree
# of REV: a sitecustomize on PYTHONPATH drops the editable install's finder
# and puts the worktree first; the worker subprocess inherits it. Runs from a
# scratch directory, because `python -m` (how the bench starts the worker)
# would otherwise import the checkout in the current directory.
set -euo pipefail
rev=${1:?usage: bench/ab_drain.sh REV [PAIRS]}
pairs=${2:-3}
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
echo "| side | variant | events/s | x first | worker us/event | ClickHouse us/event | Kafka us/event | machine busy |"
for _ in $(seq "$pairs"); do
  PYTHONPATH="$scratch/path" "$py" "$repo/bench/drain_bench.py" "" 2>/dev/null | tail -1 | sed "s/^/| $rev /"
  "$py" "$repo/bench/drain_bench.py" "" 2>/dev/null | tail -1 | sed "s/^/| HEAD+tree /"
done
