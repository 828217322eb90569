"""Upstream's SoVITS decode timed on torch-CUDA, for `bench sovits --device gpu` (a child process).

Run as `python -m primespeech_devtools.bench.upstream_cuda VERSION SEED INPUTS REPEATS OUT DTYPE`: the
seeded upstream model of `oracle.sovits.build_upstream`, moved to the GPU in DTYPE with TF32 off (so
that float32 is float32), decodes the saved codes, phones and spectrogram; prints the timings as JSON
and saves the noise-free waveform (float32) to OUT.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np


def time_decode(version: str, seed: int, inputs: str, repeats: int, out: str, dtype: str) -> dict[str, Any]:
    import torch

    from primespeech_devtools.oracle.sovits import build_upstream

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch_dtype = getattr(torch, dtype)
    net = build_upstream(version, seed=seed).to(device="cuda", dtype=torch_dtype)
    data = np.load(inputs)
    codes = torch.as_tensor(data["codes"], dtype=torch.long, device="cuda")[None, None]
    phones = torch.as_tensor(data["phones"], dtype=torch.long, device="cuda")[None]
    spec = torch.as_tensor(data["spec"], dtype=torch_dtype, device="cuda")[None]
    # v2Pro/v2ProPlus: the speaker embedding, one [1, 20480] per reference
    sv = [torch.as_tensor(data["sv"], dtype=torch_dtype, device="cuda")[None]] if "sv" in data else None

    def decode(noise_scale: float) -> torch.Tensor:
        with torch.no_grad():
            audio = net.decode(codes, phones, [spec], noise_scale=noise_scale, sv_emb=sv)
        torch.cuda.synchronize()
        return audio

    decode(0.5)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        decode(0.5)
        times.append(time.perf_counter() - start)
    np.save(out, decode(0.0)[0, 0].float().cpu().numpy())
    return {"seconds": times, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(), "dtype": dtype}


if __name__ == "__main__":
    print(json.dumps(time_decode(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5],
                                 sys.argv[6])))
