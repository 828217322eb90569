"""Symbol tables: ids must equal upstream's, since the models' embeddings are indexed by them."""

from __future__ import annotations

import pytest

from dora_primespeech_mlx.errors import PrimeSpeechError
from dora_primespeech_mlx.text.symbols import phones_to_ids, symbol_to_id, symbols


def test_tables_equal_upstream(upstream):
    import text.symbols as up_v1  # upstream's modules (the oracle put its folder on sys.path)
    import text.symbols2 as up_v2

    assert list(symbols("v1")) == up_v1.symbols
    assert list(symbols("v2")) == up_v2.symbols
    assert len(symbols("v1")) == 322 and len(symbols("v2")) == 732
    for later in ("v3", "v4", "v2Pro", "v2ProPlus"):
        assert symbols(later) == symbols("v2")


def test_phones_to_ids_matches_upstream(upstream):
    from text import cleaned_text_to_sequence

    phones = ["_", "!", ",", "AA", "SP", "UNK", "a1", "zh", "vn5", "…", "ZH", "停", "Yyut6", "[", "]"]
    assert phones_to_ids(phones, "v2") == cleaned_text_to_sequence(phones, "v2")
    v1_phones = phones[:11]
    assert phones_to_ids(v1_phones, "v1") == cleaned_text_to_sequence(v1_phones, "v1")


def test_known_ids():
    ids = symbol_to_id("v2")
    assert [ids[s] for s in ("!", ",", "-", ".", "?", "AA", "SP", "SP2", "SP3", "UNK", "_", "a1")] == [
        0, 1, 2, 3, 4, 5, 77, 78, 79, 86, 95, 97]


def test_errors():
    with pytest.raises(PrimeSpeechError, match="not in the v1 symbol table"):
        phones_to_ids(["停"], "v1")
    with pytest.raises(PrimeSpeechError, match="unknown GPT-SoVITS version"):
        symbols("v9")
