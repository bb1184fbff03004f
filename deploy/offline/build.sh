#!/usr/bin/env bash
# Builds, from Debian's packages alone, the images compose.yaml names, and the service's image on them:
#   delivery-offline/debian:bookworm   the base (mmdebstrap | docker import), made once
#   delivery-offline/{python:3.11,mariadb:10.11,redis:7,rabbitmq:3,prometheus:2,nginx:1}
#   delivery:latest                    the project's Dockerfile on delivery-offline/python:3.11
# and prints the seconds each took and its size. The builds download from Debian's mirror and PyPI over the host's
# network (--network host: the engine may run without NAT); CA_BUNDLE (the machine's bundle by default) is handed
# to the Dockerfile's downloading steps as a build secret, not copied into an image. REBUILD_BASE=1 makes the
# base again (its packages' updates); the other images rebuild what changed, from the engine's build cache.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
DOCKER=${DOCKER:-/usr/bin/docker}
export DOCKER_BUILDKIT=1
BASE_IMAGE=${BASE_IMAGE:-delivery-offline/debian:bookworm}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
APP_IMAGE=${APP_IMAGE:-delivery:latest}

size() { "$DOCKER" image inspect -f '{{.Size}}' "$1" | awk '{printf "%d MB", $1 / 1000000}'; }
timed() {  # timed NAME IMAGE COMMAND...: runs the command, then prints its time and the image's size
  local name=$1 image=$2 start=$SECONDS
  shift 2
  "$@"
  echo "built $name in $((SECONDS - start)) s: $image, $(size "$image")"
}
build() {  # build DIRECTORY IMAGE
  "$DOCKER" build --quiet --network host --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$2" "$1" >/dev/null
}

if [ -n "${REBUILD_BASE:-}" ] || ! "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  make_base() { BASE_IMAGE="$BASE_IMAGE" DOCKER="$DOCKER" ./base.sh >/dev/null; }
  timed base "$BASE_IMAGE" make_base
fi
timed python delivery-offline/python:3.11 build python delivery-offline/python:3.11
timed mariadb delivery-offline/mariadb:10.11 build mariadb delivery-offline/mariadb:10.11
timed redis delivery-offline/redis:7 build redis delivery-offline/redis:7
timed rabbitmq delivery-offline/rabbitmq:3 build rabbitmq delivery-offline/rabbitmq:3
timed prometheus delivery-offline/prometheus:2 build prometheus delivery-offline/prometheus:2
timed nginx delivery-offline/nginx:1 build nginx delivery-offline/nginx:1
secret=()
[ -s "$CA_BUNDLE" ] && secret=(--secret "id=ca_bundle,src=$CA_BUNDLE")
build_app() {
  "$DOCKER" build --quiet --network host "${secret[@]}" \
    --build-arg BASE_IMAGE=delivery-offline/python:3.11 -t "$APP_IMAGE" "$ROOT" >/dev/null
}
timed delivery "$APP_IMAGE" build_app
