#!/usr/bin/env bash
# System packages the Python install needs on Debian/Ubuntu: cmeel-openblas links libgfortran.so.5,
# and a C compiler builds the gemv forwarder (dora_primespeech_mlx/native; optional, but without it
# batch-1 decoding is about 1.6x slower).
set -euo pipefail
[ "$(uname -s)" = Linux ] || exit 0
missing=()
ldconfig -p 2>/dev/null | grep -q 'libgfortran.so.5 ' || missing+=(libgfortran5)
command -v cc >/dev/null || missing+=(gcc libc6-dev)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "warning: missing ${missing[*]}: MLX will be slower (apt-get install ${missing[*]})" >&2
fi
