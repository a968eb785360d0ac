#!/usr/bin/env bash
# Builds the static binary and the FROM-scratch image, runs it with host
# networking and host PID, and scrapes it. Needs a Docker engine (Debian's
# docker.io; dockerd is started here if none is running) and root.
set -euo pipefail
cd "$(dirname "$0")/.."

port=${PORTSTAT_TEST_PORT:-10043}
tag=portstat_exporter:test
context=$(mktemp -d)
started_dockerd=""
container=""
cleanup() {
  [ -n "$container" ] && docker rm -f "$container" >/dev/null 2>&1 || true
  docker rmi -f "$tag" >/dev/null 2>&1 || true
  [ -n "$started_dockerd" ] && kill "$started_dockerd" 2>/dev/null || true
  rm -rf "$context"
}
trap cleanup EXIT

RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --release --locked --target x86_64-unknown-linux-gnu
binary=target/x86_64-unknown-linux-gnu/release/portstat_exporter
if readelf -d "$binary" | grep -q NEEDED; then
  echo "not a static binary (it needs shared libraries): $binary" >&2
  exit 1
fi
echo "binary: $(stat -c %s "$binary") bytes, static"
cp "$binary" deploy/Dockerfile "$context/"

if ! docker info >/dev/null 2>&1; then
  dockerd >"$context/dockerd.log" 2>&1 &
  started_dockerd=$!
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { cat "$context/dockerd.log" >&2; exit 1; }
fi

docker build --quiet -t "$tag" "$context"
layers=$(docker history --format '{{.Size}}' "$tag" | grep -vc '^0B$' || true)
echo "image: $(docker image inspect -f '{{.Size}}' "$tag") bytes, $layers non-empty layer(s)"
# The DaemonSet's privileges: the BPF capabilities, the runtime's default
# seccomp profile, host networking and PID, a read-only root. An engine
# older than Docker 23 (Debian 12's docker.io is 20.10) knows neither
# capability by name: there SYS_ADMIN stands in for both, which its default
# seccomp profile also requires for bpf().
caps=(--cap-add BPF --cap-add PERFMON)
if ! docker run --rm --cap-drop ALL "${caps[@]}" --entrypoint /portstat_exporter "$tag" --version >/dev/null 2>&1; then
  echo "this engine ($(docker version -f '{{.Server.Version}}')) knows no CAP_BPF: SYS_ADMIN in its place"
  caps=(--cap-add SYS_ADMIN)
fi
container=$(docker run -d --network host --pid host \
  --cap-drop ALL "${caps[@]}" --read-only \
  "$tag" "--web.listen-address=127.0.0.1:$port")

for _ in $(seq 1 50); do
  if curl -fsS "http://127.0.0.1:$port/-/ready" >/dev/null 2>&1; then break; fi
  sleep 0.2
done
body=$(curl -fsS "http://127.0.0.1:$port/metrics")
for family in portstat_ephemeral_ports_capacity portstat_ephemeral_ports_used \
              portstat_listener_sockets portstat_build_info; do
  grep -q "^$family" <<<"$body" || { echo "missing $family" >&2; docker logs "$container" >&2; exit 1; }
done
# With those alone, TCP and owners come from BPF, and headroom is exact.
for series in 'portstat_source_info{protocol="tcp",source="bpf"} 1' \
              'portstat_owners_source_info{source="bpf"} 1' \
              'portstat_ephemeral_headroom_exact 1'; do
  grep -qF "$series" <<<"$body" || { echo "missing: $series" >&2; docker logs "$container" >&2; exit 1; }
done
# The owners program names the exporter's own listener.
grep -q "portstat_listener_sockets{protocol=\"tcp\",address=\"127.0.0.1\",port=\"$port\",process=\"portstat_export\"} 1" <<<"$body" \
  || { echo "the exporter's own listener is not attributed" >&2; exit 1; }
echo "scraped $(grep -c '^portstat_' <<<"$body") portstat series from the container"
