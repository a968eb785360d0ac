#!/usr/bin/env bash
# Builds the Debian package, checks it with lintian (no error, no warning
# that deploy/debian/lintian-overrides does not name and explain), installs
# it, checks what it installed, and removes and purges it again.
# Run as root on a Debian machine with cargo-deb, help2man and lintian.
set -euo pipefail
cd "$(dirname "$0")/../.."

deploy/debian/build.sh
deb=$(ls target/debian/portstat-exporter_*.deb)
echo "== lintian $deb"
lintian --fail-on error,warning "$deb"

echo "== dpkg -i"
dpkg -i "$deb"
/usr/bin/portstat_exporter --version
for file in /etc/default/portstat_exporter /usr/lib/systemd/system/portstat_exporter.service \
  /usr/share/portstat_exporter/alerts.yml /usr/share/portstat_exporter/portstat.json \
  /usr/share/portstat_exporter/scrape.yml /usr/share/portstat_exporter/minimal-privilege.conf \
  /usr/share/doc/portstat-exporter/docs/landing-page.png /usr/share/man/man1/portstat_exporter.1.gz; do
  test -f "$file" || { echo "not installed: $file" >&2; exit 1; }
done
zcat /usr/share/man/man1/portstat_exporter.1.gz | grep -q 'collector\\fR.interval' ||
  { echo "the man page does not describe the flags" >&2; exit 1; }
for section in INSPECT FILES 'SEE ALSO'; do
  zcat /usr/share/man/man1/portstat_exporter.1.gz | grep -q "^\.SH \"\?$section" ||
    { echo "the man page has no $section section" >&2; exit 1; }
done
grep -q '/usr/share/portstat_exporter/minimal-privilege.conf' /usr/lib/systemd/system/portstat_exporter.service
grep -q '^ExecStart=/usr/bin/portstat_exporter \$ARGS$' /usr/lib/systemd/system/portstat_exporter.service
systemd-analyze verify --man=no /usr/lib/systemd/system/portstat_exporter.service
# The unit's flags, as the service would start: the default file's ARGS.
(. /etc/default/portstat_exporter && /usr/bin/portstat_exporter $ARGS --once >/dev/null)

echo "== run as the unit runs it"
# The unit's ExecStart, as an unprivileged user holding only the unit's
# capabilities (this machine's PID 1 may not be systemd): TCP over BPF,
# owners from BPF, exact headroom.
unit=/usr/lib/systemd/system/portstat_exporter.service
setting() { sed -n "s/^$1=//p" "$unit"; }
caps=$(setting AmbientCapabilities | tr ' ' '\n' | sed -n 's/^CAP_\(.*\)/+\L\1/p' | paste -sd, -)
[ "$caps" = "$(setting CapabilityBoundingSet | tr ' ' '\n' | sed -n 's/^CAP_\(.*\)/+\L\1/p' | paste -sd, -)" ]
grep -q '^DynamicUser=yes$' "$unit"
exec_start=$(setting ExecStart)
out=$(mktemp)
(. /etc/default/portstat_exporter &&
  setpriv --reuid=nobody --regid=nogroup --clear-groups --no-new-privs \
    --bounding-set="-all,$caps" --inh-caps="-all,$caps" --ambient-caps="-all,$caps" \
    ${exec_start//\$ARGS/$ARGS} --once >"$out")
for series in 'portstat_source_info{protocol="tcp",source="bpf"} 1' \
              'portstat_owners_source_info{source="bpf"} 1' \
              'portstat_ephemeral_headroom_exact 1'; do
  grep -qF "$series" "$out" || { echo "as the unit runs it, missing: $series" >&2; exit 1; }
done
echo "unit's capabilities ($caps), user nobody: TCP and owners over BPF, headroom exact"
# The daemon, likewise: it counts failed connect() calls in the kernel.
(. /etc/default/portstat_exporter &&
  exec setpriv --reuid=nobody --regid=nogroup --clear-groups --no-new-privs \
    --bounding-set="-all,$caps" --inh-caps="-all,$caps" --ambient-caps="-all,$caps" \
    ${exec_start//\$ARGS/$ARGS} --web.listen-address=127.0.0.1:10142) 2>/dev/null &
daemon=$!
series='portstat_failures_source_info{source="bpf",reason="loaded"} 1'
for _ in $(seq 1 100); do
  curl -sf http://127.0.0.1:10142/metrics >"$out" && grep -qF "$series" "$out" && break
  sleep 0.2
done
kill "$daemon"
wait "$daemon" || true
grep -qF "$series" "$out" || { echo "as the unit runs it, the daemon misses: $series" >&2; exit 1; }
echo "the daemon as the unit runs it counts failed connect() calls over BPF"
rm -f "$out"

echo "== dpkg -r, then purge"
dpkg -r portstat-exporter
test ! -e /usr/bin/portstat_exporter
test -f /etc/default/portstat_exporter # a conffile stays until purged
dpkg -P portstat-exporter
test ! -e /etc/default/portstat_exporter
echo "package: built, lintian clean, installed, removed and purged"
