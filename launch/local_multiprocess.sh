#!/usr/bin/env bash
# N CPU processes on localhost, each with D fake devices, gloo collectives: a multi-host run on one machine.
#
#   launch/local_multiprocess.sh 2 2 -m humandiff.train --config configs/tiny_test.py --workdir /tmp/mp
#
# Arguments: N (processes), D (CPU devices per process), then what follows `python` for every process.
# Each process gets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID; humandiff.train calls
# jax.distributed.initialize() with them and switches CPU collectives to gloo. Logs: $LOG_DIR/proc_<i>.log.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS python-args..." >&2
  exit 2
fi
n=$1; d=$2; shift 2
port=${PORT:-$(( 20000 + RANDOM % 20000 ))}
log_dir=${LOG_DIR:-$(mktemp -d)}
python=${PYTHON:-python}
pids=()
for ((i = 0; i < n; i++)); do
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$d" \
  JAX_COORDINATOR_ADDRESS="localhost:$port" JAX_NUM_PROCESSES="$n" JAX_PROCESS_ID="$i" \
    "$python" "$@" >"$log_dir/proc_$i.log" 2>&1 &
  pids+=($!)
done
rc=0
for ((i = 0; i < n; i++)); do
  if ! wait "${pids[$i]}"; then
    echo "process $i failed; log: $log_dir/proc_$i.log" >&2
    tail -n 20 "$log_dir/proc_$i.log" >&2
    rc=1
  fi
done
echo "logs in $log_dir"
exit $rc
