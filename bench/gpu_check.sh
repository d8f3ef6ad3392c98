#!/bin/sh
# The short GPU check (see bench/gpu_check.py): every step fail-soft, the whole
# check under a hard 8-minute limit, one JSON in $OUT (or --out DIR, else bench/results).
#     bench/gpu_check.sh [--out DIR] [--dry-run]
cd "$(dirname "$0")/.." || exit 1
if command -v timeout >/dev/null 2>&1; then
    exec timeout -k 10 480 "${PYTHON:-python3}" bench/gpu_check.py "$@"
fi
exec "${PYTHON:-python3}" bench/gpu_check.py "$@"   # its own budget (460 s) still holds
