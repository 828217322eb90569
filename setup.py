"""Build step for the CPU accelerator's one optional native library, dora_primespeech_mlx.cpu._kernels,
built from every C file of dora_primespeech_mlx/cpu/native (encoder, vocoder, packed-product and T2S
decode kernels and their one worker pool). It is loaded with ctypes by cpu/library.py, never
imported as a Python module; everything else is configured in pyproject.toml. Without a C compiler
the package installs without it and the models run in pure MLX.
"""

import glob
import sys

from setuptools import Extension, setup

NATIVE = "dora_primespeech_mlx/cpu/native"

extensions = []
if sys.platform.startswith("linux"):
    extensions = [Extension("dora_primespeech_mlx.cpu._kernels", sources=sorted(glob.glob(f"{NATIVE}/*.c")),
                            depends=sorted(glob.glob(f"{NATIVE}/*.h")),  # `depends` also puts them in the sdist
                            extra_compile_args=["-O3", "-Wno-psabi"], extra_link_args=["-pthread"],
                            optional=True)]

setup(ext_modules=extensions)
