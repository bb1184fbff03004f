#!/bin/bash
# The official image's start, for what our compose relies on: RABBITMQ_ERLANG_COOKIE written to the node's cookie
# file (the nodes of a cluster and the CLI tools share it), and RABBITMQ_DEFAULT_USER/RABBITMQ_DEFAULT_PASS made the
# user a blank node creates at its first start (RabbitMQ reads them from its configuration).
set -euo pipefail
cookie_file="$HOME/.erlang.cookie"
if [ -n "${RABBITMQ_ERLANG_COOKIE:-}" ]; then
  if [ ! -f "$cookie_file" ] || [ "$(cat "$cookie_file")" != "$RABBITMQ_ERLANG_COOKIE" ]; then
    rm -f "$cookie_file"
    printf '%s' "$RABBITMQ_ERLANG_COOKIE" >"$cookie_file"
    chmod 400 "$cookie_file"
  fi
fi
users=/etc/rabbitmq/conf.d/11-default-user.conf
: >"$users"
if [ -n "${RABBITMQ_DEFAULT_USER:-}" ]; then
  echo "default_user = $RABBITMQ_DEFAULT_USER" >>"$users"
fi
if [ -n "${RABBITMQ_DEFAULT_PASS:-}" ]; then
  echo "default_pass = $RABBITMQ_DEFAULT_PASS" >>"$users"
fi
if [ -n "${RABBITMQ_DEFAULT_VHOST:-}" ]; then
  echo "default_vhost = $RABBITMQ_DEFAULT_VHOST" >>"$users"
fi
exec "$@"
