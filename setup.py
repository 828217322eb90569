"""Build step for the three optional native libraries of the Linux CPU path (both loaded with ctypes,
never imported as Python modules; everything else is configured in pyproject.toml):

- the BLAS gemv forwarder of MLX's CPU backend (loaded by dora_primespeech_mlx/runtime.py; without it
  MLX uses OpenBLAS's sgemm for every product);
- the encoders' CPU kernels (loaded by dora_primespeech_mlx/models/native_ops.py; without them the
  encoders run in pure MLX);
- the T2S decode step (loaded by dora_primespeech_mlx/models/t2s_native.py; without it MLX decodes).

Without a C compiler the package installs without them.
"""

import sys

from setuptools import Extension, setup

extensions = []
if sys.platform.startswith("linux"):
    extensions.append(Extension("dora_primespeech_mlx.native._gemv_forward",
                                sources=["dora_primespeech_mlx/native/gemv_forward.c"],
                                extra_compile_args=["-O3"], extra_link_args=["-pthread"], optional=True))
    # Element-wise kernels of the CPU encoders (loaded by models/kernels.py; pure-MLX paths without it).
    extensions.append(Extension("dora_primespeech_mlx.native._encoder_kernels",
                                sources=["dora_primespeech_mlx/native/encoder_kernels.c"],
                                extra_compile_args=["-O3", "-Wno-psabi"], extra_link_args=["-pthread"],
                                optional=True))

    # The native T2S decode step (loaded by models/t2s_native.py; MLX's decode step without it).
    extensions.append(Extension("dora_primespeech_mlx.native._panel_kernels",
                                sources=["dora_primespeech_mlx/native/panel_kernels.c"],
                                extra_compile_args=["-O3", "-Wno-psabi"], extra_link_args=["-pthread"],
                                optional=True))

setup(ext_modules=extensions)
