#!/bin/sh
# Prints a safe number of parallel compile jobs: one per core, but no more than the available
# memory allows at about 2 GiB per job (a .cpp including torch's headers takes 1-2 GiB; ninja
# with one job per core on a many-core, small-memory build node is how builds get OOM-killed).
cores=$(nproc 2>/dev/null || echo 1)
avail_kib=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo 2>/dev/null)
jobs=$cores
if [ -n "$avail_kib" ]; then
    by_memory=$((avail_kib / (2 * 1024 * 1024)))
    [ "$by_memory" -lt "$jobs" ] && jobs=$by_memory
fi
[ "$jobs" -lt 1 ] && jobs=1
echo "$jobs"
