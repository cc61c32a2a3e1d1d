# shellcheck shell=bash disable=SC2034,SC2154  # sets and reads the scripts' variables
# Sourced by every script in launch/: flags, printing and running commands, errors.
# Written for bash 3.2 too (macOS): no associative arrays, mapfile, ${x,,}, declare -n,
# negative indices or |&, and empty arrays are expanded as ${a[@]+"${a[@]}"} because
# bash < 4.4 calls "${a[@]}" of an empty array unbound under set -u.

set -euo pipefail

PROG=${0##*/}
DRY_RUN=0
ARGS=()  # what follows `--` on the command line

# One line on stderr, non-zero exit: the whole error message a user gets.
die() {
  echo "$PROG: error: $*" >&2
  exit 1
}

# The help text is the script's '##' comment lines.
usage() {
  sed -n 's/^## \{0,1\}//p' "$0"
}

# quote WORD [double]: one shell word that reads back as WORD: bare when safe, else in
# single quotes (double quotes with `double`, for words inside a command that is itself
# single-quoted: gcloud ssh --command='...'), else printf %q. Only the value of
# --flag=value is quoted, as people write it.
quote() {
  local s=$1 pre=''
  case $s in --[[:alnum:]]*=*) pre=${s%%=*}= ;; esac
  case $pre in *[![:alnum:]_.=-]*) pre='' ;; esac
  s=${s#"$pre"}
  case $s in
    '' | *[![:alnum:]_./:=@%+,-]*) ;;
    *) printf '%s%s' "$pre" "$s"; return ;;
  esac
  if [ "${2:-}" = double ]; then
    case $s in *[\"\$\`\\]*) ;; *) printf '%s"%s"' "$pre" "$s"; return ;; esac
  else
    case $s in *\'*) ;; *) printf "%s'%s'" "$pre" "$s"; return ;; esac
  fi
  printf '%s%q' "$pre" "$s"
}

# Prints a command as '+ word word ...' (the argv, shell-quoted), like set -x.
show() {
  local line='+' a
  for a in "$@"; do line="$line $(quote "$a")"; done
  echo "$line"
}

# Prints the command, then runs it unless --dry-run.
run() {
  show "$@"
  if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}

# run_to FILE command...: the same, with the output written to FILE.
run_to() {
  local file=$1
  shift
  echo "$(show "$@") > $(quote "$file")"
  if [ "$DRY_RUN" = 0 ]; then "$@" > "$file"; fi
}

# parse_flags "$@": --name=value for each name in $FLAGS, --name for each in $SWITCHES
# (sets it to 1), --help, --dry-run, and `--` (the rest goes to ARGS). Dashes and
# underscores in names are the same. Anything else is an error, so typos do not pass.
parse_flags() {
  # (names a flag could never take: printf -v would set these locals instead)
  local _arg _name
  while [ $# -gt 0 ]; do
    _arg=$1
    shift
    case $_arg in
      -h | --help) usage; exit 0 ;;
      --) ARGS=("$@"); return 0 ;;
      --*) ;;
      *) die "unexpected argument '$_arg' (extra arguments go after --; see --help)" ;;
    esac
    _name=${_arg#--}
    _name=${_name%%=*}
    _name=${_name//-/_}
    if [ -z "$_name" ]; then
      die "unknown flag '$_arg' (see --help)"
    elif [ "$_name" = dry_run ] && [ "$_arg" = "${_arg%%=*}" ]; then
      DRY_RUN=1
    elif [[ " $SWITCHES " == *" $_name "* ]]; then
      [ "$_arg" = "${_arg%%=*}" ] || die "--$_name takes no value (got '$_arg')"
      printf -v "$_name" 1
    elif [[ " $FLAGS " == *" $_name "* ]]; then
      [ "$_arg" != "${_arg%%=*}" ] || die "--$_name needs a value: --$_name=VALUE"
      printf -v "$_name" '%s' "${_arg#*=}"
    else
      die "unknown flag '$_arg' (see --help)"
    fi
  done
}

# need NAME PLACEHOLDER: a flag without a default. A dry run shows the placeholder.
need() {
  if [ -z "${!1}" ]; then
    [ "$DRY_RUN" = 1 ] || die "missing --$1 (see --help)"
    printf -v "$1" '%s' "$2"
  fi
}

# The gcloud arguments naming where the TPU lives: --zone, and --project if given.
# Sets WHERE; needs $zone and $project.
set_where() {
  if [ "$DRY_RUN" = 0 ] && ! command -v gcloud > /dev/null; then
    die "gcloud is not on PATH: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install), then gcloud auth login"
  fi
  need zone '<zone>'
  WHERE=(--zone="$zone")
  if [ -n "$project" ]; then WHERE+=(--project="$project"); fi
}

# Where the code, the virtual environment and the logs live on each TPU worker
# (relative to the home folder, where gcloud's ssh and scp start).
REMOTE_CODE=gralign_jax
REMOTE_VENV=gralign_venv
REMOTE_LOGS=gralign_logs
