#!/bin/bash
# The official image's first start, for what our compose relies on: on an empty data directory, create the system
# tables, the root password (MARIADB_ROOT_PASSWORD, or a random one with MARIADB_RANDOM_ROOT_PASSWORD, or none with
# MARIADB_ALLOW_EMPTY_ROOT_PASSWORD), MARIADB_DATABASE, MARIADB_USER with MARIADB_PASSWORD and every privilege on
# that database, and the health-check user healthcheck.sh connects as; then run the server. A data directory that
# holds a database is used as it is. The MYSQL_* names are read where the MARIADB_* ones are unset, as there.
set -euo pipefail

for name in ROOT_PASSWORD RANDOM_ROOT_PASSWORD ALLOW_EMPTY_ROOT_PASSWORD DATABASE USER PASSWORD; do
  mariadb_var="MARIADB_$name" mysql_var="MYSQL_$name"
  if [ -z "${!mariadb_var:-}" ] && [ -n "${!mysql_var:-}" ]; then
    export "$mariadb_var=${!mysql_var}"
  fi
done

DATADIR=/var/lib/mysql

sql_string() { printf "'%s'" "$(printf '%s' "$1" | sed -e "s/\\\\/\\\\\\\\/g" -e "s/'/\\\\'/g")"; }

first_start() {
  if [ -z "${MARIADB_ROOT_PASSWORD:-}" ] && [ -z "${MARIADB_RANDOM_ROOT_PASSWORD:-}" ] \
      && [ -z "${MARIADB_ALLOW_EMPTY_ROOT_PASSWORD:-}" ]; then
    echo "error: the database is uninitialised and none of MARIADB_ROOT_PASSWORD, MARIADB_RANDOM_ROOT_PASSWORD," \
      "MARIADB_ALLOW_EMPTY_ROOT_PASSWORD is set" >&2
    exit 1
  fi
  echo "initialising the database in $DATADIR"
  mariadb-install-db --datadir="$DATADIR" --skip-test-db --auth-root-authentication-method=normal \
    --skip-name-resolve >/dev/null
  local socket=/run/mysqld/init.sock
  mariadbd --skip-networking --socket="$socket" --datadir="$DATADIR" &
  local pid=$!
  for _ in $(seq 1 60); do
    mariadb --protocol=socket --socket="$socket" -uroot -e 'SELECT 1' >/dev/null 2>&1 && break
    kill -0 "$pid" || { echo "error: the temporary server ended" >&2; exit 1; }
    sleep 1
  done

  local root_password=${MARIADB_ROOT_PASSWORD:-}
  if [ -n "${MARIADB_RANDOM_ROOT_PASSWORD:-}" ]; then
    root_password=$(pwgen --numerals --capitalize --symbols --remove-chars="'\\" -1 32)
    echo "GENERATED ROOT PASSWORD: $root_password"
  fi
  local health_password
  health_password=$(pwgen --numerals --capitalize --remove-chars="'\\" -1 32)
  {
    echo "SET @@SESSION.SQL_LOG_BIN=0;"
    echo "DELETE FROM mysql.global_priv WHERE User='' OR (User='root' AND Host NOT IN ('localhost'));"
    echo "ALTER USER 'root'@'localhost' IDENTIFIED BY $(sql_string "$root_password");"
    if [ -n "$root_password" ]; then
      echo "CREATE USER 'root'@'%' IDENTIFIED BY $(sql_string "$root_password");"
      echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
    fi
    echo "CREATE USER 'healthcheck'@'127.0.0.1' IDENTIFIED BY $(sql_string "$health_password");"
    echo "CREATE USER 'healthcheck'@'::1' IDENTIFIED BY $(sql_string "$health_password");"
    echo "CREATE USER 'healthcheck'@'localhost' IDENTIFIED BY $(sql_string "$health_password");"
    echo "GRANT USAGE ON *.* TO 'healthcheck'@'127.0.0.1', 'healthcheck'@'::1', 'healthcheck'@'localhost';"
    if [ -n "${MARIADB_DATABASE:-}" ]; then
      echo "CREATE DATABASE IF NOT EXISTS \`${MARIADB_DATABASE}\`;"
    fi
    if [ -n "${MARIADB_USER:-}" ]; then
      echo "CREATE USER $(sql_string "$MARIADB_USER")@'%' IDENTIFIED BY $(sql_string "${MARIADB_PASSWORD:-}");"
      if [ -n "${MARIADB_DATABASE:-}" ]; then
        echo "GRANT ALL ON \`${MARIADB_DATABASE}\`.* TO $(sql_string "$MARIADB_USER")@'%';"
      fi
    fi
    echo "FLUSH PRIVILEGES;"
  } | mariadb --protocol=socket --socket="$socket" -uroot
  printf '[mariadb-client]\nport=3306\nuser=healthcheck\npassword=%s\nprotocol=tcp\n' "$health_password" \
    >"$DATADIR/.my-healthcheck.cnf"
  chmod 600 "$DATADIR/.my-healthcheck.cnf"
  kill "$pid" && wait "$pid"
  echo "the database is initialised"
}

if [ "${1:-}" = mariadbd ] || [ "${1:-}" = mysqld ] || [ "${1#-}" != "${1:-}" ]; then
  [ "${1#-}" != "${1:-}" ] && set -- mariadbd "$@"
  [ -d "$DATADIR/mysql" ] || first_start
fi
exec "$@"
