#!/bin/sh
# As the official image's entrypoint: a server started without a config file listens on every interface of the
# container, so protected mode (which refuses other hosts when there is no password) is turned off unless the
# command sets it. The container's network is the boundary.
set -e
if [ "${1#-}" != "$1" ]; then
  set -- redis-server "$@"
fi
if [ "$1" = redis-server ]; then
  case " $* " in
    *" --protected-mode "*) ;;
    *) set -- "$@" --protected-mode no ;;
  esac
fi
exec "$@"
