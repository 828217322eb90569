"""Conditioning features as GPT-SoVITS prepares them: BERT phone features and prompt semantic codes.

- `bert_features`: hidden_states[-3] of Chinese RoBERTa for a normalised Chinese text, [CLS]/[SEP]
  dropped, each character's vector repeated word2ph[i] times -> [1024, n_phones].
  `segment_bert_features` applies upstream's language rule: only zh gets BERT, every other language
  zeros [1024, n_phones].
- `prompt_semantic`: the reference clip at 16 kHz (3-10 s), 0.6 s of silence appended, CNHuBERT,
  then the voice's SoVITS `extract_latent` -> semantic codes [T25].
- `speaker_fbank`: the speaker-verification model's input, Kaldi fbank of a 16 kHz clip -> [T, 80].
- `PromptCache`: per-process (optionally on-disk .npz) cache of a voice's prompt features keyed by
  the reference file's content hash, the prompt text and its language.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from .errors import PrimeSpeechError

logger = logging.getLogger(__name__)

BERT_DIM = 1024
HUBERT_SAMPLE_RATE = 16000
MIN_REFERENCE_SAMPLES = 3 * HUBERT_SAMPLE_RATE  # upstream rejects clips outside 3-10 s
MAX_REFERENCE_SAMPLES = 10 * HUBERT_SAMPLE_RATE
# Upstream appends 0.3 s at the SoVITS rate (32 kHz), i.e. 9600 zeros, to the 16 kHz clip.
PROMPT_PAD_SAMPLES = 9600


def _token_rows(encoding, n_chars: int) -> np.ndarray:
    """Row of the hidden state (with [CLS] at 0) that each character of the text takes its vector from."""
    n_tokens = len(encoding.ids) - 2
    if n_tokens == n_chars:
        # One token per character: upstream's indexing (hidden[1:-1][i]).
        return np.arange(1, n_chars + 1)
    # Upstream assumes one token per character and fails (IndexError) or misaligns otherwise, e.g.
    # on digit runs or Latin words. Here each character takes the token that covers it; characters
    # no token covers (whitespace) take the previous character's token.
    logger.warning("BERT tokens (%d) do not match characters (%d): aligning by character offsets",
                   n_tokens, n_chars)
    rows = np.empty(n_chars, dtype=np.int64)
    last = 1
    for i in range(n_chars):
        token = encoding.char_to_token(i)
        if token is not None:
            last = token
        rows[i] = last
    return rows


def bert_features(model, tokenizer, norm_text: str, word2ph: Sequence[int]) -> np.ndarray:
    """BERT features of a normalised Chinese text at phone level: float32 [hidden, sum(word2ph)].

    model: `models.roberta.Model`; tokenizer: `models.roberta.load_tokenizer(folder)`.
    """
    return bert_features_batch(model, tokenizer, [(norm_text, word2ph)])[0]


def bert_features_batch(model, tokenizer, texts: Sequence[tuple[str, Sequence[int]]]) -> list[np.ndarray]:
    """`bert_features` of several (norm_text, word2ph) at once: one padded RoBERTa call (padding masked
    out), which reads the model's weights once for all of them. A model that does not take batches
    (`accepts_batches` False, e.g. a Core ML package) is called once per text."""
    encoded = []
    for norm_text, word2ph in texts:
        word2ph = [int(n) for n in word2ph]
        if len(word2ph) != len(norm_text):
            raise PrimeSpeechError(f"word2ph has {len(word2ph)} entries for {len(norm_text)} characters of "
                                   f"{norm_text!r}: the text frontend's output is inconsistent")
        encoding = tokenizer.encode(norm_text) if norm_text else None
        rows = np.repeat(_token_rows(encoding, len(norm_text)), word2ph) if encoding else None
        encoded.append((encoding, rows))
    live = [i for i, (encoding, _) in enumerate(encoded) if encoding is not None]
    if live and getattr(model, "accepts_batches", True) and len(live) > 1:
        width = max(len(encoded[i][0].ids) for i in live)
        ids = np.zeros((len(live), width), dtype=np.int32)
        keep = np.zeros((len(live), width), dtype=np.int32)
        for row, i in enumerate(live):
            n = len(encoded[i][0].ids)
            ids[row, :n], keep[row, :n] = encoded[i][0].ids, 1
        out = model(mx.array(ids), attention_mask=mx.array(keep))
        hidden = {i: out[row] for row, i in enumerate(live)}
    else:
        hidden = {i: model(mx.array([encoded[i][0].ids]))[0] for i in live}
    features = []
    for i, (_, rows) in enumerate(encoded):
        if i not in hidden:
            features.append(np.zeros((BERT_DIM, 0), dtype=np.float32))
            continue
        picked = mx.take(hidden[i], mx.array(rows, dtype=mx.int32), axis=0).T
        features.append(np.array(picked.astype(mx.float32)))
    return features


def segment_bert_features(language: str, norm_text: str, word2ph: Sequence[int] | None, n_phones: int,
                          model=None, tokenizer=None) -> np.ndarray:
    """Upstream's per-segment rule: BERT features for Chinese (`zh`/`all_zh`), zeros [1024, n_phones]
    for every other language (English, Japanese, Korean, Cantonese...). The model is only needed for zh."""
    return segment_bert_features_batch([(language, norm_text, word2ph, n_phones)], model, tokenizer)[0]


def segment_bert_features_batch(pieces: Sequence[tuple[str, str, Sequence[int] | None, int]], model=None,
                                tokenizer=None, max_batch: int = 16) -> list[np.ndarray]:
    """`segment_bert_features` of several (language, norm_text, word2ph, n_phones) pieces, the Chinese ones
    through RoBERTa together, at most `max_batch` per call."""
    chinese = [i for i, piece in enumerate(pieces) if piece[0].replace("all_", "") == "zh"]
    if chinese and (model is None or tokenizer is None):
        raise PrimeSpeechError("Chinese text needs the chinese-roberta-wwm-ext-large model: configure its folder")
    out = [np.zeros((BERT_DIM, n_phones), dtype=np.float32) for _, _, _, n_phones in pieces]
    for start in range(0, len(chinese), max_batch):
        group = chinese[start:start + max_batch]
        texts = [(pieces[i][1], pieces[i][2] or []) for i in group]
        for i, features in zip(group, bert_features_batch(model, tokenizer, texts), strict=True):
            if features.shape[1] != pieces[i][3]:
                raise PrimeSpeechError(f"BERT features cover {features.shape[1]} phones, the text has "
                                       f"{pieces[i][3]}: the text frontend's word2ph is inconsistent")
            out[i] = features
    return out


def load_reference_16k(ref_wav_path: str | os.PathLike) -> np.ndarray:
    """The reference clip as upstream reads it for HuBERT: mono float32 at 16 kHz, 3-10 s long."""
    from .audio import load_audio

    wave = load_audio(ref_wav_path, HUBERT_SAMPLE_RATE)
    if not MIN_REFERENCE_SAMPLES <= wave.shape[0] <= MAX_REFERENCE_SAMPLES:
        raise PrimeSpeechError(
            f"reference audio {ref_wav_path} is {wave.shape[0] / HUBERT_SAMPLE_RATE:.2f} s long: "
            "it must be between 3 and 10 seconds; trim or replace it"
        )
    return wave


def hubert_content(hubert_model, wave_16k: np.ndarray) -> mx.array:
    """HuBERT features of a 16 kHz clip with upstream's 0.6 s of trailing silence: [T50, 768]."""
    padded = np.concatenate([np.asarray(wave_16k, dtype=np.float32),
                             np.zeros(PROMPT_PAD_SAMPLES, dtype=np.float32)])
    return mx.array(hubert_model(mx.array(padded)))[0]


def prompt_semantic(hubert_model, sovits_model, ref_wav_path: str | os.PathLike) -> np.ndarray:
    """Semantic codes [T25] (int64) of a reference clip: 16 kHz, 3-10 s check, 9600 zeros appended,
    HuBERT last hidden state, then the voice's SoVITS `extract_latent` ([768, T50] -> codes).

    hubert_model: `models.hubert.Model` or any callable waveform -> [1, T, 768];
    sovits_model: `models.sovits.Model`."""
    ssl = hubert_content(hubert_model, load_reference_16k(ref_wav_path))
    codes = sovits_model.extract_latent(np.array(ssl.T.astype(mx.float32)))
    return np.asarray(codes).reshape(-1).astype(np.int64)


SPEAKER_SAMPLE_RATE = 16000
SPEAKER_MEL_BINS = 80


def speaker_fbank(wav_16k: np.ndarray) -> np.ndarray:
    """Kaldi log-mel fbank of a mono 16 kHz clip as upstream's `sv.py` computes it for ERes2NetV2:
    float32 [T, 80], T = 1 + (n - 400) // 160 (25 ms povey frames every 10 ms, snip_edges), no dither.

    Samples are used as given (float in [-1, 1], not rescaled to int16 as Kaldi's own tools would)."""
    try:
        import kaldi_native_fbank as knf
    except ImportError as exc:
        raise PrimeSpeechError("v2Pro/v2ProPlus voices need kaldi-native-fbank for the speaker model: "
                               "pip install kaldi-native-fbank") from exc
    # Every option spelled out: upstream's eres2net/kaldi.py defaults, where knf's differ (dither).
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = SPEAKER_SAMPLE_RATE
    opts.frame_opts.frame_shift_ms = 10.0
    opts.frame_opts.frame_length_ms = 25.0
    opts.frame_opts.dither = 0.0
    opts.frame_opts.preemph_coeff = 0.97
    opts.frame_opts.remove_dc_offset = True
    opts.frame_opts.window_type = "povey"
    opts.frame_opts.round_to_power_of_two = True
    opts.frame_opts.blackman_coeff = 0.42
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = SPEAKER_MEL_BINS
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = 0.0
    opts.mel_opts.vtln_low = 100.0
    opts.mel_opts.vtln_high = -500.0
    opts.mel_opts.htk_mode = False
    opts.mel_opts.is_librosa = False
    opts.use_energy = False
    opts.energy_floor = 1.0
    opts.raw_energy = True
    opts.htk_compat = False
    opts.use_log_fbank = True
    opts.use_log_floor = True
    opts.eps = float(np.finfo(np.float32).eps)
    opts.use_power = True
    wave = np.ascontiguousarray(np.asarray(wav_16k, dtype=np.float32).reshape(-1))
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(SPEAKER_SAMPLE_RATE, wave)
    fbank.input_finished()
    n_frames = fbank.num_frames_ready
    if n_frames == 0:
        return np.zeros((0, SPEAKER_MEL_BINS), dtype=np.float32)
    return np.stack([fbank.get_frame(i) for i in range(n_frames)]).astype(np.float32, copy=False)


class PromptCache:
    """A voice's prompt features (codes, phones, BERT, spectrogram...) computed once.

    Keyed by the reference file's content (SHA-256), the prompt text, its language and a caller tag
    naming the models used (e.g. the converted SoVITS folder). Entries live in memory (LRU,
    `max_entries`) and, when `persist_dir` is given, as `prompt-<key>.npz` files there (typically
    next to the converted weights), so a restarted process reuses them.
    """

    def __init__(self, persist_dir: str | os.PathLike | None = None, max_entries: int = 16):
        self.persist_dir = Path(persist_dir) if persist_dir else None
        self.max_entries = max_entries
        self._entries: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self._file_hashes: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()

    def file_hash(self, path: str | os.PathLike) -> str:
        """SHA-256 of a file's bytes (memoised on path, size and mtime)."""
        path = Path(path)
        try:
            stat = path.stat()
        except FileNotFoundError as exc:
            raise PrimeSpeechError(f"reference audio not found: {path}") from exc
        memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if memo not in self._file_hashes:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            self._file_hashes[memo] = digest.hexdigest()
        return self._file_hashes[memo]

    def key(self, ref_wav_path: str | os.PathLike, prompt_text: str, language: str, tag: str = "") -> str:
        """The cache key of a (reference clip, prompt text, language, models) combination."""
        parts = [self.file_hash(ref_wav_path), prompt_text, language, tag]
        return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:40]

    def _path(self, key: str) -> Path | None:
        return self.persist_dir / f"prompt-{key}.npz" if self.persist_dir else None

    def _load(self, key: str) -> dict[str, np.ndarray] | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable prompt cache %s (%s)", path, exc)
            return None

    def _save(self, key: str, entry: dict[str, np.ndarray]) -> None:
        path = self._path(key)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".prompt-", suffix=".npz", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **entry)
            os.replace(tmp, path)
        except OSError as exc:
            logger.warning("could not persist the prompt cache to %s (%s)", path, exc)

    def get_or_compute(self, ref_wav_path: str | os.PathLike, prompt_text: str, language: str,
                       compute: Callable[[], dict[str, Any]], tag: str = "") -> dict[str, np.ndarray]:
        """The cached entry for this prompt, or `compute()` (a dict of arrays) stored and returned."""
        key = self.key(ref_wav_path, prompt_text, language, tag)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry
        entry = self._load(key)
        if entry is None:
            entry = {name: np.asarray(value) for name, value in compute().items()}
            self._save(key, entry)
        with self._lock:
            self._entries[key] = entry
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return entry
