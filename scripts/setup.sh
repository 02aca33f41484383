#!/usr/bin/env bash
# Installs what building and testing Eddy needs on a fresh Debian machine, and
# nothing that is already there. Safe to run again.
set -euo pipefail

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# The partition test (tests/tests/ha_partition.rs) runs processes in network
# namespaces with iproute2's `ip`.
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
# scripts/tansu/build.sh patches the test broker's source.
command -v patch >/dev/null 2>&1 || need_apt+=(patch)
# librocksdb-sys generates its bindings with bindgen, which loads libclang.
# (libclang-cpp, which other packages bring, is not it: bindgen needs libclang.so.)
compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null || compgen -G "/usr/lib/llvm-*/lib/libclang-[0-9]*.so*" >/dev/null || compgen -G "/usr/lib/*/libclang-[0-9]*.so*" >/dev/null || need_apt+=(libclang-dev)
# rdkafka builds librdkafka with cmake; its OAUTHBEARER/OIDC code includes
# curl's headers even when curl itself is off.
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
[ -e /usr/include/x86_64-linux-gnu/curl/curl.h ] || [ -e /usr/include/curl/curl.h ] || need_apt+=(libcurl4-openssl-dev)
if ((${#need_apt[@]})); then
  echo "setup: installing ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing; install the Rust toolchain named in rust-toolchain.toml" >&2
  exit 1
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

# The Kafka-protocol broker the Kafka connector's tests start: tansu 0.6.0
# from its crates.io source with our patch for transactions
# (scripts/tansu/README.md), built once per machine into a cache keyed by the
# patch's hash. EDDY_SKIP_KAFKA_BROKER=1 skips it (the tests that need it then
# skip with a message); `scripts/tansu/build.sh --path` prints where it is.
if [ "${EDDY_SKIP_KAFKA_BROKER:-0}" != "1" ]; then
  "$(dirname "$0")/tansu/build.sh"
fi
