#!/usr/bin/env bash
## Starts P processes of one JAX job on this machine and waits for all of them; if one
## fails, stops the others and exits non-zero naming it and its log. Process I runs
##   COMMAND --distributed=on --coordinator_address=127.0.0.1:PORT --num_processes=P --process_id=I
## where COMMAND is `python -m experiments.demo` unless given after --.
##
## Usage: launch/local.sh [flags] [-- COMMAND...]
##   --num_processes=P            default: one per GPU that nvidia-smi lists (see
##                                --gpus_per_process), or 1 without GPUs
##   --gpus_per_process=G         process I sees GPUs I*G .. I*G+G-1 (CUDA_VISIBLE_DEVICES);
##                                default 1 where there are GPUs; 0 leaves them all visible
##   --cpu_devices_per_process=N  run on the CPU, N devices per process (JAX_PLATFORMS=cpu,
##                                XLA_FLAGS=--xla_force_host_platform_device_count=N)
##   --port=PORT                  the coordinator's port on 127.0.0.1 (default: a free
##                                one); a port something already listens on is refused,
##                                so a second job never joins the first one's coordinator
##   --log_dir=DIR                where process_I.log go (default: a new private folder,
##                                mktemp -d in $TMPDIR); process 0's output is also shown
##                                here as it comes
## When one process fails the others get SIGTERM, and SIGKILL 10 s later (JAX catches
## SIGTERM as a preemption notice and would go on).
## Preemption: SIGTERM to this script goes to every process, which save one common step
## and exit 75; this script then exits 75 too ("resume me": the same command resumes).
## A process still running $GRALIGN_PREEMPT_GRACE s (default 60) later gets SIGKILL.
##   --dry-run                    print the commands, run nothing      --help  this text
## Example, two CPU processes of four devices each:
##   launch/local.sh --num_processes=2 --cpu_devices_per_process=4 -- python -m \
##     experiments.demo --config=experiments/configs/demo.py:smoke --workdir=/tmp/smoke2
## Flag names take - or _ alike.
# shellcheck source=launch/common.sh
. "$(dirname "$0")/common.sh"

num_processes='' gpus_per_process='' cpu_devices_per_process='' port='' log_dir=''
FLAGS='num_processes gpus_per_process cpu_devices_per_process port log_dir'
SWITCHES=''
parse_flags "$@"
command=(python -m experiments.demo)
if [ ${#ARGS[@]} -gt 0 ]; then command=(${ARGS[@]+"${ARGS[@]}"}); fi
for flag in num_processes gpus_per_process cpu_devices_per_process port; do
  case ${!flag} in *[!0-9]*) die "--$flag takes a whole number (got '${!flag}')" ;; esac
done

gpus=0
if [ -z "$cpu_devices_per_process" ] && command -v nvidia-smi > /dev/null; then
  gpus=$(nvidia-smi --list-gpus | grep -c '^GPU') || gpus=0
fi
if [ -n "$cpu_devices_per_process" ]; then
  [ "${gpus_per_process:-0}" = 0 ] || die "--cpu_devices_per_process and --gpus_per_process exclude each other"
  gpus_per_process=0
elif [ -z "$gpus_per_process" ]; then
  gpus_per_process=$((gpus > 0 ? 1 : 0))
fi
if [ -z "$num_processes" ]; then
  num_processes=$((gpus_per_process > 0 && gpus >= gpus_per_process ? gpus / gpus_per_process : 1))
fi
[ "$num_processes" -ge 1 ] || die "--num_processes must be 1 or more"
[ "${cpu_devices_per_process:-1}" -ge 1 ] || die "--cpu_devices_per_process must be 1 or more"
python=$(command -v python3 || command -v python || true)
[ -n "$python" ] || die "neither python3 nor python is on PATH"
# port_check PORT: fails, saying why, where PORT cannot be this job's coordinator port.
port_check() {
  "$python" - "$1" << 'PY'
import socket, sys
port = int(sys.argv[1])
with socket.socket() as s:
  s.settimeout(1)
  if s.connect_ex(("127.0.0.1", port)) == 0:
    sys.exit(f"something listens on 127.0.0.1:{port} (another job's coordinator?)")
with socket.socket() as s:
  try:
    s.bind(("127.0.0.1", port))
  except OSError as e:
    sys.exit(f"127.0.0.1:{port} cannot be bound ({e.strerror})")
PY
}
if [ -z "$port" ]; then
  port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
elif [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
  die "--port=$port: expected a port from 1 to 65535"
elif [ "$DRY_RUN" = 0 ]; then
  why=$(port_check "$port" 2>&1) || die "--port=$port: $why; give another --port, or leave it out for a free one"
fi
if [ "$DRY_RUN" = 0 ] && [ $((num_processes * gpus_per_process)) -gt "$gpus" ]; then
  die "$num_processes processes x $gpus_per_process GPUs need $((num_processes * gpus_per_process)) GPUs; nvidia-smi lists $gpus"
fi
if [ -z "$log_dir" ]; then
  # A fresh folder of this user's own: a fixed name in a shared $TMPDIR could be one that
  # someone else made (or a symlink they planted) and would receive the logs.
  stem=${TMPDIR:-/tmp}
  if [ "$DRY_RUN" = 1 ]; then
    log_dir="${stem%/}/gralign_jax-local-XXXXXX"
    echo "+ mktemp -d $(quote "$log_dir")"
  else
    log_dir=$(mktemp -d "${stem%/}/gralign_jax-local-XXXXXX") || die "cannot make a log folder in $stem"
    echo "+ mktemp -d -> $(quote "$log_dir")"
  fi
else
  run mkdir -p "$log_dir"
fi

# Start them all. Every process gets the same coordinator; process 0 hosts it.
pids=()
for ((i = 0; i < num_processes; i++)); do
  vars=(PYTHONUNBUFFERED=1)  # so that the logs have each line as soon as it is printed
  if [ "$gpus_per_process" -gt 0 ]; then
    visible=$((i * gpus_per_process))
    for ((g = 1; g < gpus_per_process; g++)); do visible="$visible,$((i * gpus_per_process + g))"; done
    vars+=(CUDA_VISIBLE_DEVICES="$visible")
  fi
  if [ -n "$cpu_devices_per_process" ]; then
    vars+=(JAX_PLATFORMS=cpu
      XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$cpu_devices_per_process")
  fi
  argv=(env "${vars[@]}" "${command[@]}" --distributed=on --coordinator_address="127.0.0.1:$port"
    --num_processes="$num_processes" --process_id="$i")
  echo "$(show "${argv[@]}") > $(quote "$log_dir/process_$i.log") 2>&1 &"
  if [ "$DRY_RUN" = 0 ]; then
    "${argv[@]}" > "$log_dir/process_$i.log" 2>&1 &
    pids[i]=$!
  fi
done
if [ "$DRY_RUN" = 1 ]; then exit 0; fi

# Stops the processes still running, by the ids they were started with: SIGTERM, then
# SIGKILL for those still there 10 s later (JAX takes SIGTERM as a preemption notice).
stop_all() {
  local pid left=0 waited=0
  for pid in ${pids[@]+"${pids[@]}"}; do
    if [ -n "$pid" ]; then kill "$pid" 2> /dev/null || true; fi
  done
  while :; do
    left=0
    for pid in ${pids[@]+"${pids[@]}"}; do
      if [ -n "$pid" ] && kill -0 "$pid" 2> /dev/null; then left=1; fi
    done
    if [ "$left" = 0 ] || [ "$waited" -ge 20 ]; then break; fi
    sleep 0.5
    waited=$((waited + 1))
  done
  if [ "$left" = 1 ]; then
    echo "# still running 10 s after SIGTERM: SIGKILL"
    for pid in ${pids[@]+"${pids[@]}"}; do
      if [ -n "$pid" ]; then kill -9 "$pid" 2> /dev/null || true; fi
    done
  fi
  wait 2> /dev/null || true
}
trap 'stop_all; exit 130' INT
# A preemption notice: every process saves the same step and exits 75 (the loop below
# waits for them), unless the grace runs out.
grace=${GRALIGN_PREEMPT_GRACE:-60}
case $grace in '' | *[!0-9]*) die "\$GRALIGN_PREEMPT_GRACE takes whole seconds (got '$grace')" ;; esac
notice_at=''
preempt() {
  local pid
  notice_at=$SECONDS
  echo "# SIGTERM: passed to every process, which save one step and stop (up to ${grace} s)"
  for pid in ${pids[@]+"${pids[@]}"}; do
    if [ -n "$pid" ]; then kill -TERM "$pid" 2> /dev/null || true; fi
  done
}
trap preempt TERM

# Shows what process 0 wrote since the last call: its log, streamed.
shown=0
show_output() {
  local size
  size=$(wc -c < "$log_dir/process_0.log")
  size=$((size))  # macOS wc pads the number with spaces
  if [ "$size" -gt "$shown" ]; then
    tail -c +"$((shown + 1))" "$log_dir/process_0.log" | head -c "$((size - shown))" || true
    shown=$size
  fi
}

# bash 3.2 has no `wait -n`: poll each process; `wait PID` then gives its exit status.
left=$num_processes preempted=0
while [ "$left" -gt 0 ]; do
  sleep 0.5
  show_output
  if [ -n "$notice_at" ] && [ $((SECONDS - notice_at)) -gt "$grace" ]; then
    echo "# still running ${grace} s after the preemption notice: SIGKILL"
    for pid in ${pids[@]+"${pids[@]}"}; do
      if [ -n "$pid" ]; then kill -9 "$pid" 2> /dev/null || true; fi
    done
    wait 2> /dev/null || true
    exit 143
  fi
  for ((i = 0; i < num_processes; i++)); do
    pid=${pids[i]}
    if [ -z "$pid" ] || kill -0 "$pid" 2> /dev/null; then continue; fi
    status=0
    wait "$pid" || status=$?
    pids[i]=''
    left=$((left - 1))
    if [ "$status" = 75 ]; then  # preempted and saved: the others stop at the same step
      preempted=1
    elif [ "$status" != 0 ]; then
      show_output
      stop_all
      log=$log_dir/process_$i.log
      if [ "$i" != 0 ]; then echo "# the last lines of $log:"; tail -n 20 "$log"; fi
      die "process $i of $num_processes exited with status $status; its log: $log (the others were stopped)"
    fi
  done
done
if [ "$preempted" = 1 ]; then
  echo "# preempted: every process saved the same step and stopped (exit 75); the same command resumes. Logs: $log_dir/process_*.log"
  exit 75
fi
echo "# all $num_processes processes finished; their logs: $log_dir/process_*.log"
