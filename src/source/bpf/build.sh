#!/usr/bin/env bash
# Rebuilds the committed BPF objects from their C sources, so that building
# the exporter needs no clang: the program in this folder, and in
# tests/fixtures/bpf the broken ones that the fallback tests load and the
# idle iterators that benches/walk_floor.rs measures the kernel's walks
# with. Needs Debian's clang, llvm and libbpf-dev.
#
#   src/source/bpf/build.sh           rebuild the objects in place
#   src/source/bpf/build.sh --check   fail when an object no longer matches
#                                     its source (CI runs this)
set -euo pipefail
cd "$(dirname "$0")/../../.."

build() {
  # -g: BTF, which CO-RE needs. BTF's line info names the source file: the
  # prefix map makes that name relative, and the DWARF is dropped, so that
  # the object depends on nothing but the source and the compiler, not on
  # the folder the tree was checked out in. The failure counter is built
  # for BPF v3 (32-bit jumps and ALU, Linux 5.1), which its verifier
  # figures were measured with.
  local cpu=()
  case "$1" in
    */port_failures.bpf.c) cpu=(-mcpu=v3) ;;
  esac
  (cd "$(dirname "$1")" &&
    clang -O2 -g -target bpf "${cpu[@]}" -D__TARGET_ARCH_x86 -I/usr/include/x86_64-linux-gnu \
      -fdebug-prefix-map="$PWD"=. -c "$(basename "$1")" -o "$2")
  llvm-strip --strip-debug "$2"
}

status=0
for source in src/source/bpf/*.bpf.c tests/fixtures/bpf/*.bpf.c; do
  object="${source%.c}.o"
  if [ "${1:-}" = "--check" ]; then
    fresh=$(mktemp --suffix=.o)
    build "$source" "$fresh"
    if ! cmp -s "$fresh" "$object"; then
      echo "$object does not match $source: run src/source/bpf/build.sh and commit it" >&2
      status=1
    fi
    rm -f "$fresh"
  else
    build "$source" "$PWD/$object"
    echo "built $object"
  fi
done
exit "$status"
