#!/usr/bin/env bash
# Start the project's own Docker engine (Debian's docker.io) when none answers on $DOCKER_HOST: its own socket,
# data root, exec root and pidfile, so that it never touches another engine on the machine. Installs the Debian
# packages it needs where missing. Prints nothing but progress; exits non-zero when the engine cannot start.
set -euo pipefail

ENGINE_DIR=${ENGINE_DIR:-/run/delivery-docker}
DATA_ROOT=${DATA_ROOT:-/var/lib/delivery-docker}
export DOCKER_HOST=${DOCKER_HOST:-unix://$ENGINE_DIR/docker.sock}
DOCKER=/usr/bin/docker

if [ -x "$DOCKER" ] && "$DOCKER" version >/dev/null 2>&1; then
  exit 0
fi

missing=()
for pair in docker.io:/usr/sbin/dockerd docker-compose:/usr/bin/docker-compose mmdebstrap:/usr/bin/mmdebstrap \
    uidmap:/usr/bin/newuidmap; do
  [ -x "${pair#*:}" ] || missing+=("${pair%%:*}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

mkdir -p "$ENGINE_DIR" "$DATA_ROOT"
echo "starting dockerd on $DOCKER_HOST"
# --iptables=false: no rules in the machine's firewall; containers reach each other on their bridge networks and
# a published port through docker-proxy. --ip-forward/--ip-masq follow from it (no outbound traffic is needed
# at run time). The engine's bridge gets a range of its own, away from any other engine's docker0.
/usr/sbin/dockerd \
  --host "$DOCKER_HOST" \
  --data-root "$DATA_ROOT" \
  --exec-root "$ENGINE_DIR/exec" \
  --pidfile "$ENGINE_DIR/dockerd.pid" \
  --bridge none \
  --iptables=false --ip-masq=false --ip-forward=false \
  --storage-driver overlay2 \
  --default-address-pool base=172.29.0.0/16,size=24 \
  >>"$ENGINE_DIR/dockerd.log" 2>&1 &
for _ in $(seq 1 60); do
  if "$DOCKER" version >/dev/null 2>&1; then
    echo "dockerd is up (log: $ENGINE_DIR/dockerd.log)"
    exit 0
  fi
  kill -0 $! 2>/dev/null || break
  sleep 1
done
echo "dockerd did not start; its log, $ENGINE_DIR/dockerd.log:" >&2
tail -n 30 "$ENGINE_DIR/dockerd.log" >&2
exit 1
