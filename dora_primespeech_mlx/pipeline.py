"""Text -> speakable segments with phones and BERT features (upstream `TextPreprocessor` + `get_bert_inf`).

`TextPipeline.prepare` cuts a request into segments and phonemises each one up front (cheap), so
that every error that depends on the text alone is raised before a model runs: text in a script
no frontend reads is dropped and reported, segments too long for the models are cut between words,
and nothing left to speak is known. `bert` computes a segment's features on demand (RoBERTa for
Chinese pieces, zeros for the others), so streaming does not wait for the features of later segments.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import PrimeSpeechError

logger = logging.getLogger(__name__)

BERT_DIM = 1024
VERSION = "v2"
# RoBERTa's 512 positions less [CLS] and [SEP]. A Chinese piece's normalised text holds only ideographs
# and `, . ! ? … -`, one token each, so its length is its token count.
BERT_MAX_CHARS = 510
# T2S input (prompt phones aside) that `prepare` still cuts: ~40 s of Chinese (2 phones a syllable,
# ~0.22 s each) or ~30 s of English, inside the 60 s T2S generates at most. Segments reach it only
# where numbers or symbols spell out long (`text.fit_segment` already cut by characters).
MAX_SEGMENT_PHONES = 360


@dataclass
class Segment:
    """One segment of a request: its text, phone ids and the per-language pieces they came from."""

    text: str
    phones: list[int]
    pieces: list  # text.PhonePiece

    @property
    def norm_text(self) -> str:
        return "".join(p.norm_text for p in self.pieces)


@dataclass
class Prepared:
    """A request's speakable segments, and the pieces of its text dropped as unspeakable (in order)."""

    segments: list[Segment]
    dropped: tuple[str, ...] = ()

    @property
    def has_chinese(self) -> bool:
        """Whether a segment needs RoBERTa features."""
        return any(p.lang == "zh" for segment in self.segments for p in segment.pieces)


def _parts(text: str, lang: str, max_length: int) -> list[str]:
    """`text.fit_segment`'s pieces that have something to speak (a piece of marks alone is left out)."""
    from .text import drop_unspeakable, fit_segment

    pieces = fit_segment(text, lang, max_length)
    return [p for p in pieces if len(pieces) == 1 or drop_unspeakable(p, lang)[0]]


class TextPipeline:
    """The language-aware half of the engine (the models are language-blind)."""

    def __init__(self, g2pw_dir: str | os.PathLike | None = None, version: str = VERSION):
        from .text.cut import SPLITS

        self.version = version
        self.split_marks = frozenset(SPLITS)
        self._g2pw_dir = Path(g2pw_dir) if g2pw_dir else None
        self._g2pw = None
        self._g2pw_tried = False

    def g2pw(self):
        """The g2pW polyphone model when its folder and onnxruntime are present, else None (pypinyin)."""
        if not self._g2pw_tried:
            self._g2pw_tried = True
            folder = self._g2pw_dir
            if folder is not None and (folder / "g2pW.onnx").is_file():
                try:
                    from .text import load_g2pw

                    self._g2pw = load_g2pw(folder.parent)
                    logger.info("Chinese polyphones: g2pW from %s", folder)
                except (ImportError, AttributeError, PrimeSpeechError) as exc:
                    logger.warning("g2pW model at %s not usable (%s): Chinese polyphones use pypinyin", folder, exc)
            else:
                logger.info("Chinese polyphones: pypinyin (no g2pW model under %s)", folder)
        return self._g2pw

    def phonemize(self, text: str, lang: str) -> Segment:
        """Phones of one segment, split by language, with upstream's retry for fewer than 6 phones."""
        from .text import segment_phones

        pieces = segment_phones(text, lang, self.version, g2pw=self.g2pw())
        phones = [i for piece in pieces for i in piece.ids]
        return Segment(text=text, phones=phones, pieces=list(pieces))

    def prepare(self, text: str, lang: str, method: str = "cut5") -> Prepared:
        """The request's segments (upstream's cutting rules), each phonemised and checked against the
        models' limits, and what was dropped.

        Runs of a script no frontend reads are cut out and reported (`text.drop_unspeakable`); a segment
        with nothing speakable left, or that yields no phones or no normalised text, is skipped (upstream
        would synthesise its punctuation); a segment too long for BERT or T2S is cut between words.
        Raises PrimeSpeechError for text that cannot be made to fit."""
        from .text import check_mode, drop_unspeakable, prepare_segments
        from .text.preprocess import MAX_PIECE_LENGTH

        check_mode(lang)
        segments, dropped = [], []
        for piece in prepare_segments(text, lang, method):
            kept, gone = drop_unspeakable(piece, lang)
            dropped.extend(gone)
            if not kept:
                logger.debug("segment %r has nothing speakable: skipped", piece)
                continue
            for part in _parts(kept, lang, MAX_PIECE_LENGTH):
                for segment in self._fitted(part, lang):
                    if segment.phones and segment.norm_text:
                        segments.append(segment)
                    else:
                        logger.debug("segment %r yields no phonemes: skipped", segment.text)
        return Prepared(segments, tuple(dropped))

    def _fitted(self, text: str, lang: str) -> list[Segment]:
        """`text` phonemised, cut in two (recursively) while it exceeds BERT_MAX_CHARS or MAX_SEGMENT_PHONES."""
        from .text import piece_length

        segment = self.phonemize(text, lang)
        problem = self._too_long(segment)
        if not problem:
            return [segment]
        halves = _parts(text, lang, max(1, piece_length(text) // 2))
        if len(halves) < 2:  # each of two or more halves holds less speakable text than the whole: this ends
            raise PrimeSpeechError(f"text too long to synthesise: {problem} in {text[:80]!r}; "
                                   "add punctuation or spaces to it")
        return [s for half in halves for s in self._fitted(half, lang)]

    @staticmethod
    def _too_long(segment: Segment) -> str:
        """Why the segment does not fit the models ("" if it does). Raises where BERT would find its Chinese
        pieces inconsistent."""
        for piece in segment.pieces:
            if piece.lang != "zh":
                continue
            word2ph = piece.word2ph or []
            if len(word2ph) != len(piece.norm_text) or sum(word2ph) != len(piece.ids):
                raise PrimeSpeechError(f"Chinese g2p is inconsistent for {piece.text!r}; please report this text")
            if len(piece.norm_text) > BERT_MAX_CHARS:
                return f"{len(piece.norm_text) + 2} BERT tokens, at most {BERT_MAX_CHARS + 2}"
        if len(segment.phones) > MAX_SEGMENT_PHONES:
            return f"{len(segment.phones)} phones, at most {MAX_SEGMENT_PHONES}"
        return ""

    def bert(self, segment: Segment, encoders) -> np.ndarray:
        """BERT features [1024, len(segment.phones)]: RoBERTa's for Chinese pieces, zeros for the rest.

        `encoders` is the encoder backend (`encoders.select_encoder_backend`); it is touched only when
        the segment has Chinese, so English-only use never loads RoBERTa."""
        return self.bert_many([segment], encoders)[0]

    def bert_many(self, segments: list[Segment], encoders) -> list[np.ndarray]:
        """`bert` of several segments, their Chinese pieces batched through RoBERTa."""
        from .features import segment_bert_features_batch

        pieces = [(p.lang, p.norm_text, p.word2ph, len(p.ids)) for segment in segments for p in segment.pieces]
        chinese = any(lang.replace("all_", "") == "zh" for lang, *_ in pieces)
        model, tokenizer = (encoders.roberta_model(), encoders.roberta_tokenizer()) if chinese else (None, None)
        features = iter(segment_bert_features_batch(pieces, model, tokenizer))
        out = []
        for segment in segments:
            parts = [next(features) for _ in segment.pieces]
            out.append(np.concatenate(parts, axis=1) if parts else np.zeros((BERT_DIM, 0), dtype=np.float32))
        return out
