#!/usr/bin/env bash
## Runs an experiment on every worker of a TPU VM at once, one JAX process per worker:
##   python -m experiments.EXPERIMENT --config=CONFIG --workdir=gs://... --distributed=auto
## (jax.distributed.initialize() finds the other workers of a Cloud TPU by itself).
##
## Usage: launch/tpu_run.sh --name=NAME --zone=ZONE --workdir=gs://BUCKET/RUN [flags] [-- FLAG...]
##   --experiment=demo   coco, flickr30k or demo
##   --config=PATH[:ARG] default experiments/configs/EXPERIMENT.py
##   --workdir=gs://...  the run directory: one for all workers, so in a bucket
##   --detach            start in the background (nohup) and return; each worker writes
##                       the output to ~/gralign_logs/RUN.log (RUN: the workdir's last
##                       part, also linked as latest.log), which launch/tpu_logs.sh follows
##   --project=P         else gcloud's configured project
##   --until_done        a spot / preemptible TPU: when the run ends with the TPU
##                       PREEMPTED or TERMINATED (or the queued resource SUSPENDED), or
##                       exits 75 (a preemption notice, saved), delete the TPU, create it
##                       again (tpu_create.sh with the flags below), set it up
##                       (tpu_setup.sh) and run the same command, which resumes from the
##                       bucket; until the run ends well, or fails for another reason
##   --accelerator_type=T, --version=V, --queued, --spot, --reserved
##                       with --until_done: how to create the TPU again (tpu_create.sh)
##   --max_restarts=10   with --until_done: give up after this many
##   --dry-run           print the commands, run nothing      --help  this text
##   -- FLAG...          passed on to the experiment: -- --config.train.batch_size=1024
## Flag names take - or _ alike.
# shellcheck source=launch/common.sh
. "$(dirname "$0")/common.sh"

name='' zone='' project='' experiment=demo config='' workdir='' detach=0 until_done=0
accelerator_type='' version='' queued=0 spot=0 reserved=0 max_restarts=10
FLAGS='name zone project experiment config workdir accelerator_type version max_restarts'
SWITCHES='detach until_done queued spot reserved'
parse_flags "$@"
need name '<tpu-name>'
set_where
case $experiment in
  coco | flickr30k | demo) ;;
  *) die "unknown --experiment '$experiment': expected coco, flickr30k or demo" ;;
esac
config=${config:-experiments/configs/$experiment.py}
need workdir 'gs://<bucket>/<run>'
case $workdir in
  gs://?*) ;;
  *) die "--workdir must be a gs:// path, one run directory that every worker reads and writes (got '$workdir')" ;;
esac

# The command each worker runs from its home folder, every word quoted for its shell.
python="../$REMOTE_VENV/bin/python -m experiments.$experiment"
for a in "--config=$config" "--workdir=$workdir" --distributed=auto ${ARGS[@]+"${ARGS[@]}"}; do
  python="$python $(quote "$a" double)"
done
if [ "$detach" = 1 ]; then
  run=${workdir%/}
  run=${run##*/}
  run=${run//[!A-Za-z0-9._-]/_}
  log=$REMOTE_LOGS/$run.log
  # ./: a name that starts with - is a file, not an option of ln.
  command="mkdir -p $REMOTE_LOGS && ln -sfn ./$run.log $REMOTE_LOGS/latest.log && cd $REMOTE_CODE"
  command="$command && { nohup $python > ../$log 2>&1 < /dev/null & echo \$! > ../$REMOTE_LOGS/$run.pid; }"
else
  command="cd $REMOTE_CODE && $python"
fi
if [ "$until_done" = 1 ]; then
  [ "$detach" = 0 ] || die "--until_done waits for the run: it excludes --detach"
  case $max_restarts in '' | *[!0-9]*) die "--max_restarts takes a whole number (got '$max_restarts')" ;; esac
  need accelerator_type '<accelerator-type>'
  here=$(dirname "$0")
  where=(--name="$name" "${WHERE[@]}")
  again=(--accelerator_type="$accelerator_type")
  if [ -n "$version" ]; then again+=(--version="$version"); fi
  if [ "$queued" = 1 ]; then again+=(--queued); fi
  if [ "$spot" = 1 ]; then again+=(--spot); fi
  if [ "$reserved" = 1 ]; then again+=(--reserved); fi
  delete=(--yes)
  if [ "$queued" = 1 ]; then delete+=(--queued); fi
  restarts=0
  while :; do
    status=0
    run gcloud compute tpus tpu-vm ssh "$name" "${WHERE[@]}" --worker=all --command="$command" || status=$?
    if [ "$DRY_RUN" = 1 ]; then
      echo "# when the run ends with the TPU preempted (or exit 75), up to $max_restarts times:"
    elif [ "$status" = 0 ]; then
      echo "# the run is done (after $restarts restart(s))"
      exit 0
    fi
    show gcloud compute tpus tpu-vm describe "$name" "${WHERE[@]}" --format='value(state)'
    state=''
    if [ "$DRY_RUN" = 0 ]; then
      state=$(gcloud compute tpus tpu-vm describe "$name" "${WHERE[@]}" --format='value(state)' 2> /dev/null) || state=''
      if [ "$queued" = 1 ] && [ -z "$state" ]; then
        state=$(gcloud compute tpus queued-resources describe "$name" "${WHERE[@]}" --format='value(state.state)' 2> /dev/null) || state=''
      fi
      case $state:$status in
        PREEMPTED:* | TERMINATED:* | SUSPENDED:* | *:75) ;;
        *) die "the run on $name ended with status $status and the TPU is ${state:-not found}: not a preemption, so it is not restarted" ;;
      esac
      restarts=$((restarts + 1))
      [ "$restarts" -le "$max_restarts" ] || die "$name was preempted $restarts times: --max_restarts=$max_restarts reached; the run resumes from $workdir when started again"
      echo "# $name is ${state:-up} and the run ended with status $status: a preemption; restart $restarts of $max_restarts"
    fi
    run bash "$here/tpu_delete.sh" "${where[@]}" "${delete[@]}"
    run bash "$here/tpu_create.sh" "${where[@]}" "${again[@]}"
    run bash "$here/tpu_setup.sh" "${where[@]}"
    if [ "$DRY_RUN" = 1 ]; then
      echo "# ... and the same run again, which resumes from $workdir"
      exit 0
    fi
  done
fi
run gcloud compute tpus tpu-vm ssh "$name" "${WHERE[@]}" --worker=all --command="$command"
if [ "$detach" = 1 ]; then
  echo "# started; follow it: launch/tpu_logs.sh --name=$name ${WHERE[*]}"
  echo "# stop it: gcloud compute tpus tpu-vm ssh $name ${WHERE[*]} --worker=all --command='kill \$(cat $REMOTE_LOGS/$run.pid)'"
fi
