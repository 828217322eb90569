#!/usr/bin/env bash
# System packages the Python install needs on Debian/Ubuntu: cmeel-openblas links libgfortran.so.5;
# Debian's OpenBLAS (built for every x86 core) serves CPUs that cmeel-openblas's build cannot run on
# (it is built for AVX-512 only); a C compiler builds the native CPU kernels (optional, but without
# them decoding is about 2x slower).
set -euo pipefail
[ "$(uname -s)" = Linux ] || exit 0
missing=()
ldconfig -p 2>/dev/null | grep -q 'libgfortran.so.5 ' || missing+=(libgfortran5)
ls /usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0 >/dev/null 2>&1 || missing+=(libopenblas0-pthread)
command -v cc >/dev/null || missing+=(gcc libc6-dev)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "warning: missing ${missing[*]}: MLX will be slower (apt-get install ${missing[*]})" >&2
fi
