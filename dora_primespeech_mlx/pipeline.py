"""Text -> speakable segments with phones and BERT features (upstream `TextPreprocessor` + `get_bert_inf`).

`TextPipeline.prepare` cuts a request into segments and phonemises each one up front (cheap), so
that text without any phoneme is known before a model runs; `bert` computes a segment's features
on demand (RoBERTa for Chinese pieces, zeros for the others), so streaming does not wait for the
features of later segments.
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


@dataclass
class Segment:
    """One segment of a request: its text, phone ids and the per-language pieces they came from."""

    text: str
    phones: list[int]
    pieces: list  # text.PhonePiece

    @property
    def norm_text(self) -> str:
        return "".join(p.norm_text for p in self.pieces)


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

    def prepare(self, text: str, lang: str, method: str = "cut5") -> list[Segment]:
        """The request's segments (upstream's cutting rules), each phonemised; segments that yield no
        phones or no normalised text are dropped, as upstream does."""
        from .text import check_mode, prepare_segments

        check_mode(lang)
        segments = []
        for piece in prepare_segments(text, lang, method):
            segment = self.phonemize(piece, lang)
            if segment.phones and segment.norm_text:
                segments.append(segment)
            else:
                logger.debug("segment %r yields no phonemes: skipped", piece)
        return segments

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
