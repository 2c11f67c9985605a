#!/usr/bin/env bash
# Builds the native addon into prebuilds/<platform>-<arch>/rnode_native.node (prebuildify, N-API, stripped): the
# files the npm package ships, so installing it needs no compiler and no install script. linux-arm64 is built
# too when the Debian cross compiler (g++-aarch64-linux-gnu) is installed; REQUIRE_ARM64=1 makes that mandatory.
set -euo pipefail
cd "$(dirname "$0")/.."
# Local headers, never a download (node-gyp fetches them for --target otherwise; this machine has no internet).
export npm_config_nodedir="${npm_config_nodedir:-/usr}"
target="node@$(node -p process.versions.node)"
prebuildify() { node node_modules/prebuildify/bin.js --napi --strip --name rnode_native --target "$target" --cwd native --out . "$@"; }

rm -rf prebuilds
host="$(node -p process.arch)"
if [ "$host" != arm64 ] && command -v aarch64-linux-gnu-g++ >/dev/null; then
  CC=aarch64-linux-gnu-gcc CXX=aarch64-linux-gnu-g++ LINK=aarch64-linux-gnu-g++ \
    PREBUILD_STRIP_BIN=aarch64-linux-gnu-strip prebuildify --arch arm64
elif [ "${REQUIRE_ARM64:-0}" = 1 ] && [ "$host" != arm64 ]; then
  echo "build:native: no aarch64-linux-gnu-g++ for the linux-arm64 prebuild; apt-get install g++-aarch64-linux-gnu" >&2
  exit 1
fi
# The host build last, so native/build/Release (the source-build fallback) holds this machine's binary.
prebuildify --arch "$host"
