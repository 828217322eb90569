"""Japanese text -> GPT-SoVITS phonemes, as upstream's text/japanese.py (v1 and v2) does.

`text_normalize` only collapses repeated punctuation (upstream has no Japanese normaliser);
`g2p(norm_text)` splits the text at every character outside upstream's "Japanese" class, reads each
run with OpenJTalk (phones plus the ESPnet prosody marks `[` `]` `#` `_`) and keeps the marks between
runs (mapped onto `, . ! ?`; a plain space is dropped). There is no word2ph for Japanese.

OpenJTalk comes from `pyopenjtalk-plus` (the `cjk` extra), whose wheel bundles its dictionary; plain
`pyopenjtalk` would download it on first use. Upstream also loads its user dictionary
(`ja_userdic/userdict.csv`, shipped here gzipped): it is compiled once per process into a temporary
folder on the first `g2p` call (about 1 s), which is then removed.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import os
import re
import sys
import tempfile
import threading
from importlib import resources

from ..errors import PrimeSpeechError
from .symbols import PUNCTUATION

log = logging.getLogger(__name__)

# Upstream's "Japanese" characters: ASCII letters and digits (any Unicode digit, as `\d` is),
# 々, kana, CJK ideographs, full-width digits 1-9 and letters, half-width katakana.
_JA_CLASS = r"A-Za-z\d\u3005\u3040-\u30ff\u4e00-\u9fff\uff11-\uff19\uff21-\uff3a\uff41-\uff5a\uff66-\uff9d"
_JA_CHAR_RE = re.compile(f"[{_JA_CLASS}]")
_JA_MARK_RE = re.compile(f"[^{_JA_CLASS}]")
_REPEATED_PUNCT_RE = re.compile("([{0}])([{0}])+".format("".join(re.escape(p) for p in PUNCTUATION)))
# upstream's map (its "..." key never applies: marks come one character at a time)
_MARK_MAP = {"：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": ".", "·": ",", "、": ","}
_P3_RE = re.compile(r"\-(.*?)\+")
_A1_RE = re.compile(r"/A:([0-9\-]+)\+")
_A2_RE = re.compile(r"\+(\d+)\+")
_A3_RE = re.compile(r"\+(\d+)/")
_E3_RE = re.compile(r"!(\d+)_")
_F1_RE = re.compile(r"/F:(\d+)_")

_LOCK = threading.Lock()
_OPENJTALK: list = []


def text_normalize(text: str) -> str:
    """Upstream's Japanese text_normalize: only a run of `!?…,.-` marks is reduced to its first."""
    return _REPEATED_PUNCT_RE.sub(r"\1", text)


@contextlib.contextmanager
def _quiet_c_output():
    """Silence a C library's writes to stdout and stderr (mecab-dict-index prints its progress)."""
    import ctypes

    flush = ctypes.CDLL(None).fflush
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
        yield
    finally:
        flush(None)
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _load_openjtalk():
    """pyopenjtalk with upstream's user dictionary applied (once per process)."""
    with _LOCK:
        if _OPENJTALK:
            return _OPENJTALK[0]
        try:
            # pyopenjtalk-plus prints a notice when onnxruntime (its optional 何 reader) is absent
            with contextlib.redirect_stdout(io.StringIO()) as notice:
                import pyopenjtalk
        except ImportError as exc:
            raise PrimeSpeechError(
                "Japanese text needs pyopenjtalk-plus: pip install 'dora-primespeech-mlx[cjk]'"
            ) from exc
        if notice.getvalue().strip():
            log.debug("pyopenjtalk: %s", notice.getvalue().strip())
        csv_gz = resources.files(__package__).joinpath("data/ja_userdict.csv.gz").read_bytes()
        with tempfile.TemporaryDirectory(prefix="primespeech-ja-") as folder:
            csv_path = os.path.join(folder, "userdict.csv")
            dict_path = os.path.join(folder, "user.dict")
            with open(csv_path, "wb") as f:
                f.write(gzip.decompress(csv_gz))
            with _quiet_c_output():
                pyopenjtalk.mecab_dict_index(csv_path, dict_path)
            # MeCab maps the file when the dictionary is loaded: removing the folder afterwards is safe
            pyopenjtalk.update_global_jtalk_with_user_dict(dict_path)
        _OPENJTALK.append(pyopenjtalk)
        return pyopenjtalk


def warmup() -> None:
    """Load OpenJTalk and the user dictionary ahead of the first `g2p` call."""
    _load_openjtalk()


def _feature(regex: re.Pattern, label: str) -> int:
    match = regex.search(label)
    return -50 if match is None else int(match.group(1))


def prosody_phones(text: str) -> list[str]:
    """OpenJTalk phones with prosody marks, as ESPnet's pyopenjtalk_g2p_prosody (which upstream
    copies): `^` start, `$`/`?` end, `_` pause, `#` accent-phrase border, `[` rise, `]` fall;
    unvoiced vowels (A E I O U) read as voiced."""
    jtalk = _load_openjtalk()
    labels = jtalk.make_label(jtalk.run_frontend(text))
    phones: list[str] = []
    for n, label in enumerate(labels):
        p3 = _P3_RE.search(label).group(1)
        if p3 in "AEIOU":  # a substring test, as upstream's
            p3 = p3.lower()
        if p3 == "sil":
            if n not in (0, len(labels) - 1):
                raise PrimeSpeechError(f"OpenJTalk gave a silence inside {text!r}; please report this text")
            if n == 0:
                phones.append("^")
            else:
                e3 = _feature(_E3_RE, label)
                if e3 == 0:
                    phones.append("$")
                elif e3 == 1:
                    phones.append("?")
            continue
        if p3 == "pau":
            phones.append("_")
            continue
        phones.append(p3)
        a1, a2, a3 = _feature(_A1_RE, label), _feature(_A2_RE, label), _feature(_A3_RE, label)
        f1 = _feature(_F1_RE, label)
        a2_next = _feature(_A2_RE, labels[n + 1])
        if a3 == 1 and a2_next == 1 and p3 in "aeiouAEIOUNcl":
            phones.append("#")
        elif a1 == 0 and a2_next == a2 + 1 and a2 != f1:
            phones.append("]")
        elif a2 == 1 and a2_next == 2:
            phones.append("[")
    return phones


def g2p(norm_text: str) -> list[str]:
    """Phones of normalised Japanese text: OpenJTalk with prosody for each Japanese run, the marks
    between runs mapped onto GPT-SoVITS punctuation (a plain space between runs is dropped)."""
    text = norm_text.replace("％", "パーセント").lower()
    runs = _JA_MARK_RE.split(text)
    marks = _JA_MARK_RE.findall(text)
    phones: list[str] = []
    for i, run in enumerate(runs):
        if _JA_CHAR_RE.match(run):
            phones.extend(_MARK_MAP.get(p, p) for p in prosody_phones(run)[1:-1])
        if i < len(marks) and marks[i] != " ":
            phones.append(_MARK_MAP.get(marks[i], marks[i]))
    return phones
