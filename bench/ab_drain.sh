#!/usr/bin/env bash
# A/B of the worker's drain rate: an older commit against the working tree, in ABBA order.
#
#   bench/ab_drain.sh REV [PAIRS]      e.g. bench/ab_drain.sh 1e399ef 3
#
# bench/drain_bench.py with the defaults, in pairs (see bench/ab.sh).
set -euo pipefail
exec "$(dirname "$0")/ab.sh" "${1:?usage: bench/ab_drain.sh REV [PAIRS]}" "${2:-3}" drain_bench.py ""
