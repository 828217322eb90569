"""Joining streamed SoVITS chunks the way upstream GPT-SoVITS does in `streaming_mode`.

Each streamed chunk is decoded with `overlap_length` codes of the previous chunk in front of it
(`Model.decode_streaming`), so consecutive waveforms share about `overlap_size` samples. The previous
chunk's last `overlap_size` samples are held back; when the next chunk arrives, SOLA (synchronous
overlap-add) finds where in the new chunk's first `overlap_size + search` samples the held-back tail
fits best (normalised cross-correlation), and a Hann cross-fade blends the two from there.

Pure numpy, float64 inside, float32 out. `StreamDecoder` drives a SoVITS model through upstream's
per-chunk bookkeeping (TTS.run's streaming loop: the overlap growing for short chunks, the audio
trimming, first / middle / final chunk slicing) and returns the audio to play for each chunk.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import PrimeSpeechError

SEARCH = 320  # samples of lag SOLA tries (10 ms at 32 kHz), upstream's default
MIN_CHUNK_CODES = 10  # a chunk shorter than this borrows extra overlap codes from its predecessor


def _float(x, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise PrimeSpeechError(f"{what} is empty")
    return a


def sola_offset(previous: np.ndarray, current: np.ndarray, overlap: int, search: int = SEARCH) -> int:
    """Lag (0..search) at which `previous`'s last `overlap` samples best match `current`: the argmax
    of their correlation divided by the root energy of the `current` window (+1e-8), over the windows
    that fit in `current[:overlap + search]`."""
    previous, current = _float(previous, "previous chunk"), _float(current, "current chunk")
    if overlap < 1 or search < 0 or previous.size < overlap or current.size < overlap:
        raise PrimeSpeechError(f"SOLA needs 1 <= overlap ({overlap}) <= both chunk lengths "
                               f"({previous.size}, {current.size}) and search >= 0 ({search})")
    tail = previous[-overlap:]
    windows = np.lib.stride_tricks.sliding_window_view(current[:overlap + search], overlap)
    score = (windows @ tail) / np.sqrt(np.einsum("ij,ij->i", windows, windows) + 1e-8)
    return int(np.argmax(score))


def _hann(overlap: int) -> np.ndarray:
    """Periodic Hann window of 2 * overlap points (torch.hann_window's default)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(2 * overlap) / (2 * overlap))


def _faded(previous: np.ndarray, current: np.ndarray, overlap: int, search: int) -> tuple[int, np.ndarray]:
    """(lag, `current` with its `overlap` samples from the lag replaced by the cross-fade from
    `previous`'s tail), in float64."""
    idx = sola_offset(previous, current, overlap, search)
    previous, faded = _float(previous, "previous chunk"), _float(current, "current chunk").copy()
    window = _hann(overlap)
    faded[idx:idx + overlap] = window[:overlap] * faded[idx:idx + overlap] + window[overlap:] * previous[-overlap:]
    return idx, faded


def sola_join(previous: np.ndarray, current: np.ndarray, overlap: int, search: int = SEARCH) -> np.ndarray:
    """`previous` without its last `overlap` samples, then `current` from the SOLA lag on, its first
    `overlap` samples cross-faded (rising Hann half) with `previous`'s tail (falling half).
    Upstream's `TTS.sola_algorithm([previous, current], overlap, search)`."""
    idx, faded = _faded(previous, current, overlap, search)
    return np.concatenate([_float(previous, "previous chunk")[:-overlap], faded[idx:]]).astype(np.float32)


def upsample_rate(upsample_rates: list[int] | tuple[int, ...], speed: float) -> float:
    """Output samples per 25 Hz code at `speed` (two 50 Hz frames of prod(upsample_rates) samples)."""
    return math.prod(upsample_rates) * (2 / speed)


def overlap_size(overlap_length: int, rate: float) -> int:
    """Samples two consecutive chunks share: `overlap_length` codes at `rate` samples per code."""
    return math.ceil(overlap_length * rate)


def chunk_overlap(n_codes: int, is_first: bool, overlap_length: int) -> int:
    """Codes of the previous chunk decoded again in front of a new chunk of `n_codes`: `overlap_length`,
    plus enough to reach MIN_CHUNK_CODES for a short non-first chunk (0 extra for the first)."""
    if not is_first and n_codes < MIN_CHUNK_CODES:
        return overlap_length + MIN_CHUNK_CODES - n_codes
    return overlap_length


def next_piece(last_chunk: np.ndarray | None, chunk: np.ndarray, *, is_first: bool, is_final: bool,
               overlap_size: int, search: int = SEARCH) -> tuple[np.ndarray, np.ndarray]:
    """Upstream's per-chunk slicing (TTS.run, streaming_mode): `(audio to emit now, chunk to keep as
    the next call's last_chunk)`.

    - first and not final: everything but the last `overlap_size` samples (held back);
    - first and final: the whole chunk;
    - middle: SOLA-join with `last_chunk`, emitting from the held-back tail up to the new chunk's own
      held-back tail; the kept chunk carries the cross-fade, as upstream's in-place join leaves it;
    - final (not first): the whole chunk as decoded — its leading overlap replaces the held-back tail,
      without SOLA, as upstream does.
    """
    chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
    if is_first:
        return (chunk[:-overlap_size] if not is_final else chunk), chunk
    if is_final:
        return chunk, chunk
    if last_chunk is None:
        raise PrimeSpeechError("a non-first streaming chunk needs the previous chunk")
    last = np.asarray(last_chunk, dtype=np.float32).reshape(-1)
    idx, faded = _faded(last, chunk, overlap_size, search)
    joined = np.concatenate([last[:-overlap_size], faded[idx:]]).astype(np.float32)
    return joined[last.size - overlap_size:-overlap_size], faded.astype(np.float32)


def held_tail(last_chunk: np.ndarray, overlap_size: int) -> np.ndarray:
    """What to emit when generation ends right after a non-final chunk (upstream's None chunk):
    that chunk's held-back last `overlap_size` samples."""
    return np.asarray(last_chunk, dtype=np.float32).reshape(-1)[-overlap_size:]


class StreamDecoder:
    """Upstream's streaming SoVITS side for one utterance: feed each chunk of new semantic codes as
    the T2S model yields it, get back the audio to play.

    `model` is a SoVITS `Model` (anything with its `decode_streaming`); `phones` the target phones;
    `overlap_length` codes (upstream default 2) are re-decoded in front of each chunk. Every chunk
    is decoded with the whole code history for context (as upstream), so its cost grows with the
    utterance. `seed`, if given, seeds chunk i's noise with seed + i. `sv_emb`: the reference's speaker
    embedding, for v2Pro/v2ProPlus models (as `Model.decode` takes it).
    """

    def __init__(self, model: Any, phones, refer_spec, *, sv_emb=None, speed: float = 1.0, noise_scale: float = 0.5,
                 overlap_length: int = 2, seed: int | None = None, search: int = SEARCH):
        if overlap_length < 1:
            raise PrimeSpeechError(f"overlap_length must be at least 1 code, got {overlap_length}")
        self.model, self.phones, self.refer_spec, self.sv_emb = model, phones, refer_spec, sv_emb
        self.speed, self.noise_scale, self.seed, self.search = speed, noise_scale, seed, search
        self.overlap_length = overlap_length
        self.rate = upsample_rate(model.args.upsample_rates, speed)
        self.overlap_size = overlap_size(overlap_length, self.rate)
        self._codes: list[np.ndarray] = []
        self._latent: np.ndarray | None = None
        self._last_chunk: np.ndarray | None = None
        self._done = False

    def push(self, codes, is_final: bool) -> np.ndarray:
        """Audio (float32) to play for the next chunk of `codes`; on the final chunk it ends the
        utterance. `codes` None or empty with is_final ends it after a non-final chunk."""
        if self._done:
            raise PrimeSpeechError("this stream has ended: start a new StreamDecoder")
        new = None if codes is None else np.asarray(codes).reshape(-1)
        if new is None or new.size == 0:
            if not is_final:
                raise PrimeSpeechError("an empty streaming chunk can only end the stream")
            self._done = True
            if self._last_chunk is None:
                return np.zeros(0, dtype=np.float32)
            return held_tail(self._last_chunk, self.overlap_size)
        is_first = self._last_chunk is None
        overlap_len = chunk_overlap(new.size, is_first, self.overlap_length)
        self._codes.append(new)
        seed = None if self.seed is None else self.seed + len(self._codes) - 1
        chunk, latent, _ = self.model.decode_streaming(
            np.concatenate(self._codes), self.phones, self.refer_spec, sv_emb=self.sv_emb, noise_scale=self.noise_scale,
            speed=self.speed, seed=seed, result_length=None if is_first else new.size + overlap_len,
            overlap_frames=None if self._latent is None else self._latent[:, -2 * overlap_len:])
        if overlap_len > self.overlap_length:
            chunk = chunk[-int((self.overlap_length + new.size) * self.rate):]
        piece, self._last_chunk = next_piece(self._last_chunk, chunk, is_first=is_first, is_final=is_final,
                                             overlap_size=self.overlap_size, search=self.search)
        self._latent = latent
        self._done = is_final
        return piece


__all__ = ["SEARCH", "StreamDecoder", "chunk_overlap", "held_tail", "next_piece", "overlap_size",
           "sola_join", "sola_offset", "upsample_rate"]
