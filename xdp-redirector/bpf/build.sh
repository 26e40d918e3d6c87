#!/bin/sh
# Build the XDP object reproducibly: a fixed clang (19), a fixed debug compilation directory and
# stripped debug info give the same bytes on every machine.
# Usage: bpf/build.sh [OUTPUT]   (default: bpf/xylem_redirect.o)
# After changing xylem_redirect.c, run this and commit the object:
# tests/object_fresh.rs fails when the committed object is stale.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-"$here/xylem_redirect.o"}
case "$out" in
/*) ;;
*) out="$(pwd)/$out" ;;
esac
cd "$here"
clang-19 -O2 -g -target bpf -I/usr/include/x86_64-linux-gnu \
	-fdebug-compilation-dir=. -c xylem_redirect.c -o "$out"
llvm-strip-19 -g "$out"
