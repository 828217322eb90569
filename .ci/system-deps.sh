#!/usr/bin/env bash
# System libraries the Python packages need on Debian/Ubuntu: cmeel-openblas links libgfortran.so.5.
set -euo pipefail
[ "$(uname -s)" = Linux ] || exit 0
if ldconfig -p 2>/dev/null | grep -q 'libgfortran.so.5 '; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && apt-get install -y -qq libgfortran5 >/dev/null
else
  echo "warning: libgfortran5 is missing; MLX will use its slow reference BLAS (apt-get install libgfortran5)" >&2
fi
