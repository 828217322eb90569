"""dora-primespeech-mlx: GPT-SoVITS text-to-speech in MLX behind the dora-primespeech node contract."""

from .runtime import preload_openblas

preload_openblas()

__version__ = "0.1.0"
