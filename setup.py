"""Build step for the three optional native libraries of the Linux CPU path (all loaded with ctypes,
never imported as Python modules; everything else is configured in pyproject.toml), each built from
one C file plus the shared headers:

- the BLAS gemv forwarder of MLX's CPU backend (loaded by dora_primespeech_mlx/runtime.py; without it
  MLX uses OpenBLAS's sgemm for every product);
- the encoder and vocoder kernels (loaded by dora_primespeech_mlx/models/native_ops.py; without them
  the encoders and the vocoder run in pure MLX);
- the packed-weight products and the T2S decode step (loaded by dora_primespeech_mlx/models/panel_ops.py;
  without them BLAS multiplies and MLX decodes).

Without a C compiler the package installs without them.
"""

import sys

from setuptools import Extension, setup

NATIVE = "dora_primespeech_mlx/native"
HEADERS = [f"{NATIVE}/common.h", f"{NATIVE}/helper_thread.h"]  # `depends` also puts them in the sdist

extensions = []
if sys.platform.startswith("linux"):
    extensions = [Extension(f"dora_primespeech_mlx.native._{name}", sources=[f"{NATIVE}/{name}.c"], depends=HEADERS,
                            extra_compile_args=["-O3", "-Wno-psabi"], extra_link_args=["-pthread"], optional=True)
                  for name in ("gemv_forward", "encoder_kernels", "panel_kernels")]

setup(ext_modules=extensions)
