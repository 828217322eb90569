"""Upstream SoVITS (`SynthesizerTrn`) with seeded random weights, written as official `.pth` files.

`build_upstream` makes upstream's model (v1 or v2, full `configs/s2.json` or a smaller test config)
with every parameter random at about 1/sqrt(fan_in) (waveform std ~0.1-0.3 without clipping), the
codebook marked initialised with a random `embed`, the flows' zero-initialised `post` convs
randomised, everything rounded to fp16 values. `save_official` writes it exactly as upstream's
`process_ckpt.savee` does: `torch.save({"weight": fp16 state dict without enc_q, "config": HParams,
"info": ...})`, with an optional two-byte version header and any of the three weight-norm forms.
`upstream_decode`, `upstream_decode_streaming`, `upstream_extract_latent` and `upstream_spectrogram`
run upstream's code; `upstream_sola` is TTS.py's SOLA join and `upstream_stream` the SoVITS side of
TTS.run's streaming loop.
Dev only: torch is needed.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import sys
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from primespeech_devtools.oracle import import_upstream

WEIGHT_NORM_FORMS = ("old", "new", "fused")
HEADERS = {"v1": b"00", "v2": b"01", "v3": b"02", "v3-lora": b"03", "v4-lora": b"04", "v2Pro": b"05",
           "v2ProPlus": b"06"}


SPEAKER_VERSIONS = ("v2Pro", "v2ProPlus")
SV_EMB_GAIN = 0.5  # sv_emb weights at half the usual scale: the embedding (std ~10) then moves the style
#                    vector without saturating the PReLU's output


def s2_config(name: str = "s2.json") -> dict[str, Any]:
    """Upstream's shipped SoVITS training config (`configs/s2.json`, `s2v2Pro.json`, ...)."""
    return json.loads((Path(import_upstream()) / "configs" / name).read_text())


def version_config(version: str) -> dict[str, Any]:
    """The shipped config a version trains with: s2.json (v1, v2), s2v2Pro.json, s2v2ProPlus.json."""
    return s2_config(f"s2{version}.json" if version in SPEAKER_VERSIONS else "s2.json")


def small_config(version: str = "v2") -> dict[str, Any]:
    """The version's config shrunk for fast tests: fewer encoder layers, narrower FFN and generator
    (v2ProPlus keeps its generator's shape: first upsampling kernel 20, 1.5x the v2Pro width). The
    MRTE (192 -> 512), style vector (gin) and SSL (768) widths are fixed upstream and stay."""
    hps = version_config(version)
    width = 192 if version == "v2ProPlus" else 128
    hps["model"].update(filter_channels=256, n_layers=2, upsample_initial_channel=width)
    return hps


def build_upstream(version: str = "v2", *, seed: int = 0, hps: dict[str, Any] | None = None):
    """Upstream `SynthesizerTrn` in eval mode with seeded random fp16-valued weights (hps: the
    version's shipped config unless given)."""
    import_upstream()
    import torch
    from module.models import SynthesizerTrn

    hps = copy.deepcopy(hps or version_config(version))
    model_cfg = dict(hps["model"], version=version, semantic_frame_rate="25hz")
    net = SynthesizerTrn(hps["data"]["filter_length"] // 2 + 1,
                         hps["train"]["segment_size"] // hps["data"]["hop_length"],
                         n_speakers=hps["data"]["n_speakers"], **model_cfg).eval()
    randomize_(net, seed)
    with torch.no_grad():
        net.quantizer.vq.layers[0]._codebook.inited.fill_(1)
    net.hps = hps
    return net


def randomize_(net, seed: int) -> None:
    """Weights N(0, 1/fan_in) (weight-norm pairs: v random with a per-channel scale, g = the norm
    the fused weight should have), biases 0.1 N, LayerNorm gains 1 + 0.1 N, relative-position and
    codebook / phone embeddings as upstream initialises them (std 1/sqrt(d_k), N(0, 1)); every value
    rounded to fp16. The posterior encoder (enc_q, training only, never saved) is left alone."""
    import torch

    gen = torch.Generator().manual_seed(seed)

    def normal(shape) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=gen)

    params = {k: v for k, v in net.named_parameters() if not k.startswith("enc_q.")}
    with torch.no_grad():
        for name, p in params.items():
            if name.endswith("weight_g"):
                continue
            if name.endswith("weight_v"):
                base = name[: -len("weight_v")]
                fused = normal(p.shape) / math.sqrt(_fan_in(base, p))
                scale = 0.5 + 1.5 * torch.rand((p.shape[0],) + (1,) * (p.ndim - 1), generator=gen)
                p.copy_(fused * scale)
                g = params[base + "weight_g"]
                g.copy_(fused.flatten(1).norm(dim=1).reshape(g.shape))
            elif name.endswith(("emb_rel_k", "emb_rel_v")):
                p.copy_(normal(p.shape) * p.shape[-1] ** -0.5)
            elif name.endswith("text_embedding.weight"):
                p.copy_(normal(p.shape))
            elif name.endswith("gamma"):
                p.copy_(1 + 0.1 * normal(p.shape))
            elif name.endswith("beta") or p.ndim == 1:
                p.copy_(0.1 * normal(p.shape))
            else:
                gain = SV_EMB_GAIN if name == "sv_emb.weight" else 1.0
                p.copy_(gain * normal(p.shape) / math.sqrt(_fan_in(name, p)))
        net.quantizer.vq.layers[0]._codebook.embed.copy_(
            normal(net.quantizer.vq.layers[0]._codebook.embed.shape))
        for tensor in list(params.values()) + [net.quantizer.vq.layers[0]._codebook.embed]:
            tensor.copy_(tensor.half().float())


def _fan_in(name: str, p) -> float:
    if ".ups." in name:  # ConvTranspose1d [in, out, k]: each output sample sees about 2 taps per input
        return 2.0 * p.shape[0]
    return float(np.prod(p.shape[1:]))


class HParams:
    """Stand-in for upstream `utils.HParams` (attribute bag, pickled under `utils.HParams`)."""

    def __init__(self, **kwargs):
        for key, value in kwargs.items():
            setattr(self, key, HParams(**value) if isinstance(value, dict) else value)

    def __getitem__(self, key):
        return getattr(self, key)

    def keys(self):
        return self.__dict__.keys()


HParams.__module__ = "utils"
_UTILS = types.ModuleType("utils")
_UTILS.HParams = HParams


@contextlib.contextmanager
def _utils_module():
    """Make `utils.HParams` resolve to our stand-in while pickling."""
    previous = sys.modules.get("utils")
    sys.modules["utils"] = _UTILS
    try:
        yield
    finally:
        if previous is None:
            sys.modules.pop("utils", None)
        else:
            sys.modules["utils"] = previous


def state_dict_fp16(net, weight_norm: str = "old") -> OrderedDict:
    """The state dict as upstream saves it (fp16, enc_q dropped) in one weight-norm form:
    "old" weight_g/weight_v (what upstream writes), "new" parametrizations.weight.original0/1,
    or "fused" plain weight."""
    import torch

    if weight_norm not in WEIGHT_NORM_FORMS:
        raise ValueError(f"weight_norm must be one of {WEIGHT_NORM_FORMS}")
    source = net.state_dict()
    out = OrderedDict()
    for key, value in source.items():
        if "enc_q" in key:
            continue
        if key.endswith("weight_v"):
            continue
        if key.endswith("weight_g"):
            base = key[: -len("weight_g")]
            g, v = value, source[base + "weight_v"]
            if weight_norm == "old":
                out[base + "weight_g"], out[base + "weight_v"] = g.half(), v.half()
            elif weight_norm == "new":
                out[base + "parametrizations.weight.original0"] = g.half()
                out[base + "parametrizations.weight.original1"] = v.half()
            else:
                out[base + "weight"] = torch._weight_norm(v, g, 0).half()
            continue
        out[key] = value.half() if value.is_floating_point() else value
    return out


def save_official(net, path: str | os.PathLike, *, weight_norm: str = "old", header: str | None = None,
                  weights: dict | None = None, version: str | None = None,
                  hps: dict[str, Any] | None = None) -> Path:
    """Write `net` (or explicit `weights`) as upstream's `savee` does; `header` rewrites the first
    two bytes like upstream's `my_save2` (e.g. "v2Pro" -> b"05"); `version` goes into the config."""
    import torch

    hps = copy.deepcopy(hps or getattr(net, "hps", None) or s2_config())
    if version is not None or net is not None:
        hps["model"]["version"] = version or net.version
    opt = OrderedDict()
    opt["weight"] = weights if weights is not None else state_dict_fp16(net, weight_norm)
    opt["config"] = HParams(**hps)
    opt["info"] = "8epoch_96iteration"
    buffer = io.BytesIO()
    with _utils_module():
        torch.save(opt, buffer)
    data = buffer.getvalue()
    if header is not None:
        data = HEADERS[header] + data[2:]
    path = Path(path)
    path.write_bytes(data)
    return path


def _sv(sv_emb):
    """Speaker embedding(s) [20480] as upstream's decode takes them: a list of [1, 20480] tensors."""
    import torch

    if sv_emb is None:
        return None
    items = sv_emb if isinstance(sv_emb, (list, tuple)) else [sv_emb]
    return [torch.as_tensor(np.asarray(e, dtype=np.float32).reshape(1, -1)) for e in items]


def upstream_decode(net, codes, phones, specs, *, noise_scale: float = 0.0, speed: float = 1.0,
                    sv_emb=None) -> np.ndarray:
    """Upstream `decode` on codes [T25], target phones [Tp] and [1025, frames] spectrogram(s);
    v2Pro/v2ProPlus: `sv_emb`, one [20480] embedding per spectrogram."""
    import torch

    specs = specs if isinstance(specs, (list, tuple)) else [specs]
    with torch.no_grad():
        out = net.decode(torch.as_tensor(np.asarray(codes), dtype=torch.long)[None, None],
                         torch.as_tensor(np.asarray(phones), dtype=torch.long)[None],
                         [torch.as_tensor(np.asarray(s, dtype=np.float32))[None] for s in specs],
                         noise_scale=noise_scale, speed=speed, sv_emb=_sv(sv_emb))
    return out[0, 0].numpy()


def upstream_decode_streaming(net, codes, phones, specs, *, noise_scale: float = 0.0, speed: float = 1.0,
                              result_length: int | None = None, overlap_frames=None,
                              padding_length: int | None = None, sv_emb=None):
    """Upstream `decode_streaming` (batch 1) -> torch (audio [N], latent [1, C, T], latent mask [1, 1, T]).
    `overlap_frames` is a torch latent slice [1, C, F] in upstream's layout (or None)."""
    import torch

    specs = specs if isinstance(specs, (list, tuple)) else [specs]
    with torch.no_grad():
        audio, latent, mask = net.decode_streaming(
            torch.as_tensor(np.asarray(codes), dtype=torch.long)[None, None],
            torch.as_tensor(np.asarray(phones), dtype=torch.long)[None],
            [torch.as_tensor(np.asarray(s, dtype=np.float32))[None] for s in specs],
            noise_scale=noise_scale, speed=speed, result_length=result_length, overlap_frames=overlap_frames,
            padding_length=padding_length, sv_emb=_sv(sv_emb))
    return audio[0, 0], latent, mask


def upstream_sola():
    """Upstream's `TTS.sola_algorithm(fragments, overlap_len, search_len)` as a plain function.

    TTS_infer_pack/TTS.py cannot be imported here (it needs PyAV and the whole inference stack), so
    the method's own source is read from the installed file and compiled alone; `self` is unused.
    Its debug print is silenced."""
    import ast
    import textwrap

    import torch

    path = Path(import_upstream()) / "TTS_infer_pack" / "TTS.py"
    source = path.read_text()
    method = next(item for node in ast.parse(source).body if isinstance(node, ast.ClassDef) and node.name == "TTS"
                  for item in node.body if isinstance(item, ast.FunctionDef) and item.name == "sola_algorithm")
    namespace: dict[str, Any] = {"torch": torch, "F": torch.nn.functional, "List": list, "np": np}
    exec(compile(textwrap.dedent(ast.get_source_segment(source, method)), str(path), "exec"), namespace)
    sola = namespace["sola_algorithm"]

    def run(fragments, overlap_len: int, search_len: int = 320):
        with contextlib.redirect_stdout(io.StringIO()):
            return sola(None, fragments, overlap_len, search_len)

    return run


def upstream_stream(net, chunks, phones, specs, *, speed: float = 1.0, overlap_length: int = 2,
                    noise_scale: float = 0.0, sv_emb=None) -> list[np.ndarray]:
    """The SoVITS side of upstream TTS.run's streaming loop (TTS_infer_pack/TTS.py, streaming_mode
    branch) on a given sequence of T2S chunks, each `(codes or None, is_final)`; returns the audio
    pieces it yields (before int16 post-processing). Restated here statement for statement with
    torch tensors, so the in-place SOLA cross-fade aliases the kept chunk as it does upstream."""
    import torch

    sola = upstream_sola()
    rate = math.prod(net.upsample_rates) * (2 / speed)
    size = math.ceil(overlap_length * rate)
    pieces: list[np.ndarray] = []
    history: list = []
    last_chunk = last_latent = None
    first = True
    for codes, is_final in chunks:
        if codes is None and last_chunk is not None:
            pieces.append(last_chunk[-size:].numpy().copy())
            break
        tokens = torch.as_tensor(np.asarray(codes), dtype=torch.long)[None]
        history.append(tokens)
        n = tokens.shape[-1]
        overlap_len = overlap_length + (10 - n) if not first and n < 10 else overlap_length
        audio, latent, _ = upstream_decode_streaming(
            net, torch.cat(history, dim=-1)[0].numpy(), phones, specs, noise_scale=noise_scale, speed=speed,
            result_length=None if first else n + overlap_len,
            overlap_frames=None if last_latent is None else last_latent[:, :, -overlap_len * 2:],
            padding_length=0, sv_emb=sv_emb)
        if overlap_len > overlap_length:
            audio = audio[-int((overlap_length + n) * rate):]
        piece = audio
        if first:
            first = False
            piece = piece[:-size] if not is_final else piece
        elif not is_final:
            piece = sola([last_chunk, piece], size)[last_chunk.shape[0] - size:-size]
        last_latent, last_chunk = latent, audio
        pieces.append(piece.numpy().copy())
    return pieces


def upstream_extract_latent(net, ssl: np.ndarray) -> np.ndarray:
    """Upstream `extract_latent` on HuBERT features [768, T50] -> codes [T25] (as TTS uses them)."""
    import torch

    with torch.no_grad():
        codes = net.extract_latent(torch.as_tensor(np.asarray(ssl, dtype=np.float32))[None])
    return codes[0, 0].numpy()


def upstream_spectrogram(wav_32k: np.ndarray) -> np.ndarray:
    """Upstream `spectrogram_torch` with the SoVITS settings -> [1025, frames]."""
    import_upstream()
    import torch
    from module.mel_processing import spectrogram_torch

    with contextlib.redirect_stdout(io.StringIO()):  # it prints when samples exceed +-1.2
        spec = spectrogram_torch(torch.as_tensor(np.asarray(wav_32k, dtype=np.float32))[None],
                                 2048, 32000, 640, 2048, center=False)
    return spec[0].numpy()


def time_upstream_decode(version: str, seed: int, inputs: str | os.PathLike, repeats: int,
                         out: str | os.PathLike) -> dict[str, Any]:
    """Rebuild the seeded upstream model and time its `decode` (noise_scale 0.5) on the codes,
    phones and spectrogram saved in `inputs` (.npz); saves its noise-free output to `out` (.npy).
    Meant to run in a fresh process without our OpenBLAS preload, as upstream runs for its users."""
    import time

    import torch

    net = build_upstream(version, seed=seed)
    data = np.load(inputs)
    codes, phones, spec = data["codes"], data["phones"], data["spec"]
    sv = data["sv"] if "sv" in data else None  # v2Pro/v2ProPlus: the speaker embedding
    upstream_decode(net, codes, phones, spec, noise_scale=0.5, sv_emb=sv)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        upstream_decode(net, codes, phones, spec, noise_scale=0.5, sv_emb=sv)
        times.append(time.perf_counter() - start)
    np.save(out, upstream_decode(net, codes, phones, spec, noise_scale=0.0, sv_emb=sv))
    return {"seconds": times, "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


if __name__ == "__main__":  # python -m primespeech_devtools.oracle.sovits VERSION SEED INPUTS REPEATS OUT
    print(json.dumps(time_upstream_decode(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]),
                                          sys.argv[5])))


_BUILT: dict[tuple[str, int, bool], Any] = {}


def shared_upstream(version: str = "v2", *, seed: int = 0, small: bool = True):
    """`build_upstream` memoised per process (tests share models across files; do not mutate)."""
    key = (version, seed, small)
    if key not in _BUILT:
        _BUILT[key] = build_upstream(version, seed=seed, hps=small_config(version) if small else None)
    return _BUILT[key]
