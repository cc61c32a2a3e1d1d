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
##   --dry-run           print the commands, run nothing      --help  this text
##   -- FLAG...          passed on to the experiment: -- --config.train.batch_size=1024
## Flag names take - or _ alike.
# shellcheck source=launch/common.sh
. "$(dirname "$0")/common.sh"

name='' zone='' project='' experiment=demo config='' workdir='' detach=0
FLAGS='name zone project experiment config workdir'
SWITCHES='detach'
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
run gcloud compute tpus tpu-vm ssh "$name" "${WHERE[@]}" --worker=all --command="$command"
if [ "$detach" = 1 ]; then
  echo "# started; follow it: launch/tpu_logs.sh --name=$name ${WHERE[*]}"
  echo "# stop it: gcloud compute tpus tpu-vm ssh $name ${WHERE[*]} --worker=all --command='kill \$(cat $REMOTE_LOGS/$run.pid)'"
fi
