#!/usr/bin/env bash
# Builds tansu 0.6.0 with scripts/tansu/*.patch into
# ${EDDY_CACHE_DIR:-~/.cache/eddy}/tansu/<hash of patch and this script>/bin/tansu,
# unless it is there already. Prints the binary's path (with --path: only that).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
patch_file="$here/tansu-0.6.0-transactions.patch"
hash="$(cat "$patch_file" "$here/build.sh" "$here/Cargo.toml" "$here/Cargo.lock" "$here/main.rs" | sha256sum | cut -c1-16)"
cache="${EDDY_CACHE_DIR:-$HOME/.cache/eddy}/tansu/$hash"
bin="$cache/bin/tansu"
# --path: only print where the binary is (or would be); the test harness asks.
if [ "${1:-}" = "--path" ] || [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

command -v patch >/dev/null 2>&1 || {
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq patch
}

echo "setup: building the patched tansu broker into $cache (once per machine)" >&2
work="$cache/src"
rm -rf "$work"
mkdir -p "$work/eddy-tansu"
cp "$here/Cargo.toml" "$here/Cargo.lock" "$here/main.rs" "$work/eddy-tansu/"
# cargo fetches the crates' sources; we copy the two we patch next to it.
cargo fetch --manifest-path "$work/eddy-tansu/Cargo.toml" >&2
registry="$(cargo metadata --format-version 1 --manifest-path "$work/eddy-tansu/Cargo.toml" |
  python3 -c 'import json,sys,os; m=json.load(sys.stdin); print(next(os.path.dirname(os.path.dirname(p["manifest_path"])) for p in m["packages"] if p["name"]=="tansu-broker"))')"
for crate in tansu-broker tansu-storage; do
  cp -r "$registry/$crate-0.6.0" "$work/$crate"
done
patch -s -p1 -d "$work" <"$patch_file"
cat >>"$work/eddy-tansu/Cargo.toml" <<'TOML'

[patch.crates-io]
tansu-broker = { path = "../tansu-broker" }
tansu-storage = { path = "../tansu-storage" }
TOML
# A debug build without debug info: the tests need correctness, not speed,
# and this is the cheapest build (see docs/benchmarks.md "Build times").
(cd "$work/eddy-tansu" && CARGO_TARGET_DIR="$cache/target" CARGO_PROFILE_DEV_DEBUG=0 \
  cargo build --bin tansu >&2)
mkdir -p "$cache/bin"
cp "$cache/target/debug/tansu" "$bin.tmp"
mv "$bin.tmp" "$bin"
rm -rf "$cache/target" "$work"
echo "$bin"
