# shellcheck shell=bash
# Shared by the launchers (tpu_pod.sh, gpu_cluster.sh); sourced, never run.
#
# Every command that touches a cloud or a cluster goes through `run`: with DRY_RUN=1 it
# prints the command (one line, `+ ` and the words quoted as a shell would read them back)
# instead of running it, so `--dry-run` shows exactly what would be executed. The quoting is
# our own, not `printf %q`, whose output differs between bash versions: the golden files of
# tests/test_launch_scripts.py compare these lines byte for byte.

DRY_RUN=${DRY_RUN:-0}

# die MESSAGE: the one way a launcher refuses its input (exit status 2, like a usage error).
die() {
  echo "error: $*" >&2
  exit 2
}

# quote_word WORD: WORD as one shell word; bare when it holds only safe characters.
quote_word() {
  local word=$1
  if [[ -n ${word} && ${word} =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "${word}"
  else
    printf "'%s'" "${word//\'/\'\\\'\'}"
  fi
}

# quote_words WORD...: the words quoted and joined by spaces (a command line).
quote_words() {
  local word line=""
  for word in "$@"; do
    line+="${line:+ }$(quote_word "${word}")"
  done
  printf '%s' "${line}"
}

# run COMMAND...: runs the command, or prints it under --dry-run.
run() {
  if [[ ${DRY_RUN} == 1 ]]; then
    printf '+ %s\n' "$(quote_words "$@")"
  else
    "$@"
  fi
}

# capture PLACEHOLDER COMMAND...: the command's output; under --dry-run prints the command
# and returns PLACEHOLDER instead (a value only the real cloud can give, such as an IP).
capture() {
  local placeholder=$1
  shift
  if [[ ${DRY_RUN} == 1 ]]; then
    printf '+ %s\n' "$(quote_words "$@")" >&2
    printf '%s' "${placeholder}"
  else
    "$@"
  fi
}

# require_value FLAG VALUE: refuses an empty value for a required flag.
require_value() {
  [[ -n $2 ]] || die "$1 is required (see --help)"
}

# require_positive_int FLAG VALUE
require_positive_int() {
  [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer; got '$2'"
}
