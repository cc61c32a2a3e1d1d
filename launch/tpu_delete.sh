#!/usr/bin/env bash
## Deletes a TPU VM made by launch/tpu_create.sh (gcloud asks to confirm, unless --yes).
##
## Usage: launch/tpu_delete.sh --name=NAME --zone=ZONE [flags]
##   --queued     it was made with --queued: delete the queued resource and, with
##                --force, its TPU VM
##   --yes        do not ask (gcloud --quiet)
##   --async      return without waiting for the deletion to finish
##   --project=P  else gcloud's configured project
##   --dry-run    print the command, run nothing      --help  this text
## Flag names take - or _ alike.
# shellcheck source=launch/common.sh
. "$(dirname "$0")/common.sh"

name='' zone='' project='' queued=0 yes=0 async=0
FLAGS='name zone project'
SWITCHES='queued yes async'
parse_flags "$@"
need name '<tpu-name>'
set_where
extra=()
if [ "$yes" = 1 ]; then extra+=(--quiet); fi
if [ "$async" = 1 ]; then extra+=(--async); fi
if [ "$queued" = 1 ]; then
  run gcloud compute tpus queued-resources delete "$name" "${WHERE[@]}" --force ${extra[@]+"${extra[@]}"}
else
  run gcloud compute tpus tpu-vm delete "$name" "${WHERE[@]}" ${extra[@]+"${extra[@]}"}
fi
