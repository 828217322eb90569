"""The synthesis engine: upstream GPT-SoVITS's `TTS.run` flow on the MLX models.

For each request: the voice's prompt (reference codes, spectrogram, prompt phones and BERT features;
cached) -> sentence cutting and segment preparation -> per segment: phones + BERT features (RoBERTa
for Chinese, zeros otherwise), T2S with the prompt (prompt + target phones, prompt codes), SoVITS
decode of the generated codes with the TARGET phones, the reference spectrogram and the speed factor
-> per-fragment peak normalisation (only when the peak exceeds 1), a short fade at both ends of each
fragment and `fragment_interval` seconds of silence after it.

T2S runs segments in batches (`models/generate.py`): each row keeps its own seed and gets the codes it
would get alone, so batching changes speed, not output. `synthesize` batches up to the cap at once;
`stream` grows its batches 1, 2, 4, ... so that the first segment's audio is not held back by the others.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import loading
from .chunking import chunk_codes, mute_similarity
from .errors import PrimeSpeechError
from .loading import converted_dir_for, source_fingerprint
from .runtime import adapt_blas_threads
from .voices import Voice, VoiceRegistry

logger = logging.getLogger(__name__)

SAMPLE_RATE = 32000
MAX_SAMPLE = 32767 / 32768  # the largest value that survives upstream's int16(x * 32768)
CANCEL_POLL_CODES = 25  # T2S steps (1 s of audio) between cancellation polls inside a batch
MAX_BATCH_ROWS = 16  # segments decoded together at most (bounds the key/value cache: ~0.1 MB per row and position)
# SoVITS on a GPU decodes a T2S batch's segments together: a pass costs far less than its rows one by
# one (H100, 12 segments of ~2 s: 0.09-0.15 s in passes of 250-500 frames against 0.21-0.39 s one by
# one). A pass holds at most this many 50 Hz frames (rows x the longest); the vocoder's activations grow
# with them (H100: ~0.4 GB above the loaded models for 250 frames, 1.0-1.35 GB for 500), so a longer
# segment is decoded alone, its vocoder window by window within the same bound. On the CPU the cost
# grows with the padded length: one segment per pass, and the native vocoder, which works in place
# (resident memory +10 MB a second of audio from 5 to 20 s, 2-core x86), needs no windows.
SOVITS_BATCH_FRAMES = 250


@dataclass
class SynthesisOptions:
    """Per-request settings (defaults are the original node's)."""

    text_lang: str = "auto"
    prompt_lang: str | None = None  # None: the voice's language
    prompt_text: str | None = None  # None: the voice's transcript
    speed: float | None = None  # None: the voice's default speed
    top_k: int = 5
    top_p: float = 1.0
    temperature: float = 1.0
    repetition_penalty: float = 1.35
    seed: int = 233333  # -1: random
    text_split_method: str = "cut5"
    batch_size: int = 100  # segments generated together at most (also capped by MAX_BATCH_ROWS)
    split_bucket: bool = True  # accepted for compatibility (bucketing only reorders batches)
    fragment_interval: float = 0.07
    noise_scale: float = 0.5
    stream_chunk: int = 16  # `stream`: the first segment goes out in chunks of >= this many codes (0: whole)
    fixed_length_chunk: bool = False  # all chunks cut every `stream_chunk` codes (else the first, then in pauses)
    overlap_length: int = 2  # codes re-decoded in front of each chunk (upstream's streaming overlap)
    edge_fade: float = 0.005  # seconds of raised-cosine fade at both ends of each fragment; 0 = upstream


@dataclass
class Result:
    """Audio for a whole request (`synthesize`) or one piece of it (`stream`)."""

    audio: np.ndarray  # float32 mono in [-1, 1), 32 kHz
    sample_rate: int
    segment_index: int
    is_last: bool
    text: str
    timings: dict[str, float] = field(default_factory=dict)
    real_time_factor: float = 0.0
    # the pieces of the request's text dropped as unspeakable (a script no frontend reads), in order;
    # set on the first Result of a request only
    dropped: tuple[str, ...] = ()


class EmptyTextError(PrimeSpeechError):
    """The text yields no phonemes (empty, whitespace or punctuation only, or only text in scripts no
    frontend reads: those pieces are in `dropped`)."""

    def __init__(self, message: str, dropped: tuple[str, ...] = ()):
        super().__init__(message)
        self.dropped = dropped


class Cancelled(PrimeSpeechError):
    """`should_cancel` returned True: the request was abandoned (polled before each segment and every
    CANCEL_POLL_CODES generated codes)."""


@dataclass
class _VoiceModels:
    t2s: Any
    sovits: Any
    early_stop_num: int
    mute_similarity: np.ndarray | None = None  # streaming chunk splits; computed on first use

    def similarity(self) -> np.ndarray:
        """Each semantic code's similarity to the mute code (`chunking.mute_similarity`), cached."""
        if self.mute_similarity is None:
            self.mute_similarity = mute_similarity(np.array(self.t2s.ar_audio_embedding.word_embeddings.weight))
        return self.mute_similarity


@dataclass
class _Prompt:
    phones: list[int]
    bert: np.ndarray  # [1024, len(phones)]
    codes: np.ndarray | None  # prompt semantic codes; None without a prompt text
    refer_spec: np.ndarray | list[np.ndarray]  # [1025, frames]; a list with auxiliary references
    sv_emb: np.ndarray | list[np.ndarray] | None = None  # the same for the speaker embeddings (v2Pro/v2ProPlus)

    def t2s_row(self, segment, bert: np.ndarray) -> tuple[list[int], np.ndarray]:
        """T2S input for a segment: prompt + segment phones, and their BERT features side by side."""
        return self.phones + segment.phones, np.concatenate([self.bert, bert], axis=1)


class Synthesizer:
    """Text -> speech for any registered or ad-hoc voice; models loaded once and kept in LRU caches.

    The encoders (HuBERT, RoBERTa + tokenizer) are shared by every voice and loaded on first need;
    up to `max_loaded_voices` T2S/SoVITS pairs stay loaded. Official checkpoints are converted to MLX
    once, beside the originals. One request runs at a time (calls are serialised by a lock).
    """

    def __init__(self, model_root: str | os.PathLike, *, registry: VoiceRegistry | None = None,
                 device: str = "auto", dtype: str = "auto", max_loaded_voices: int = 3,
                 encoder_backend: str = "auto", max_prompts: int = 16, t2s_bits: int = 16):
        from .encoders import select_encoder_backend
        from .runtime import select_runtime

        self.model_root = Path(model_root).expanduser()
        self.registry = registry or VoiceRegistry(self.model_root)
        self.runtime = select_runtime(device, dtype)
        self.device = self.runtime.device
        self.encoders = select_encoder_backend(encoder_backend, hubert_dir=self.registry.hubert_dir,
                                               roberta_dir=self.registry.roberta_dir, dtype=self.runtime.dtype)
        self.encoder_backend = self.encoders.name
        self.max_loaded_voices = max(1, int(max_loaded_voices))
        self.t2s_bits = int(t2s_bits)  # 8 or 4: T2S weights quantized (models.t2s.quantize) where MLX decodes
        self._voices: OrderedDict[tuple[str, str], _VoiceModels] = OrderedDict()
        self._prompts: OrderedDict[tuple, Any] = OrderedDict()  # prompt pieces, LRU
        self._max_prompts = 3 * max_prompts
        self._pipeline = None
        self._speaker = None  # the speaker-verification model, loaded when a v2Pro/v2ProPlus voice needs it
        self._lock = threading.RLock()

    # -- public API --------------------------------------------------------------------------------
    def load_voice(self, voice: Voice) -> None:
        """Convert (first use only) and load the voice's models, and compute its prompt features."""
        with self._lock:
            models = self._models(voice)
            self._prompt(voice, voice.prompt_text, voice.prompt_lang, models)

    def warmup(self, voice: Voice) -> None:
        """Load the voice and run every stage once on a short text in the voice's language (its text
        frontend loads its dictionaries then: OpenJTalk's take about a second), so that the first
        request is not slower."""
        with self._lock:
            self.load_voice(voice)
            lang = warmup_language(voice.text_lang)
            started = time.perf_counter()
            try:
                self._warm(voice, lang)
            except PrimeSpeechError as exc:
                if lang in ("zh", "en"):
                    raise
                # e.g. the `cjk` extra missing: the voice still speaks Chinese and English
                logger.warning("no %s warm-up for voice %r (%s): warming up with Chinese", lang, voice.name, exc)
                self._warm(voice, "zh")
            logger.info("voice %r warmed up in %.2fs", voice.name, time.perf_counter() - started)

    def _warm(self, voice: Voice, lang: str) -> None:
        options = SynthesisOptions(text_lang=lang, fragment_interval=0.0)
        for _ in self._run(WARMUP_TEXTS[lang], voice, options, None, max_tokens=8):
            pass

    def synthesize(self, text: str, voice: Voice, options: SynthesisOptions | None = None,
                   should_cancel: Callable[[], bool] | None = None) -> Result:
        """The whole text as one Result (raises EmptyTextError, Cancelled or PrimeSpeechError)."""
        started = time.perf_counter()
        with self._lock:
            pieces = list(self._run(text, voice, options or SynthesisOptions(), should_cancel))
        audio = np.concatenate([p.audio for p in pieces]).astype(np.float32, copy=False)
        timings: dict[str, float] = {}
        for piece in pieces:
            for key, value in piece.timings.items():
                if key != "total":
                    timings[key] = timings.get(key, 0.0) + value
        timings["total"] = time.perf_counter() - started
        return Result(audio=audio, sample_rate=SAMPLE_RATE, segment_index=0, is_last=True,
                      text="".join(p.text for p in pieces), timings=timings,
                      real_time_factor=_rtf(timings["total"], audio.shape[0]), dropped=pieces[0].dropped)

    def stream(self, text: str, voice: Voice, options: SynthesisOptions | None = None,
               should_cancel: Callable[[], bool] | None = None) -> Iterator[Result]:
        """One Result per segment, each yielded as soon as its audio is decoded. Every error that depends
        on the text alone (nothing to speak, text that cannot fit the models) is raised before the first."""
        options = options or SynthesisOptions()
        with self._lock:
            yield from self._run(text, voice, options, should_cancel, batches="growing")

    # -- the flow ----------------------------------------------------------------------------------
    def _run(self, text: str, voice: Voice, options: SynthesisOptions,
             should_cancel: Callable[[], bool] | None, max_tokens: int = 1500,
             batches: str = "whole") -> Iterator[Result]:
        """Segments in order, T2S batched: `batches="whole"` generates up to the batch cap at once
        (fastest overall); `"growing"` runs 1, 2, 4, ... segments per batch, so the first audio comes
        after one segment and each later batch is ready before the audio before it has played."""
        from .models.generate import generate

        t_start = time.perf_counter()
        _check_options(options)
        text_lang = options.text_lang or voice.text_lang
        prompt_text = voice.prompt_text if options.prompt_text is None else options.prompt_text
        prompt_lang = options.prompt_lang or voice.prompt_lang
        speed = float(options.speed if options.speed is not None else voice.speed)
        pipeline = self._get_pipeline()
        prepared = pipeline.prepare(text, text_lang, options.text_split_method)
        segments, dropped = prepared.segments, prepared.dropped
        if dropped:
            logger.warning("dropped text that no frontend can speak (text_lang %r): %s", text_lang,
                           ", ".join(repr(piece) for piece in dropped))
        if not segments:
            unspeakable = f" (unspeakable: {', '.join(map(repr, dropped))})" if dropped else ""
            raise EmptyTextError(f"the text has nothing to speak: {text[:80]!r}{unspeakable}", dropped)
        if prepared.has_chinese:  # a missing RoBERTa fails here, not after the first audio went out
            self.encoders.roberta_tokenizer()
            self.encoders.roberta_model()
        models = self._models(voice)
        prompt = self._prompt(voice, prompt_text, prompt_lang, models)
        setup = time.perf_counter() - t_start
        silence = np.zeros(int(SAMPLE_RATE * options.fragment_interval), dtype=np.float32)
        cap = max(1, min(int(options.batch_size), MAX_BATCH_ROWS))

        def poll() -> None:
            if should_cancel is not None and should_cancel():
                raise Cancelled("synthesis cancelled")

        start, size = 0, (1 if batches == "growing" else cap)
        if batches == "growing" and options.stream_chunk > 0:
            poll()
            adapt_blas_threads()
            yield from self._stream_segment(segments[0], len(segments) == 1, models, prompt, options, speed,
                                            silence, poll, max_tokens, setup, dropped)
            start, size = 1, min(2, cap)
        while start < len(segments):
            poll()
            adapt_blas_threads()
            group = range(start, min(start + size, len(segments)))
            t0 = time.perf_counter()
            berts = pipeline.bert_many([segments[i] for i in group], self.encoders)
            rows = [prompt.t2s_row(segments[i], bert) for i, bert in zip(group, berts, strict=True)]
            t1 = time.perf_counter()
            seeds = [_segment_seed(options, i) for i in group]
            generated = generate(
                models.t2s, rows, prompt.codes, seeds=seeds, top_k=options.top_k, top_p=options.top_p,
                temperature=options.temperature, repetition_penalty=options.repetition_penalty,
                early_stop_num=models.early_stop_num, max_tokens=max_tokens, poll=poll,
                poll_every=CANCEL_POLL_CODES)
            t2 = time.perf_counter()
            share = {"frontend": (t1 - t0) / len(group), "t2s": (t2 - t1) / len(group)}
            kept = [np.asarray(kept_codes(codes, models.early_stop_num, max_tokens), dtype=np.int64)
                    for codes in generated]
            for part in self._sovits_passes(group, kept):
                if part.start > group.start:
                    poll()
                t3 = time.perf_counter()
                audios = models.sovits.decode_batch(
                    [(kept[i - group.start], segments[i].phones) for i in part], prompt.refer_spec,
                    sv_emb=prompt.sv_emb, noise_scale=options.noise_scale, speed=speed,
                    seeds=[seeds[i - group.start] for i in part],
                    vocoder_frames=None if self.device == "cpu" else SOVITS_BATCH_FRAMES)
                sovits_seconds = (time.perf_counter() - t3) / len(part)
                for index, audio in zip(part, audios, strict=True):
                    segment = segments[index]
                    audio = finish_fragment(audio, silence, fade=int(options.edge_fade * SAMPLE_RATE))
                    timings = {"frontend": share["frontend"] + (setup if index == 0 else 0.0), "t2s": share["t2s"],
                               "sovits": sovits_seconds}
                    timings["total"] = sum(timings.values())
                    logger.debug("segment %d/%d %r: %d codes, %.2fs audio, %s", index + 1, len(segments),
                                 segment.text, len(kept[index - group.start]), audio.shape[0] / SAMPLE_RATE, timings)
                    yield Result(audio=audio, sample_rate=SAMPLE_RATE, segment_index=index,
                                 is_last=index == len(segments) - 1, text=segment.text, timings=timings,
                                 real_time_factor=_rtf(timings["total"], audio.shape[0]),
                                 dropped=dropped if index == 0 else ())
            start = group.stop
            if batches == "growing":
                size = min(2 * size, cap)

    def _sovits_passes(self, group: range, codes: list[np.ndarray]) -> Iterator[range]:
        """The SoVITS passes of a T2S batch's segments (`group`, their codes in order): consecutive
        segments, together on a GPU up to SOVITS_BATCH_FRAMES padded frames, one by one on the CPU."""
        first = group.start
        while first < group.stop:
            last, longest = first + 1, 2 * codes[first - group.start].size
            while self.device != "cpu" and last < group.stop:
                longest = max(longest, 2 * codes[last - group.start].size)
                if longest * (last + 1 - first) > SOVITS_BATCH_FRAMES:
                    break
                last += 1
            yield range(first, last)
            first = last

    def _stream_segment(self, segment, is_last: bool, models: _VoiceModels, prompt: _Prompt,
                        options: SynthesisOptions, speed: float, silence: np.ndarray, poll: Callable[[], None],
                        max_tokens: int, setup: float, dropped: tuple[str, ...] = ()) -> Iterator[Result]:
        """Upstream's streaming mode for one segment: its codes are cut into chunks while T2S runs
        (`chunking.py`), each chunk decoded with a little overlap and joined with SOLA (`sola.py`), so
        audio starts after `stream_chunk` codes instead of the whole segment. Every generated code is
        spoken, as in upstream's streaming mode."""
        from .models import generate as t2s_generate
        from .sola import StreamDecoder

        t0 = time.perf_counter()
        bert = self._get_pipeline().bert_many([segment], self.encoders)[0]
        seed = _segment_seed(options, 0)
        steps = t2s_generate.generate_step(
            models.t2s, [prompt.t2s_row(segment, bert)], prompt.codes, seeds=[seed], top_k=options.top_k,
            top_p=options.top_p, temperature=options.temperature, repetition_penalty=options.repetition_penalty,
            early_stop_num=models.early_stop_num, max_tokens=max_tokens)
        codes = (row_codes[0] for _, row_codes in steps)  # one row: its code of every step

        def polled(codes):
            for count, code in enumerate(codes, 1):
                yield code
                if count % CANCEL_POLL_CODES == 0:
                    poll()

        decoder = StreamDecoder(models.sovits, segment.phones, prompt.refer_spec, sv_emb=prompt.sv_emb, speed=speed,
                                noise_scale=options.noise_scale, overlap_length=options.overlap_length, seed=seed)
        similarity = None if options.fixed_length_chunk else models.similarity()
        fade = int(options.edge_fade * SAMPLE_RATE)
        first, t1 = True, time.perf_counter()
        last_step = t2s_generate.last_step(max_tokens, models.early_stop_num)
        for chunk, final in chunk_codes(polled(codes), last_step=last_step, chunk_length=options.stream_chunk,
                                        similarity=similarity, fixed_first=True):
            t2 = time.perf_counter()
            audio = decoder.push(chunk, final)
            t3 = time.perf_counter()
            if audio.size == 0 and not final:
                continue
            audio = finish_piece(audio, fade_in=fade if first else 0, fade_out=fade if final else 0,
                                  silence=silence if final else None)
            timings = {"frontend": (t1 - t0 + setup) if first else 0.0, "t2s": t2 - t1, "sovits": t3 - t2}
            timings["total"] = sum(timings.values())
            yield Result(audio=audio, sample_rate=SAMPLE_RATE, segment_index=0, is_last=final and is_last,
                         text=segment.text if first else "", timings=timings,
                         real_time_factor=_rtf(timings["total"], audio.shape[0]), dropped=dropped if first else ())
            first, t1 = False, time.perf_counter()

    # -- models and caches -------------------------------------------------------------------------
    def _models(self, voice: Voice) -> _VoiceModels:
        key = (str(voice.gpt_path), str(voice.sovits_path))
        if key in self._voices:
            self._voices.move_to_end(key)
            return self._voices[key]

        for path, what in ((voice.gpt_path, "GPT weights"), (voice.sovits_path, "SoVITS weights")):
            if not Path(path).exists():
                known = self.registry.knows(voice.name) and self.registry.get(voice.name) == voice
                # a registry voice: what is missing and what to do (an override to fix, or the download)
                raise PrimeSpeechError(self.registry.missing_message(voice.name) if known else
                                       f"voice {voice.name!r}: {what} not found at {path}")
        started = time.perf_counter()
        logger.info("loading voice %r (official checkpoints are converted to MLX on first use)", voice.name)
        t2s_model = loading.load_model("t2s", voice.gpt_path)
        if self.t2s_bits < 16:
            from .models import t2s

            if t2s_model.compiled_decoding:
                t2s.quantize(t2s_model, self.t2s_bits)
            else:
                logger.warning("T2S bits %d ignored: the CPU accelerator decodes from its own packed weights",
                               self.t2s_bits)
        sovits_model = loading.load_model("sovits", voice.sovits_path)
        models = _VoiceModels(t2s_model, sovits_model, _early_stop_num(t2s_model))
        logger.info("voice %r loaded in %.2fs (SoVITS %s)", voice.name, time.perf_counter() - started,
                    sovits_model.version)
        self._voices[key] = models
        while len(self._voices) > self.max_loaded_voices:
            evicted, _ = self._voices.popitem(last=False)
            logger.info("unloading voice models %s (max_loaded_voices=%d)", evicted[0], self.max_loaded_voices)
        return models

    def _prompt(self, voice: Voice, prompt_text: str, prompt_lang: str, models: _VoiceModels) -> _Prompt:
        """The prompt: transcript phones + BERT (cached per text), and the reference clip's semantic codes
        and spectrogram (cached per clip content and SoVITS model) and, for v2Pro/v2ProPlus, its speaker
        embedding (cached per clip). A voice's auxiliary clips add their spectrograms (and embeddings),
        whose styles SoVITS averages, as upstream's aux_ref_audio_paths; the prompt codes come from the
        reference clip alone."""
        keys = []
        for ref in voice.references:
            try:
                stat = Path(ref).stat()
            except FileNotFoundError as exc:
                raise PrimeSpeechError(f"voice {voice.name!r}: reference audio not found at {ref}") from exc
            keys.append((str(ref), stat.st_size, stat.st_mtime_ns))
        ref = Path(voice.ref_audio)
        text_key = (prompt_text, prompt_lang)
        phones, bert = self._cached(text_key, lambda: self._prompt_features(prompt_text, prompt_lang))
        specs = [self._cached(("spec", *key), lambda r=r: self._spectrogram(Path(r)))
                 for r, key in zip(voice.references, keys, strict=True)]
        codes = self._cached((*keys[0], str(voice.sovits_path)),
                             lambda: self._semantic(ref, voice, models)) if phones else None
        embeddings = None
        if models.sovits.args.has_speaker:
            embeddings = [self._cached(("sv", *key), lambda r=r: self._speaker_embedding(Path(r), voice, models))
                          for r, key in zip(voice.references, keys, strict=True)]
        if len(specs) == 1:  # one reference: plain arrays, as the models take them
            return _Prompt(phones=phones, bert=bert, codes=codes, refer_spec=specs[0],
                           sv_emb=None if embeddings is None else embeddings[0])
        return _Prompt(phones=phones, bert=bert, codes=codes, refer_spec=specs, sv_emb=embeddings)

    def _cached(self, key: tuple, compute: Callable[[], Any]) -> Any:
        if key in self._prompts:
            self._prompts.move_to_end(key)
            return self._prompts[key]
        value = compute()
        self._prompts[key] = value
        while len(self._prompts) > self._max_prompts:
            self._prompts.popitem(last=False)
        return value

    def _prompt_features(self, prompt_text: str, prompt_lang: str) -> tuple[list[int], np.ndarray]:
        """Phones and BERT features of the transcript, with a final stop added as upstream does; none
        for an empty transcript (upstream then runs T2S without prompt codes)."""
        pipeline = self._get_pipeline()
        text = prompt_text.strip("\n")
        if not text:
            return [], np.zeros((1024, 0), dtype=np.float32)
        if text[-1] not in pipeline.split_marks:
            text += "." if prompt_lang == "en" else "。"
        segment = pipeline.phonemize(text, prompt_lang)
        return list(segment.phones), pipeline.bert(segment, self.encoders)

    def _semantic(self, ref: Path, voice: Voice, models: _VoiceModels) -> np.ndarray:
        """The reference clip's semantic codes (HuBERT + the voice's SoVITS `extract_latent`), also kept on
        disk beside the converted SoVITS weights, so that a restarted node need not load HuBERT."""
        from .features import prompt_semantic

        def compute() -> np.ndarray:
            started = time.perf_counter()
            try:
                codes = prompt_semantic(self.encoders.hubert_model(), models.sovits, ref)
            finally:
                # HuBERT runs once per reference clip, whose codes stay cached: not kept loaded (~200 MB)
                self.encoders.release("hubert")
            logger.info("reference %s: %d prompt codes in %.2fs", ref.name, len(codes), time.perf_counter() - started)
            return codes

        # the codes depend on the clip, HuBERT's and SoVITS's weights
        return _kept_on_disk(ref, "codes", voice.sovits_path, (self.registry.hubert_dir, voice.sovits_path), compute)

    def _speaker_embedding(self, ref: Path, voice: Voice, models: _VoiceModels) -> np.ndarray:
        """The reference clip's speaker embedding as upstream prepares it: the 32 kHz reference (peak
        limited, as for the spectrogram) resampled to 16 kHz, then the speaker model's `embed`. Also kept
        on disk beside the converted speaker model, so that a restarted node need not load it."""
        from .audio import SOVITS_SAMPLE_RATE, limit_peak, load_audio, resample
        from .models.speaker import SAMPLE_RATE as SPEAKER_RATE

        path = self.registry.speaker_path
        if not path.is_file():
            raise PrimeSpeechError(
                f"voice {voice.name!r} is GPT-SoVITS {models.sovits.version}: it needs the speaker-verification "
                f"model {path}, which is not there: `primespeech-mlx download --sv` fetches it")

        def compute() -> np.ndarray:
            if self._speaker is None:
                self._speaker = loading.load_model("speaker", path)
            started = time.perf_counter()
            wav = resample(limit_peak(load_audio(ref, SOVITS_SAMPLE_RATE)), SOVITS_SAMPLE_RATE, SPEAKER_RATE)
            embedding = self._speaker.embed(wav)
            logger.info("reference %s: speaker embedding in %.2fs", ref.name, time.perf_counter() - started)
            return embedding

        return _kept_on_disk(ref, "sv_emb", path, (path,), compute)  # depends on the clip and the model

    @staticmethod
    def _spectrogram(ref: Path) -> np.ndarray:
        from .audio import prepare_reference_spectrogram

        return prepare_reference_spectrogram(ref)

    def _get_pipeline(self):
        if self._pipeline is None:
            from .pipeline import TextPipeline

            self._pipeline = TextPipeline(g2pw_dir=self.registry.g2pw_dir)
        return self._pipeline


def _kept_on_disk(ref: Path, name: str, beside: Path, sources: tuple[Path, ...],
                  compute: Callable[[], np.ndarray]) -> np.ndarray:
    """`compute()`, a feature of the reference clip, kept in a `PromptCache` beside the conversion of
    `beside` and keyed by the clip's content and the fingerprints of the model `sources` it depends on;
    computed without the disk when a source cannot be fingerprinted."""
    from .features import PromptCache

    try:
        tag = name + "|" + "|".join(source_fingerprint(p)["hash"] for p in sources)
    except OSError:
        return compute()
    cache = PromptCache(persist_dir=converted_dir_for(beside))
    return cache.get_or_compute(ref, "", "", lambda: {name: compute()}, tag=tag)[name]


WARMUP_TEXTS = {"zh": "你好。", "en": "Hello.", "ja": "こんにちは。", "ko": "안녕하세요.", "yue": "你好。"}


def warmup_language(text_lang: str) -> str:
    """The language a voice warms up in: its text language (`all_X` is X), Chinese for `auto`,
    Cantonese for `auto_yue`."""
    lang = text_lang.removeprefix("all_")
    return {"auto": "zh", "auto_yue": "yue"}.get(lang, lang if lang in WARMUP_TEXTS else "zh")


def finish_fragment(audio: np.ndarray, silence: np.ndarray, fade: int = 0) -> np.ndarray:
    """Upstream's per-fragment post-processing: divide by the peak when it exceeds 1, then append the
    silence; plus (ours) a raised-cosine fade of `fade` samples at both ends, so that the step between
    speech and silence cannot click, and a clip to [-1, 32767/32768]."""
    return finish_piece(audio, fade_in=fade, fade_out=fade, silence=silence)


def finish_piece(audio: np.ndarray, *, fade_in: int = 0, fade_out: int = 0,
                 silence: np.ndarray | None = None) -> np.ndarray:
    """`finish_fragment` with separate fades: a streamed chunk is faded only at its segment's outer ends
    (chunks join by SOLA) and only the segment's last chunk is followed by the silence."""
    audio = np.asarray(audio, dtype=np.float32)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > 1.0:
        audio = audio / np.float32(peak)
    if fade_in or fade_out:
        audio = audio.copy()
    for size, at_start in ((min(fade_in, audio.shape[0] // 2), True), (min(fade_out, audio.shape[0] // 2), False)):
        if size > 0:
            ramp = (0.5 - 0.5 * np.cos(np.pi * (np.arange(size, dtype=np.float32) + 0.5) / size)).astype(np.float32)
            if at_start:
                audio[:size] *= ramp
            else:
                audio[-size:] *= ramp[::-1]
    if silence is not None:
        audio = np.concatenate([audio, silence])
    return np.clip(audio, -1.0, MAX_SAMPLE).astype(np.float32, copy=False)


def _early_stop_num(t2s_model) -> int:
    """50 x the checkpoint's data.max_sec, as upstream's TTS config derives it."""
    return int(t2s_model.args.early_stop_num)


def kept_codes(codes: list[int], early_stop_num: int, max_tokens: int) -> list[int]:
    """The codes upstream's TTS.run decodes: it keeps `y[-idx:]`, which is every generated code when
    EOS stopped the decoder, but drops the first one when the length limit (early_stop_num or the
    step cap) stopped it, since the last step's code is then kept and idx counts steps from 0."""
    limited = (early_stop_num != -1 and len(codes) > early_stop_num) or len(codes) >= max_tokens
    return codes[1:] if limited and len(codes) > 1 else codes


def _segment_seed(options: SynthesisOptions, index: int) -> int | None:
    """Segment `index`'s sampling seed: the request's seed + index (None: random, for seed -1)."""
    return None if options.seed < 0 else (options.seed + index) % (2 ** 32)


def _rtf(seconds: float, samples: int) -> float:
    return seconds / (samples / SAMPLE_RATE) if samples else 0.0


def _check_options(options: SynthesisOptions) -> None:
    if options.speed is not None and not options.speed > 0:
        raise PrimeSpeechError(f"speed must be positive, got {options.speed}")
    if options.fragment_interval < 0:
        raise PrimeSpeechError(f"fragment_interval must be >= 0, got {options.fragment_interval}")
    if options.top_k < 1:
        raise PrimeSpeechError(f"top_k must be >= 1, got {options.top_k}")
