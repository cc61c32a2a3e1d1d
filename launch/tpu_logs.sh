#!/usr/bin/env bash
## Streams the output of a run started with launch/tpu_run.sh --detach (tail -F over ssh;
## Ctrl-C stops the streaming, not the run).
##
## Usage: launch/tpu_logs.sh --name=NAME --zone=ZONE [flags]
##   --worker=0      which worker's log (a number, or all: every worker's, interleaved)
##   --run=latest    which run: the last part of its workdir (default the latest started)
##   --lines=100     how many lines of the past to show first
##   --project=P     else gcloud's configured project
##   --dry-run       print the command, run nothing      --help  this text
## Flag names take - or _ alike.
# shellcheck source=launch/common.sh
. "$(dirname "$0")/common.sh"

name='' zone='' project='' worker=0 run=latest lines=100
FLAGS='name zone project worker run lines'
SWITCHES=''
parse_flags "$@"
need name '<tpu-name>'
set_where
# -F, not -f: follows the file by name, so latest.log pointing at a newer run still works.
run gcloud compute tpus tpu-vm ssh "$name" "${WHERE[@]}" --worker="$worker" \
  --command="tail -n $(quote "$lines" double) -F $(quote "$REMOTE_LOGS/$run.log" double)"
