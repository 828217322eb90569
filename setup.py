"""Build step for the one native piece: the BLAS gemv forwarder of MLX's Linux CPU backend.

Everything else is configured in pyproject.toml. The library is loaded with ctypes by
dora_primespeech_mlx/runtime.py, never imported as a Python module. It is optional: without a C
compiler the package installs without it and MLX uses OpenBLAS's sgemm for every product.
"""

import sys

from setuptools import Extension, setup

extensions = []
if sys.platform.startswith("linux"):
    extensions.append(Extension("dora_primespeech_mlx.native._gemv_forward",
                                sources=["dora_primespeech_mlx/native/gemv_forward.c"],
                                extra_compile_args=["-O2"], optional=True))

setup(ext_modules=extensions)
