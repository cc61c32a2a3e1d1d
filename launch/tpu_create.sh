#!/usr/bin/env bash
## Creates a Cloud TPU VM (one host or a pod slice) and waits until it is ready.
##
## Usage: launch/tpu_create.sh --name=NAME --zone=ZONE --accelerator_type=TYPE [flags]
##   --accelerator_type  v6e-8, v5p-16, v5litepod-16, v4-32, ...
##   --version           TPU runtime; by default from the type: v6e -> v2-alpha-tpuv6e,
##                       v5p -> v2-alpha-tpuv5, v5litepod (v5e) -> v2-alpha-tpuv5-lite,
##                       v4 -> tpu-ubuntu2204-base (other types need --version)
##   --queued            ask through a queued resource (waits in line for capacity;
##                       the node id is NAME too), else a plain `tpu-vm create`
##   --spot | --reserved spot capacity, or your reservation
##   --project=P         else gcloud's configured project
##   --timeout=SECONDS   how long to wait for ACTIVE / READY (default 3600)
##   --poll=SECONDS      between state checks (default 30)
##   --dry-run           print the commands, run nothing      --help  this text
## Flag names take - or _ alike.
# shellcheck source=launch/common.sh
. "$(dirname "$0")/common.sh"

name='' zone='' project='' accelerator_type='' version='' timeout=3600 poll=30
queued=0 spot=0 reserved=0
FLAGS='name zone project accelerator_type version timeout poll'
SWITCHES='queued spot reserved'
parse_flags "$@"
for flag in timeout poll; do
  case ${!flag} in '' | *[!0-9]*) die "--$flag takes whole seconds (got '${!flag}')" ;; esac
done
[ "$poll" -ge 1 ] || die "--poll must be 1 second or more (got $poll): gcloud would be asked without a pause"
need name '<tpu-name>'
set_where
need accelerator_type '<accelerator-type>'
if [ -z "$version" ]; then
  # The runtime the Cloud TPU docs name for each generation.
  case $accelerator_type in
    v6e-*) version=v2-alpha-tpuv6e ;;
    v5p-*) version=v2-alpha-tpuv5 ;;
    v5litepod-*) version=v2-alpha-tpuv5-lite ;;
    v4-*) version=tpu-ubuntu2204-base ;;
    '<accelerator-type>') version='<runtime-version>' ;;
    *) die "unknown accelerator type '$accelerator_type': expected v6e-N, v5p-N, v5litepod-N (v5e) or v4-N, or give --version" ;;
  esac
fi
[ "$spot" = 0 ] || [ "$reserved" = 0 ] || die "--spot and --reserved exclude each other"
capacity=()
if [ "$spot" = 1 ]; then capacity=(--spot); fi
if [ "$reserved" = 1 ]; then capacity=(--reserved); fi

# wait_for_state STATE describe-command...: polls until the command prints STATE.
# A queued resource is ACTIVE once its TPU VM exists; a plain TPU VM is READY.
wait_for_state() {
  local want=$1 state='' last='' waited=0 start=$SECONDS
  shift
  show "$@"
  echo "# ... every $poll s until it prints $want, for at most $timeout s"
  if [ "$DRY_RUN" = 1 ]; then return 0; fi
  while :; do
    waited=$((SECONDS - start))  # the clock's, gcloud's own time included
    state=$("$@") || die "could not read the state of $name (gcloud's message is above)"
    if [ "$state" = "$want" ]; then echo "# $name is $want after $waited s"; return 0; fi
    case $state in
      FAILED | SUSPENDING | SUSPENDED | PREEMPTED | TERMINATED)
        die "$name is $state: delete it with launch/tpu_delete.sh and try again" ;;
    esac
    if [ "$state" != "$last" ]; then echo "# $name is ${state:-not there yet} after $waited s"; fi
    last=$state
    if [ "$waited" -ge "$timeout" ]; then
      die "$name is still ${state:-not there} after $timeout s; it stays requested: wait with --timeout, or delete it with launch/tpu_delete.sh"
    fi
    sleep "$poll"
  done
}

if [ "$queued" = 1 ]; then
  run gcloud compute tpus queued-resources create "$name" --node-id="$name" "${WHERE[@]}" \
    --accelerator-type="$accelerator_type" --runtime-version="$version" ${capacity[@]+"${capacity[@]}"}
  wait_for_state ACTIVE gcloud compute tpus queued-resources describe "$name" "${WHERE[@]}" \
    --format='value(state.state)'
else
  run gcloud compute tpus tpu-vm create "$name" "${WHERE[@]}" \
    --accelerator-type="$accelerator_type" --version="$version" ${capacity[@]+"${capacity[@]}"}
  wait_for_state READY gcloud compute tpus tpu-vm describe "$name" "${WHERE[@]}" \
    --format='value(state)'
fi
echo "# next: launch/tpu_setup.sh --name=$name ${WHERE[*]}"
