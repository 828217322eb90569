"""GPT-SoVITS "s2" SoVITS model (v1, v2, v2Pro and v2ProPlus) in MLX: semantic codes + phones +
reference spectrogram (+ for v2Pro/v2ProPlus the reference's speaker embedding) -> 32 kHz waveform (`Model.decode`, or chunk by chunk with upstream's streaming
`Model.decode_streaming`; `sola.py` joins the chunks), and HuBERT features -> semantic codes
(`Model.extract_latent`).

Mirrors upstream `SynthesizerTrn.decode` / `extract_latent`. One row runs unpadded, so upstream's
all-ones masks are left out; `decode_batch` decodes rows of different lengths together (one pass
of the models instead of one per row, for a GPU, where a decode costs about the same at any length),
with upstream's masks, each row as it would decode alone. Tensors are channels-last inside; the
public methods take and return numpy arrays in upstream's orientation.

v2Pro/v2ProPlus add a speaker-verification path: the reference clip's ERes2NetV2 embedding
(`models/speaker.py`, 20480 wide) goes through `sv_emb` into the style vector, then a PReLU; the
flow and the vocoder take that (gin-wide) vector, the MRTE its `ge_to512` projection. Every size
comes from the file's config (v2ProPlus: a 768-wide generator whose first upsampling kernel is 20).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..errors import PrimeSpeechError
from .base import BaseModelArgs
from .flow import ResidualCouplingBlock
from .hifigan import Generator, reach
from .mrte import MRTE
from .style_encoder import MelStyleEncoder
from .vits_attention import Encoder
from .vits_conv import Conv1d

logger = logging.getLogger(__name__)

KIND = "sovits"
V1_SYMBOLS = 322
V2_SYMBOLS = 732
V2_SPEC_BINS = 704
SPEAKER_VERSIONS = ("v2Pro", "v2ProPlus")  # with the speaker-verification embedding
VERSIONS = ("v1", "v2", *SPEAKER_VERSIONS)
UNSUPPORTED_VERSIONS = ("v3", "v4")
SPEAKER_EMBEDDING = 20480  # upstream's ERes2NetV2 `forward3` width, what `sv_emb` takes
MRTE_STYLE = 512  # the MRTE's fixed style width (ge_to512 maps the wider v2Pro style to it)


@dataclass
class ModelArgs(BaseModelArgs):
    version: str = "v2"
    n_symbols: int = V2_SYMBOLS
    spec_channels: int = 1025
    inter_channels: int = 192
    hidden_channels: int = 192
    filter_channels: int = 768
    n_heads: int = 2
    n_layers: int = 6
    kernel_size: int = 3
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = field(default_factory=lambda: [[1, 3, 5]] * 3)
    upsample_rates: list[int] = field(default_factory=lambda: [10, 8, 2, 2, 2])
    upsample_initial_channel: int = 512
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [16, 16, 8, 2, 2])
    gin_channels: int = 512
    ssl_dim: int = 768
    codebook_size: int = 1024
    sampling_rate: int = 32000
    hop_length: int = 640
    sv_dim: int = 0  # width of the speaker embedding `sv_emb` takes (v2Pro/v2ProPlus), 0 without

    @property
    def has_speaker(self) -> bool:
        """v2Pro/v2ProPlus: decoding needs the reference's speaker embedding."""
        return self.version in SPEAKER_VERSIONS

    @property
    def ref_bins(self) -> int:
        """Spectrogram bins the style encoder reads: all 1025 for v1, the first 704 from v2 on."""
        return self.spec_channels if self.version == "v1" else V2_SPEC_BINS


class Codebook(nn.Module):
    """The single residual-VQ codebook of the 25 Hz semantic tokens."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.embed = mx.zeros((size, dim))

    def encode(self, x: mx.array) -> mx.array:
        """Nearest entry by squared Euclidean distance (upstream's formula), x [T, D] -> [T]."""
        dist = -((x * x).sum(-1, keepdims=True) - 2 * (x @ self.embed.T)
                 + (self.embed * self.embed).sum(-1)[None, :])
        return mx.argmax(dist, axis=-1)


def _interpolate_linear(x: mx.array, size: int) -> mx.array:
    """PyTorch `F.interpolate(mode="linear", align_corners=False)` along time of x [B, T, C]."""
    t_in = x.shape[1]
    scale = np.float32(t_in) / np.float32(size)
    src = np.maximum(scale * (np.arange(size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5),
                     np.float32(0.0))
    i0 = src.astype(np.int64)
    lam1 = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
    i1 = i0 + (i0 < t_in - 1)
    lam0 = (np.float32(1.0) - lam1)[None, :, None]
    return (x[:, mx.array(i0)] * mx.array(lam0) + x[:, mx.array(i1)] * mx.array(lam1[None, :, None]))


class TextEncoder(nn.Module):
    """enc_p: SSL content encoder, phone encoder, MRTE fusion with the style vector, prior stats."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        h = args.hidden_channels
        self.out_channels = args.inter_channels
        self.ssl_proj = Conv1d(args.ssl_dim, h, 1)
        self.encoder_ssl = Encoder(h, args.filter_channels, args.n_heads, args.n_layers // 2, args.kernel_size)
        self.encoder_text = Encoder(h, args.filter_channels, args.n_heads, args.n_layers, args.kernel_size)
        self.text_embedding = nn.Embedding(args.n_symbols, h)
        self.mrte = MRTE()
        self.encoder2 = Encoder(h, args.filter_channels, args.n_heads, args.n_layers // 2, args.kernel_size)
        self.proj = Conv1d(h, 2 * args.inter_channels, 1)

    def encode_ssl(self, y: mx.array, mask: mx.array | None = None) -> mx.array:
        if mask is None:
            return self.encoder_ssl(self.ssl_proj(y))
        return self.encoder_ssl(self.ssl_proj(y * mask) * mask, mask)

    def encode_text(self, phones: mx.array, mask: mx.array | None = None) -> mx.array:
        return self.encoder_text(self.text_embedding(phones), mask)

    def __call__(self, y: mx.array, phones: mx.array, ge: mx.array, speed: float) -> tuple[mx.array, mx.array]:
        m_p, logs_p, _ = self.prior(self.encode_ssl(y), self.encode_text(phones), ge, speed)
        return m_p, logs_p

    def prior(self, y: mx.array, text: mx.array, ge: mx.array, speed: float, *, padding_frames: int = 0,
              result_frames: int | None = None, overlap: mx.array | None = None,
              ) -> tuple[mx.array, mx.array, mx.array]:
        """Mean and log-std of the prior from the encoded SSL content and phones, and the latent they
        come from (encoder2's output [B, T, C] before any speed change).

        Streaming (upstream `decode_streaming`, 50 Hz frames): `padding_frames` trailing frames are cut
        before encoder2, only the last `result_frames` of its output are kept, and `overlap` [F, C]
        (the previous chunk's latent tail) is cross-faded into the first F frames.
        """
        y = self.mrte(y, text, ge)
        if padding_frames:
            y = y[:, :-padding_frames]
        y = self.encoder2(y)
        if result_frames is not None and result_frames < y.shape[1]:
            y = y[:, -result_frames:]
        if overlap is not None:
            y = _cross_fade_latent(y, overlap)
        latent = y
        if speed != 1:
            y = _interpolate_linear(y, int(y.shape[1] / speed) + 1)
        stats = self.proj(y)
        return stats[..., :self.out_channels], stats[..., self.out_channels:], latent

    def prior_rows(self, y: mx.array, y_mask: mx.array, text: mx.array, text_mask: mx.array, ge: mx.array,
                   speed: float, frames: list[int]) -> tuple[mx.array, mx.array, mx.array, list[int]]:
        """`prior` of rows of different lengths (SSL frames `frames`, masks [B, T, 1]): (m_p, logs_p,
        their mask, each row's frames). At a speed other than 1 each row is stretched to the length it
        alone would get (upstream stretches a batch to its longest row's)."""
        y = self.encoder2(self.mrte(y, text, ge, y_mask, text_mask) * y_mask, y_mask)
        if speed != 1:
            stretched = [int(n / speed) + 1 for n in frames]
            y = padded_rows([_interpolate_linear(y[i:i + 1, :n], m)[0]
                              for i, (n, m) in enumerate(zip(frames, stretched, strict=True))])
            frames, y_mask = stretched, _row_mask(stretched, y_mask.dtype)
        stats = self.proj(y) * y_mask
        return stats[..., :self.out_channels], stats[..., self.out_channels:], y_mask, frames


def _row_mask(lengths: list[int], dtype=mx.float32) -> mx.array:
    """[B, max(lengths), 1]: 1 on each row's first lengths[i] frames, 0 after."""
    valid = np.arange(max(lengths))[None, :] < np.asarray(lengths)[:, None]
    return mx.array(valid[..., None]).astype(dtype)


def padded_rows(rows: list[mx.array]) -> mx.array:
    """Rows [T_i, ...] zero-padded at the end to the longest and stacked: [B, max T_i, ...]."""
    longest = max(r.shape[0] for r in rows)
    return mx.stack([mx.pad(r, [(0, longest - r.shape[0])] + [(0, 0)] * (r.ndim - 1)) for r in rows])


def _cross_fade_latent(y: mx.array, overlap: mx.array) -> mx.array:
    """Blend the previous chunk's latent tail `overlap` [F, C] into the first F frames of y [1, T, C]
    with the rising and falling halves of a sine window of 2F points."""
    n = overlap.shape[0]
    window = np.sin(np.arange(2 * n, dtype=np.float32) * np.float32(np.pi) / np.float32(2 * n))
    rise = mx.array(window[:n, None]).astype(y.dtype)
    fall = mx.array(window[n:, None]).astype(y.dtype)
    head = rise * y[:, :n] + fall * overlap.astype(y.dtype)[None]
    return head if n == y.shape[1] else mx.concatenate([head, y[:, n:]], axis=1)


class Model(nn.Module):
    """SoVITS synthesizer (inference parts of upstream `SynthesizerTrn`, v1/v2)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.enc_p = TextEncoder(args)
        self.dec = Generator(args.inter_channels, args.resblock_kernel_sizes, args.resblock_dilation_sizes,
                             args.upsample_rates, args.upsample_initial_channel, args.upsample_kernel_sizes,
                             args.gin_channels)
        self.flow = ResidualCouplingBlock(args.inter_channels, args.hidden_channels, 5, 1, 4,
                                          gin_channels=args.gin_channels)
        self.ref_enc = MelStyleEncoder(args.ref_bins, out_dim=args.gin_channels)
        self.ssl_proj = Conv1d(args.ssl_dim, args.ssl_dim, 2, stride=2)
        self.quantizer = Codebook(args.codebook_size, args.ssl_dim)
        if args.has_speaker:
            if args.sv_dim < 1:
                raise PrimeSpeechError(f"a {args.version} SoVITS model needs sv_dim (the speaker embedding width)")
            self.sv_emb = nn.Linear(args.sv_dim, args.gin_channels)
            self.ge_to512 = nn.Linear(args.gin_channels, MRTE_STYLE)
            self.prelu = nn.PReLU(args.gin_channels)

    @property
    def version(self) -> str:
        return self.args.version

    @property
    def samples_per_code(self) -> int:
        """Output samples per 25 Hz code at speed 1 (2 frames of hop_length)."""
        return 2 * self.args.hop_length

    # -- weights ---------------------------------------------------------------------------------

    @staticmethod
    def sanitize(weights: dict[str, Any]) -> dict[str, np.ndarray]:
        """Upstream SoVITS state dict -> our parameter names and MLX layouts (float32 numpy).

        Weight norm in any of its stored forms (`weight_g`/`weight_v`,
        `parametrizations.weight.original0/1`, or fused `weight`) becomes one fused `weight`
        (`g * v / ||v||`, norm over every axis but 0); Conv1d weights [out, in, k] -> [out, k, in];
        ConvTranspose1d weights [in, out, k] -> [out, k, in]; training-only entries are dropped.
        """
        arrays = {k: np.asarray(v) for k, v in weights.items() if not _training_only(k)}
        fused: dict[str, np.ndarray] = {}
        pairs: dict[str, dict[str, np.ndarray]] = {}
        for key, value in arrays.items():
            m = _WEIGHT_NORM_KEY.match(key)
            if m:
                pairs.setdefault(m.group(1), {})[m.group(2)] = value
            else:
                fused[key] = value.astype(np.float32)
        for base, parts in pairs.items():
            g = parts.get("weight_g", parts.get("parametrizations.weight.original0"))
            v = parts.get("weight_v", parts.get("parametrizations.weight.original1"))
            if g is None or v is None or len(parts) != 2:
                raise PrimeSpeechError(f"SoVITS checkpoint has an incomplete weight-norm pair at {base} "
                                       f"({', '.join(sorted(parts))}): the file is corrupt")
            v64 = v.astype(np.float64)
            norm = np.sqrt((v64 * v64).sum(axis=tuple(range(1, v.ndim)), keepdims=True))
            fused[f"{base}.weight"] = (g.astype(np.float64) * v64 / norm).astype(np.float32)
        out: dict[str, np.ndarray] = {}
        for key, value in fused.items():
            key = _rename(key)
            if value.ndim == 3 and not key.endswith(("emb_rel_k", "emb_rel_v")):
                value = np.moveaxis(value, 0, 2) if _TRANSPOSED_CONV.match(key) else np.moveaxis(value, 1, 2)
            out[key] = np.ascontiguousarray(value)
        return out

    # -- inference -------------------------------------------------------------------------------

    def style_embedding(self, refer_spec: np.ndarray | list[np.ndarray],
                        sv_emb: np.ndarray | list[np.ndarray] | None = None) -> tuple[mx.array, mx.array]:
        """(ge [1, 1, gin] for the flow and the vocoder, ge_text [1, 1, 512] for the MRTE): the style
        encoder on each reference spectrogram (v2Pro/v2ProPlus: plus `sv_emb` of its speaker
        embedding, then the PReLU), averaged over the references (upstream's `build_decode_condition`)."""
        specs = list(refer_spec) if isinstance(refer_spec, (list, tuple)) else [refer_spec]
        if not specs:
            raise PrimeSpeechError("no reference spectrogram given")
        embeddings = self._speaker_embeddings(sv_emb, len(specs))
        ges = []
        for i, spec in enumerate(specs):
            spec = np.asarray(spec, dtype=np.float32)
            if spec.ndim == 3 and spec.shape[0] == 1:
                spec = spec[0]
            if spec.ndim != 2 or spec.shape[0] < self.args.ref_bins or spec.shape[1] < 1:
                raise PrimeSpeechError(f"reference spectrogram must be [1025, frames], got {spec.shape}")
            ge = self.ref_enc(mx.array(spec[:self.args.ref_bins].T)[None])
            if embeddings is not None:
                ge = self.prelu(ge + self.sv_emb(mx.array(embeddings[i]))[None, None])
            ges.append(ge)
        ge = ges[0] if len(ges) == 1 else mx.mean(mx.stack(ges), axis=0)
        return ge, (self.ge_to512(ge) if self.args.has_speaker else ge)

    def _speaker_embeddings(self, sv_emb, references: int) -> list[np.ndarray] | None:
        """`sv_emb` checked against the version and the references: one [sv_dim] array per reference."""
        if not self.args.has_speaker:
            if sv_emb is not None:
                raise PrimeSpeechError(f"a {self.version} SoVITS model takes no speaker embedding (sv_emb): "
                                       "only v2Pro/v2ProPlus models do")
            return None
        if sv_emb is None:
            raise PrimeSpeechError(f"a {self.version} SoVITS model needs the reference's speaker embedding "
                                   "(sv_emb, from the speaker-verification model)")
        listed = isinstance(sv_emb, (list, tuple))
        embeddings = [np.asarray(e, dtype=np.float32) for e in (sv_emb if listed else [sv_emb])]
        if len(embeddings) != references:
            raise PrimeSpeechError(f"{len(embeddings)} speaker embedding(s) for {references} reference "
                                   "spectrogram(s): give one per reference")
        for i, e in enumerate(embeddings):
            if e.shape == (1, self.args.sv_dim):
                embeddings[i] = e = e[0]
            if e.shape != (self.args.sv_dim,):
                raise PrimeSpeechError(f"speaker embedding must be [{self.args.sv_dim}], got {e.shape}")
        return embeddings

    def decode(self, codes, phones, refer_spec, *, sv_emb=None, noise_scale: float = 0.5, speed: float = 1.0,
               seed: int | None = None) -> np.ndarray:
        """Waveform (float32, 1-D, `sampling_rate` Hz) for semantic `codes` [T25] and the TARGET
        `phones` [Tp] (not the prompt's), in the voice of `refer_spec` ([1025, frames] or a list,
        whose style vectors are averaged). v2Pro/v2ProPlus need `sv_emb`, the reference's speaker
        embedding ([sv_dim], or a list matching a list of spectrograms); v1/v2 take none."""
        return self.decode_batch([(codes, phones)], refer_spec, sv_emb=sv_emb, noise_scale=noise_scale,
                                 speed=speed, seeds=[seed])[0]

    def decode_batch(self, rows, refer_spec, *, sv_emb=None, noise_scale: float = 0.5, speed: float = 1.0,
                     seeds=None, vocoder_frames: int | None = None) -> list[np.ndarray]:
        """`decode` of several rows `[(codes, phones), ...]` in one pass, in the same voice and at the
        same speed: one waveform per row, each what `decode` gives for it alone with its seed
        (`seeds`, one per row or None), up to float rounding.

        `vocoder_frames` bounds the vocoder's memory, which grows with rows x padded 50 Hz frames: past
        it, the vocoder runs window by window (each rows x at most `vocoder_frames // rows` frames,
        plus `vocoder_reach` frames of context on either side, evaluated before the next is built),
        and the samples are the same as one pass's, up to float rounding."""
        rows = [self._check_inputs(codes, phones, speed) for codes, phones in rows]
        if not rows:
            return []
        seeds = [None] * len(rows) if seeds is None else list(seeds)
        if len(seeds) != len(rows):
            raise PrimeSpeechError(f"{len(seeds)} seeds for {len(rows)} rows: give one per row (or none)")
        window = None
        if vocoder_frames is not None:
            window = self._count(vocoder_frames, "vocoder_frames") // len(rows)
            if window < 1:
                raise PrimeSpeechError(f"vocoder_frames {vocoder_frames} is less than one frame per row "
                                       f"({len(rows)} rows)")
        audios, _ = self._synthesize(rows, refer_spec, sv_emb, noise_scale, speed, seeds, window=window)
        mx.eval(audios)
        return [np.array(audio, dtype=np.float32) for audio in audios]

    def decode_streaming(self, codes, phones, refer_spec, *, sv_emb=None, noise_scale: float = 0.5,
                         speed: float = 1.0,
                         seed: int | None = None, result_length: int | None = None,
                         overlap_frames: np.ndarray | mx.array | None = None,
                         padding_length: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One chunk of upstream's streaming synthesis (`SynthesizerTrn.decode_streaming`, batch 1).

        `codes` [T25] are all the semantic codes so far: the content and phone encoders see them all,
        for context (upstream re-encodes the whole history at every chunk); `padding_length` trailing
        codes are dropped before encoder2 and only the last `result_length` codes go on through the
        flow and the vocoder (both counted in 25 Hz codes, 2 latent frames each; None keeps all).
        `overlap_frames` [C, F] is the previous call's latent tail (upstream passes the frames of its
        last overlap codes), cross-faded with a sine window into the first F frames.

        Returns `(audio, latent, latent_mask)`: the waveform (float32, 1-D) of the kept codes at
        `speed`; the latent, float32 [C, 2 * kept codes] in upstream's orientation (its `y_[0]`:
        encoder2's output after the cross-fade, before the speed change), so `latent[:, -2 * k:]` is
        the next call's `overlap_frames` for an overlap of k codes; and its mask (ones [frames], as
        upstream's `y_mask_` at batch 1). `sv_emb` as for `decode`.
        """
        codes, phones = self._check_inputs(codes, phones, speed)
        padding_frames = 2 * self._count(padding_length, "padding_length", allow_zero=True)
        result_frames = None if result_length is None else 2 * self._count(result_length, "result_length")
        kept = 2 * codes.size - padding_frames
        if kept < 1:
            raise PrimeSpeechError(f"padding_length {padding_length} leaves none of the {codes.size} codes")
        if result_frames is not None:
            kept = min(kept, result_frames)
        overlap = None
        if overlap_frames is not None:
            overlap = np.asarray(overlap_frames, dtype=np.float32)
            if overlap.ndim != 2 or overlap.shape[0] != self.args.hidden_channels or not 0 < overlap.shape[1] <= kept:
                raise PrimeSpeechError(
                    f"overlap_frames must be a latent tail [{self.args.hidden_channels}, frames <= {kept}] "
                    f"from the previous decode_streaming call, got {overlap.shape}")
            overlap = mx.array(overlap.T)
        (audio,), latent = self._synthesize([(codes, phones)], refer_spec, sv_emb, noise_scale, speed, [seed],
                                            padding_frames=padding_frames, result_frames=result_frames,
                                            overlap=overlap)
        mx.eval(audio, latent)
        latent = np.array(latent[0].T, dtype=np.float32)
        return np.array(audio, dtype=np.float32), latent, np.ones(latent.shape[1], dtype=np.float32)

    def _synthesize(self, rows: list[tuple[np.ndarray, np.ndarray]], refer_spec, sv_emb, noise_scale: float,
                    speed: float, seeds: list[int | None], window: int | None = None,
                    **prior_args) -> tuple[list[mx.array], mx.array | None]:
        """Lazy (each row's waveform [N_i], the latent [1, T, C] of a single row, else None) for
        `decode_batch` and `decode_streaming`. One row runs unpadded, without masks, and `prior_args` go
        to `TextEncoder.prior`; rows of different lengths are padded and masked as upstream's batched
        `SynthesizerTrn.decode`. Each row's noise is drawn as it alone would draw it. `window`: the
        vocoder's frames at a time (`_vocode`)."""
        ge, ge_text = self.style_embedding(refer_spec, sv_emb)
        phones = [mx.array(p) for _, p in rows]
        quantized = [mx.repeat(self.quantizer.embed[mx.array(c)], 2, axis=0) for c, _ in rows]  # 25 -> 50 Hz
        if len(rows) == 1:
            y_mask = None
            text = self.enc_p.encode_text(phones[0][None])
            m_p, logs_p, latent = self.enc_p.prior(self.enc_p.encode_ssl(quantized[0][None]), text, ge_text, speed,
                                                   **prior_args)
            frames = [m_p.shape[1]]
        else:
            dtype = self.quantizer.embed.dtype
            text_mask = _row_mask([p.size for p in phones], dtype)
            text = self.enc_p.encode_text(padded_rows(phones), text_mask)
            frames = [q.shape[0] for q in quantized]
            y_mask = _row_mask(frames, dtype)
            m_p, logs_p, y_mask, frames = self.enc_p.prior_rows(
                self.enc_p.encode_ssl(padded_rows(quantized), y_mask), y_mask, text, text_mask, ge_text, speed,
                frames)
            latent = None
        if noise_scale:
            noise = [mx.random.normal((1, n, m_p.shape[-1]), key=None if seed is None else mx.random.key(seed))
                     for n, seed in zip(frames, seeds, strict=True)]
            z_p = m_p + (noise[0] if y_mask is None else padded_rows([n[0] for n in noise])) \
                * mx.exp(logs_p) * noise_scale
        else:
            z_p = m_p
        if y_mask is not None:
            z_p = z_p * y_mask
        z = self.flow.reverse(z_p, ge, y_mask)
        audio = self._vocode(z if y_mask is None else z * y_mask, ge, y_mask, window)
        per_frame = audio.shape[1] // m_p.shape[1]
        return [audio[i, :n * per_frame] for i, n in enumerate(frames)], latent

    @property
    def vocoder_reach(self) -> int:
        """Latent frames on either side that a frame's samples depend on (`hifigan.reach`)."""
        a = self.args
        return reach(a.resblock_kernel_sizes, a.resblock_dilation_sizes, a.upsample_rates, a.upsample_kernel_sizes)

    def _vocode(self, z: mx.array, ge: mx.array, mask: mx.array | None, window: int | None) -> mx.array:
        """The vocoder's samples [B, T * hop] of the latent z [B, T, C]; past `window` frames, window by
        window with `vocoder_reach` frames of context on each side, each window evaluated before the
        next is built so that only one window's activations are alive (on a GPU, whatever the host
        has queued keeps its inputs until it has run)."""
        frames = z.shape[1]
        if window is None or frames <= window:
            return self.dec(z, ge, mask)[..., 0]
        margin = self.vocoder_reach
        pieces = []
        for start in range(0, frames, window):
            stop = min(start + window, frames)
            lo, hi = max(0, start - margin), min(frames, stop + margin)
            piece = self.dec(z[:, lo:hi], ge, None if mask is None else mask[:, lo:hi])[..., 0]
            hop = piece.shape[1] // (hi - lo)
            piece = piece[:, (start - lo) * hop:(stop - lo) * hop]
            mx.eval(piece)
            pieces.append(piece)
        return mx.concatenate(pieces, axis=1)

    def _check_inputs(self, codes, phones, speed: float) -> tuple[np.ndarray, np.ndarray]:
        codes = self._ids(codes, self.args.codebook_size, "semantic codes")
        phones = self._ids(phones, self.args.n_symbols, "phone ids")
        if speed <= 0:
            raise PrimeSpeechError(f"speed must be positive, got {speed}")
        return codes, phones

    @staticmethod
    def _count(value, what: str, allow_zero: bool = False) -> int:
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if allow_zero else 1):
            raise PrimeSpeechError(f"{what} must be a {'non-negative' if allow_zero else 'positive'} number of "
                                   f"semantic codes, got {value!r}")
        return int(value)

    def extract_latent(self, ssl_features: np.ndarray) -> np.ndarray:
        """Semantic codes [T50 // 2] (int64) of HuBERT features [768, T50]."""
        ssl = np.asarray(ssl_features, dtype=np.float32)
        if ssl.ndim == 3 and ssl.shape[0] == 1:
            ssl = ssl[0]
        if ssl.ndim != 2 or ssl.shape[0] != self.args.ssl_dim or ssl.shape[1] < 2:
            raise PrimeSpeechError(f"SSL features must be [{self.args.ssl_dim}, frames >= 2], got {ssl.shape}")
        x = self.ssl_proj(mx.array(ssl.T)[None])[0]
        return np.array(self.quantizer.encode(x), dtype=np.int64)

    @staticmethod
    def _ids(values, limit: int, what: str) -> np.ndarray:
        ids = np.asarray(values).reshape(-1)
        if ids.size == 0:
            raise PrimeSpeechError(f"no {what} to decode")
        if not np.issubdtype(ids.dtype, np.integer):
            raise PrimeSpeechError(f"{what} must be integers, got {ids.dtype}")
        if ids.min() < 0 or ids.max() >= limit:
            raise PrimeSpeechError(f"{what} out of range [0, {limit}): min {ids.min()}, max {ids.max()}")
        return ids.astype(np.int32)


_WEIGHT_NORM_KEY = re.compile(r"^(.*)\.(weight_g|weight_v|parametrizations\.weight\.original[01])$")
_TRANSPOSED_CONV = re.compile(r"^dec\.ups\.\d+\.weight$")
_RENAMES = (
    (re.compile(r"^quantizer\.vq\.layers\.0\._codebook\.embed$"), "quantizer.embed"),
    (re.compile(r"^ref_enc\.spectral\.0\.fc\."), "ref_enc.spectral1."),
    (re.compile(r"^ref_enc\.spectral\.3\.fc\."), "ref_enc.spectral2."),
    (re.compile(r"^ref_enc\.temporal\.(\d+)\.conv1\.conv\."), r"ref_enc.temporal.\1.conv."),
    (re.compile(r"^ref_enc\.fc\.fc\."), "ref_enc.fc."),
)
_TRAINING_ONLY = re.compile(
    r"^(enc_q\.|net_d\.|discriminator\.|optimizer|quantizer\.vq\.layers\.\d+\._codebook\.(inited|cluster_size|embed_avg)$)"
)


def _training_only(key: str) -> bool:
    return bool(_TRAINING_ONLY.match(key))


def _rename(key: str) -> str:
    for pattern, repl in _RENAMES:
        key, n = pattern.subn(repl, key)
        if n:
            return key
    m = re.match(r"^flow\.flows\.(\d+)\.(.*)$", key)
    if m:
        index = int(m.group(1))
        if index % 2:
            raise PrimeSpeechError(f"unexpected SoVITS key {key}: odd flow entries are parameter-free flips")
        return f"flow.flows.{index // 2}.{m.group(2)}"
    return key


def load_model(path, *, dtype=None) -> Model:
    """A SoVITS model from an official `.pth` (v1, v2, v2Pro, v2ProPlus; converted once, cached
    beside it) or a converted folder: the one loader's `load_model("sovits", path)`."""
    from ..loading import load_model as load

    return load(KIND, path, dtype=dtype)


__all__ = ["Model", "ModelArgs", "load_model"]
