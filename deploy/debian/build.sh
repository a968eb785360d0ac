#!/usr/bin/env bash
# Builds the Debian package: target/debian/portstat-exporter_<version>-1_<arch>.deb.
# Needs cargo-deb (`cargo install cargo-deb`) and help2man.
#
# What cargo-deb packs (see [package.metadata.deb] in Cargo.toml) is made
# here first, in target/debian-assets: the man page, from --help, and the
# systemd unit, from deploy/systemd with the packaged binary's path and the
# flags of /etc/default/portstat_exporter.
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --release --locked
assets=target/debian-assets
rm -rf "$assets"
mkdir -p "$assets"

# The man page: --help, then `inspect --help` as a section of its own, then
# FILES and SEE ALSO (deploy/debian/portstat_exporter.h2m).
include="$assets/portstat_exporter.h2m"
{
  echo "[INSPECT]"
  echo ".nf"
  target/release/portstat_exporter inspect --help | sed -e 's/\\/\\e/g' -e "s/^[.']/\\\\\&&/"
  echo ".fi"
  echo
  cat deploy/debian/portstat_exporter.h2m
} > "$include"
help2man --no-info --section 1 --include "$include" \
  --name "Prometheus exporter of ephemeral port usage, headroom and listeners" \
  --version-string "$(cargo metadata --no-deps --format-version 1 |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["packages"][0]["version"])')" \
  target/release/portstat_exporter | gzip -9n > "$assets/portstat_exporter.1.gz"

unit=deploy/systemd/portstat_exporter.service
grep -q '^ExecStart=/usr/local/bin/portstat_exporter ' "$unit"
sed -e 's|^ExecStart=/usr/local/bin/portstat_exporter .*|EnvironmentFile=-/etc/default/portstat_exporter\nExecStart=/usr/bin/portstat_exporter $ARGS|' \
  -e 's|deploy/systemd/minimal-privilege.conf|/usr/share/portstat_exporter/minimal-privilege.conf|' \
  "$unit" > "$assets/portstat-exporter.portstat_exporter.service"

cargo deb --no-build --no-strip
