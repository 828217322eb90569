"""Development tools for dora-primespeech-mlx, never shipped in its wheel.

`oracle`: upstream GPT-SoVITS (PyTorch) as the parity reference the tests compare against.
`bench`: the `primespeech-mlx bench ...` benchmarks, ours against the oracle.
"""
