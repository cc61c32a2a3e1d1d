#!/usr/bin/env bash
## Copies this checkout to every worker of a TPU VM and installs it there: a Python 3.12
## virtual environment (~/gralign_venv) with jax[tpu] and this package (pip -e '.[tpu]').
##
## Usage: launch/tpu_setup.sh --name=NAME --zone=ZONE [--project=P] [--copy_only] [--dry-run]
##   --copy_only  only copy the code (unpacked over ~/gralign_jax): enough after an edit,
##                the package being installed in editable mode
## The code is `git ls-files` of this checkout (tracked and untracked files, not the
## ignored ones: no data/, runs/ or venvs), as one tarball copied to all workers.
## Flag names take - or _ alike.
# shellcheck source=launch/common.sh
. "$(dirname "$0")/common.sh"

name='' zone='' project='' copy_only=0
FLAGS='name zone project'
SWITCHES='copy_only'
parse_flags "$@"
need name '<tpu-name>'
set_where

export COPYFILE_DISABLE=1  # macOS tar: no ._* resource-fork files in the tarball
root=$(cd "$(dirname "$0")/.." && pwd)
# The file list and tarball go to a fresh folder of this user's own (mktemp -d), removed
# on exit: a fixed name in a shared $TMPDIR could be a symlink someone planted, and the
# tarball is unpacked on every worker.
if [ "$DRY_RUN" = 1 ]; then
  tmp=${TMPDIR:-/tmp}
  tmp=${tmp%/}/gralign_jax-setup-XXXXXX
  echo "+ mktemp -d $(quote "$tmp")"
else
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/gralign_jax-setup-XXXXXX") || die "cannot make a temporary folder in ${TMPDIR:-/tmp}"
  trap 'rm -rf "$tmp"' EXIT
  echo "+ mktemp -d -> $(quote "$tmp")"
fi
stem=$tmp/gralign_jax
run_to "$stem.files" git -C "$root" ls-files --cached --others --exclude-standard
run tar -czf "$stem.tgz" -C "$root" -T "$stem.files"
run gcloud compute tpus tpu-vm scp "$stem.tgz" "$name:$REMOTE_CODE.tgz" "${WHERE[@]}" --worker=all

# Runs on each worker, from its home folder. The tarball is unpacked over the old copy,
# not into a fresh folder, so that a run's data/ or runs/ there stays.
unpack="mkdir -p $REMOTE_CODE && tar -xzf $REMOTE_CODE.tgz -C $REMOTE_CODE"
# TPU VM images ship Python 3.10, which current jax no longer supports. uv installs a
# standalone Python 3.12 without root or apt (deadsnakes would need sudo and a PPA), and
# installs packages much faster than pip. uv comes from PyPI through the system pip, or
# from its installer where pip refuses (PEP 668 images); both put it in ~/.local/bin,
# not on PATH in a non-login ssh shell. The ~ is the worker's.
# shellcheck disable=SC2088
uv='~/.local/bin/uv'
install="{ test -x $uv || python3 -m pip install --user -q uv || curl -LsSf https://astral.sh/uv/install.sh | sh; }"
install="$install && { test -x $REMOTE_VENV/bin/python || $uv venv --seed --python 3.12 $REMOTE_VENV; }"
install="$install && cd $REMOTE_CODE && $uv pip install --python ../$REMOTE_VENV/bin/python -e \".[tpu]\""
if [ "$copy_only" = 1 ]; then
  command=$unpack
else
  command="$unpack && $install"
fi
run gcloud compute tpus tpu-vm ssh "$name" "${WHERE[@]}" --worker=all --command="$command"
echo "# next: launch/tpu_run.sh --name=$name ${WHERE[*]} --workdir=gs://BUCKET/RUN"
