#!/usr/bin/env bash
# The base image of every offline image: a minimal Debian bookworm root filesystem made by mmdebstrap from
# Debian's packages alone, imported into the engine as $BASE_IMAGE. Needs root (or an unprivileged user with
# subuids), a Debian mirror and the engine in $DOCKER_HOST.
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-delivery-offline/debian:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
DOCKER=${DOCKER:-/usr/bin/docker}

# minbase: essential packages and apt only; ca-certificates so that a later apt/pip over https can trust
# Debian's authorities (a proxy's authority comes as a build input, not in the image). No documentation or
# locales beyond C, no apt lists: the images built on it fetch the lists they need and drop them again.
mmdebstrap --variant=minbase --mode=root --format=tar --quiet \
  --include=ca-certificates \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --aptopt='APT::Install-Recommends "false"' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
  bookworm - \
  "deb $MIRROR bookworm main" \
  "deb $MIRROR bookworm-updates main" \
  "deb $SECURITY bookworm-security main" \
  | "$DOCKER" import \
      --change 'CMD ["bash"]' \
      --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      - "$BASE_IMAGE" >/dev/null
echo "$BASE_IMAGE: $("$DOCKER" image inspect -f '{{.Size}}' "$BASE_IMAGE") bytes"
