#!/bin/bash
# The official image's healthcheck.sh, for the tests our compose runs: --connect (a client connects over TCP, as the
# health-check user the first start created) and --innodb_initialized (InnoDB is an engine the server offers, so
# the first start's temporary server, which listens on no port, is over). Exits 0 when every test given passes.
set -eu
defaults=/var/lib/mysql/.my-healthcheck.cnf
query() { mariadb --defaults-extra-file="$defaults" -h 127.0.0.1 --skip-column-names -B -e "$1"; }
[ $# -gt 0 ] || set -- --connect
for test in "$@"; do
  case "$test" in
    --connect) query 'SELECT 1' >/dev/null ;;
    --innodb_initialized)
      [ "$(query "SELECT 1 FROM information_schema.ENGINES WHERE engine='innodb' AND support IN ('YES','DEFAULT','ENABLED')")" = 1 ] ;;
    --su-mysql|--su=*|--defaults-extra-file=*|--no-defaults) ;;
    *) echo "healthcheck.sh: unsupported test $test" >&2; exit 2 ;;
  esac
done
