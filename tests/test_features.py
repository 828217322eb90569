"""Feature preparation against upstream: BERT phone features, the reference clip at 16 kHz, prompt
semantic codes, and the prompt cache.

BERT features: ours vs upstream `text.chinese_bert.get_bert_feature` on the same random-weight
folder, max |diff| <= 1e-4 x max |upstream|. Reference clip: ours vs `librosa.load(path, sr=16000)`
(what upstream's TTS uses), max |diff| <= 1e-4. Prompt codes: ours (MLX HuBERT + MLX SoVITS
`extract_latent`) equal upstream's HuBERT -> `extract_latent` on librosa's waveform.
"""

from __future__ import annotations

import wave

import numpy as np
import pytest
from parity import rel_err

import dora_primespeech_mlx  # noqa: F401  (loads OpenBLAS before mlx)
from dora_primespeech_mlx import loading
from dora_primespeech_mlx.errors import PrimeSpeechError

torch = pytest.importorskip("torch")
mx = pytest.importorskip("mlx.core")

from dora_primespeech_mlx import features  # noqa: E402
from dora_primespeech_mlx.models import roberta  # noqa: E402
from primespeech_devtools.oracle import encoders as oracle  # noqa: E402

REL_TOL = 1e-4
WAVE_TOL = 1e-4
TINY_BERT = {"hidden_size": 64, "num_hidden_layers": 5, "num_attention_heads": 4, "intermediate_size": 128}

# Texts as the Chinese frontend hands them over: one BERT token per character (punctuation of both
# widths, single digits and single Latin letters are one token each).
ONE_TOKEN_PER_CHAR = [
    "你好，世界！今天天气很好。",
    "A股涨了3%，B站…好吗?",
    "他说：“明天见。”然后就走了。",
    "第1名和第2名只差0.5分！",
    "春眠不觉晓，处处闻啼鸟。",
]


pytestmark = pytest.mark.usefixtures("torch_single_thread")


def word2ph_for(text: str, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(rng.integers(1, 4)) if "\u4e00" <= ch <= "\u9fff" else 1 for ch in text]


def write_wav(path, audio: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM WAV; `audio` is [samples] or [samples, channels] in [-1, 1]."""
    audio = audio if audio.ndim == 2 else audio[:, None]
    pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(audio.shape[1])
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())


def voice_like(seconds: float, sample_rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    phase = 2 * np.pi * np.cumsum(120 + 40 * np.sin(2 * np.pi * 0.5 * t + seed)) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.4 + 0.6 * np.sin(2 * np.pi * 2.3 * t) ** 2)
    out = [0.2 * voiced * (1 - 0.3 * c) + 0.01 * rng.standard_normal(t.shape) for c in range(channels)]
    return np.stack(out, axis=1) if channels > 1 else out[0]


@pytest.fixture(scope="session")
def bert(upstream):
    """The full-size random-weight BERT (shared with test_roberta through the oracle's cache)."""
    folder = oracle.model_folder("roberta", seed=0)
    return folder, loading.load_model("roberta", folder), roberta.load_tokenizer(folder)


@pytest.fixture(scope="session")
def tiny_bert(upstream):
    folder = oracle.model_folder("roberta", seed=1, overrides=TINY_BERT)
    return folder, loading.load_model("roberta", folder), roberta.load_tokenizer(folder)


@pytest.mark.parametrize("size", ["full", "tiny"])
def test_bert_features_match_get_bert_feature(bert, tiny_bert, size):
    folder, model, tokenizer = bert if size == "full" else tiny_bert
    texts = ONE_TOKEN_PER_CHAR[:3] if size == "full" else ONE_TOKEN_PER_CHAR
    for i, text in enumerate(texts):
        assert len(tokenizer.encode(text).ids) == len(text) + 2
        word2ph = word2ph_for(text, i)
        ref = oracle.bert_feature_reference(folder, text, word2ph)
        ours = features.bert_features(model, tokenizer, text, word2ph)
        assert ours.shape == ref.shape == (model.args.hidden_size, sum(word2ph)) and ours.dtype == np.float32
        assert rel_err(ours, ref) <= REL_TOL
        # Phones of one character share its vector; neighbouring characters differ.
        assert np.array_equal(ours[:, 0], ours[:, word2ph[0] - 1])
        assert not np.allclose(ours[:, 0], ours[:, word2ph[0]])


def test_bert_features_align_by_offsets_where_upstream_fails(tiny_bert):
    # Digit runs and Latin words are several characters per token: upstream's per-character
    # indexing then runs past the tokens (IndexError); ours gives each character its token's vector.
    folder, model, tokenizer = tiny_bert
    text = "我用GPU跑了2024个模型"
    word2ph = word2ph_for(text, 9)
    with pytest.raises(IndexError):
        oracle.bert_feature_reference(folder, text, word2ph)
    ours = features.bert_features(model, tokenizer, text, word2ph)
    hidden = oracle.roberta_hidden_states(folder, text)[-3]
    encoding = tokenizer.encode(text)
    rows = np.repeat([encoding.char_to_token(i) for i in range(len(text))], word2ph)
    assert rel_err(ours, hidden[rows].T) <= REL_TOL


def test_segment_bert_features_language_rule(tiny_bert):
    _, model, tokenizer = tiny_bert
    text = ONE_TOKEN_PER_CHAR[0]
    word2ph = word2ph_for(text, 0)
    zh = features.segment_bert_features("zh", text, word2ph, sum(word2ph), model, tokenizer)
    all_zh = features.segment_bert_features("all_zh", text, word2ph, sum(word2ph), model, tokenizer)
    assert np.array_equal(zh, all_zh) and np.abs(zh).max() > 0.1
    for lang in ("en", "ja", "all_ja", "ko", "yue", "all_yue"):
        out = features.segment_bert_features(lang, "hello", None, 7)  # no model needed
        assert out.shape == (1024, 7) and out.dtype == np.float32 and not out.any()
    with pytest.raises(PrimeSpeechError, match="roberta"):
        features.segment_bert_features("zh", text, word2ph, sum(word2ph))
    with pytest.raises(PrimeSpeechError, match="inconsistent"):
        features.segment_bert_features("zh", text, word2ph, sum(word2ph) + 1, model, tokenizer)
    with pytest.raises(PrimeSpeechError, match="word2ph"):
        features.bert_features(model, tokenizer, text, word2ph[:-1])
    assert features.bert_features(model, tokenizer, "", []).shape == (1024, 0)


@pytest.mark.parametrize("sample_rate", [16000, 22050, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_reference_clip_matches_librosa(tmp_path, sample_rate, channels):
    librosa = pytest.importorskip("librosa")
    path = tmp_path / f"ref_{sample_rate}_{channels}.wav"
    write_wav(path, voice_like(3.7, sample_rate, channels, seed=sample_rate % 7), sample_rate)
    ours = features.load_reference_16k(path)
    ref, sr = librosa.load(str(path), sr=16000)
    assert sr == 16000 and ours.dtype == np.float32
    assert ours.shape == ref.shape
    assert np.max(np.abs(ours - ref)) <= WAVE_TOL


def test_reference_window_is_3_to_10_seconds(tmp_path):
    for seconds, ok in ((2.99, False), (3.0, True), (10.0, True), (10.01, False)):
        path = tmp_path / f"clip_{seconds}.wav"
        write_wav(path, voice_like(seconds, 44100), 44100)
        if ok:
            assert features.load_reference_16k(path).shape[0] == round(seconds * 16000)
        else:
            with pytest.raises(PrimeSpeechError, match="between 3 and 10 seconds"):
                features.load_reference_16k(path)
            with pytest.raises(PrimeSpeechError, match="between 3 and 10 seconds"):
                features.prompt_semantic(None, None, path)  # checked before any model runs
    with pytest.raises(PrimeSpeechError, match="not found"):
        features.load_reference_16k(tmp_path / "missing.wav")


def test_prompt_semantic_equals_upstream(upstream, tmp_path):
    librosa = pytest.importorskip("librosa")
    from primespeech_devtools.oracle import sovits as sovits_oracle

    hubert_dir = oracle.model_folder("hubert", seed=0)
    net = sovits_oracle.shared_upstream("v2", seed=0, small=True)
    our_sovits = loading.load_model("sovits", sovits_oracle.save_official(net, tmp_path / "voice.pth"))
    our_hubert = loading.load_model("hubert", hubert_dir)
    for i, (sample_rate, channels, seconds) in enumerate(((44100, 2, 3.4), (16000, 1, 4.1))):
        path = tmp_path / f"ref{i}.wav"
        write_wav(path, voice_like(seconds, sample_rate, channels, seed=i), sample_rate)
        ours = features.prompt_semantic(our_hubert, our_sovits, path)

        wav16k, _ = librosa.load(str(path), sr=16000)
        padded = np.concatenate([wav16k, np.zeros(9600, np.float32)])
        ssl = oracle.hubert_reference(hubert_dir, padded).T  # [768, T50]
        ref = sovits_oracle.upstream_extract_latent(net, ssl)
        assert ours.dtype == np.int64 and ours.shape == ref.shape == (ssl.shape[1] // 2,)
        assert np.array_equal(ours, ref)
        assert len(set(ref.tolist())) > 5  # informative: many different codes


def test_prompt_cache(tmp_path):
    clip = tmp_path / "ref.wav"
    write_wav(clip, voice_like(3.2, 16000), 16000)
    calls = []

    def compute():
        calls.append(1)
        return {"codes": np.arange(5), "bert": np.ones((1024, 3), np.float32), "norm_text": np.array("你好。")}

    cache = features.PromptCache(persist_dir=tmp_path / "mlx")
    a = cache.get_or_compute(clip, "你好", "zh", compute, tag="voice-a")
    b = cache.get_or_compute(clip, "你好", "zh", compute, tag="voice-a")
    assert len(calls) == 1 and a is b
    assert np.array_equal(a["codes"], np.arange(5)) and str(a["norm_text"]) == "你好。"
    assert len(list((tmp_path / "mlx").glob("prompt-*.npz"))) == 1

    fresh = features.PromptCache(persist_dir=tmp_path / "mlx")  # a new process: read from disk
    c = fresh.get_or_compute(clip, "你好", "zh", compute, tag="voice-a")
    assert len(calls) == 1 and np.array_equal(c["bert"], a["bert"])

    for args in ((clip, "你好！", "zh", "voice-a"), (clip, "你好", "all_zh", "voice-a"),
                 (clip, "你好", "zh", "voice-b")):
        cache.get_or_compute(*args[:3], compute, tag=args[3])
    assert len(calls) == 4

    # Same path, new content: a new key (the cache follows the file's bytes, not its name).
    key = cache.key(clip, "你好", "zh", "voice-a")
    write_wav(clip, voice_like(3.2, 16000, seed=5), 16000)
    assert cache.key(clip, "你好", "zh", "voice-a") != key
    copy = tmp_path / "copy.wav"
    copy.write_bytes(clip.read_bytes())
    assert cache.key(copy, "你好", "zh", "voice-a") == cache.key(clip, "你好", "zh", "voice-a")

    (tmp_path / "mlx" / f"prompt-{cache.key(copy, 'x', 'zh')}.npz").write_bytes(b"corrupt")
    assert cache.get_or_compute(copy, "x", "zh", compute)["codes"].shape == (5,)  # recomputed
    memory_only = features.PromptCache(max_entries=1)
    memory_only.get_or_compute(clip, "1", "zh", compute)
    memory_only.get_or_compute(clip, "2", "zh", compute)
    memory_only.get_or_compute(clip, "1", "zh", compute)
    assert len(calls) == 8


def test_batched_bert_features_match_upstream_per_text(tiny_bert):
    """Texts of different lengths in one padded RoBERTa call: each equals upstream's get_bert_feature on
    its own (REL_TOL); empty texts and other languages keep their places in the batch."""
    folder, model, tokenizer = tiny_bert
    texts = list(ONE_TOKEN_PER_CHAR[:3])
    word2phs = [word2ph_for(text, i) for i, text in enumerate(texts)]
    assert len({len(t) for t in texts}) > 1, "the batch needs padding to test the mask"
    batched = features.bert_features_batch(model, tokenizer, [*zip(texts, word2phs, strict=True), ("", [])])
    assert batched[-1].shape == (1024, 0)
    for text, word2ph, ours in zip(texts, word2phs, batched[:3], strict=True):
        assert rel_err(ours, oracle.bert_feature_reference(folder, text, word2ph)) <= REL_TOL
    pieces = [("zh", texts[0], word2phs[0], sum(word2phs[0])), ("en", "hi", None, 3),
              ("zh", texts[1], word2phs[1], sum(word2phs[1]))]
    out = features.segment_bert_features_batch(pieces, model, tokenizer, max_batch=1)
    assert rel_err(out[0], batched[0]) <= REL_TOL  # one text per call (max_batch=1) or padded: the same
    assert out[1].shape == (1024, 3) and not out[1].any() and rel_err(out[2], batched[1]) <= REL_TOL
