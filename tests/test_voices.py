"""The voice registry: the original's 15 built-in voices, the model-root layout, user voices, ad-hoc voices."""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

import pytest

from dora_primespeech_mlx.errors import PrimeSpeechError
from dora_primespeech_mlx.voices import ModelRoot, VoiceRegistry, builtin_config

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "dora_primespeech_mlx"

# (name, file stem, language, speed) as in mofa-studio's dora-primespeech config.py VOICE_CONFIGS
ORIGINAL = [
    ("Doubao", None, "zh", 1.1), ("Luo Xiang", "luoxiang", "zh", 1.1), ("Yang Mi", "yangmi", "zh", 1.1),
    ("Zhou Jielun", "zhoujielun", "zh", 1.1), ("Ma Yun", "mayun", "zh", 1.1), ("Chen Yifan", "yfc", "zh", 1.1),
    ("Zhao Daniu", "dnz", "zh", 1.1), ("Maple", "maple", "en", 1.0), ("Cove", "cove", "en", 1.0),
    ("BYS", "bys", "zh", 1.1), ("Ellen", "ellen", "en", 1.1), ("Juniper", "juniper", "en", 1.1),
    ("Ma Baoguo", "mabaoguo", "zh", 1.1), ("Shen Yi", "shenyi", "zh", 1.1), ("Trump", "trump", "en", 1.1),
]


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_repo_copy_is_identical_to_packaged_copy():
    packaged = REPO / "dora_primespeech_mlx" / "configs" / "voices.json"
    assert (REPO / "configs" / "voices.json").read_bytes() == packaged.read_bytes()
    assert json.loads(packaged.read_text("utf-8")) == builtin_config()


def test_builtin_voices_match_the_original(tmp_path):
    reg = VoiceRegistry(tmp_path)
    assert reg.names() == [name for name, *_ in ORIGINAL]
    assert reg.default_voice == "Doubao" and reg.repository == "MoYoYoTech/tone-models"
    for name, stem, lang, speed in ORIGINAL:
        voice = reg.get(name)
        assert (voice.text_lang, voice.prompt_lang, voice.speed) == (lang, lang, speed)
        assert voice.prompt_text and voice.prompt_text[-1] not in " \n"
        if stem:
            assert voice.gpt_path == tmp_path / "moyoyo" / "GPT_weights" / f"{stem}_best_gpt.ckpt"
            assert voice.sovits_path == tmp_path / "moyoyo" / "SoVITS_weights" / f"{stem}_best_sovits.pth"
            assert voice.ref_audio == tmp_path / "moyoyo" / "ref_audios" / f"{stem}_ref.wav"
    doubao = reg.get("Doubao")
    assert doubao.gpt_path.name == "doubao-mixed.ckpt" and doubao.sovits_path.name == "doubao-mixed.pth"
    assert doubao.ref_audio.name == "doubao_ref_mix_new.wav"
    assert doubao.prompt_text == "这家resturant的steak很有名，但是vegetable salad的price有点贵"
    assert reg.hubert_dir == tmp_path / "moyoyo" / "chinese-hubert-base"
    assert reg.roberta_dir == tmp_path / "moyoyo" / "chinese-roberta-wwm-ext-large"
    assert reg.g2pw_dir == tmp_path / "G2PWModel"


@pytest.mark.parametrize("alias,name", [("luoxiang", "Luo Xiang"), ("LuoXiang", "Luo Xiang"),
                                        ("luo_xiang", "Luo Xiang"), ("yfc", "Chen Yifan"), ("Yifan", "Chen Yifan"),
                                        ("Daniu", "Zhao Daniu"), ("dnz", "Zhao Daniu"), ("doubao", "Doubao"),
                                        ("TRUMP", "Trump")])
def test_lookup_is_forgiving(tmp_path, alias, name):
    assert VoiceRegistry(tmp_path).get(alias).name == name


def test_unknown_voice_names_the_known_ones(tmp_path):
    with pytest.raises(PrimeSpeechError, match="unknown voice 'Nobody'; known: Doubao, Luo Xiang"):
        VoiceRegistry(tmp_path).get("Nobody")


def test_installed_needs_voice_files_and_shared_encoders(tmp_path):
    reg = VoiceRegistry(tmp_path)
    voice = reg.get("Maple")
    assert not reg.installed("Maple")
    for path in (voice.gpt_path, voice.sovits_path, voice.ref_audio):
        _touch(path)
    assert [p.name for p in reg.missing_files("Maple")] == [
        "config.json", "pytorch_model.bin", "config.json", "pytorch_model.bin", "tokenizer.json"]
    for path in reg.encoder_files():
        _touch(path)
    assert reg.installed("Maple") and not reg.installed("Cove")


def test_user_voices_file(tmp_path):
    own = _touch(tmp_path / "elsewhere" / "me.wav")
    user = tmp_path / "mine.json"
    user.write_text(json.dumps({"voices": {
        "Me": {"gpt_weights": "GPT_weights/me.ckpt", "sovits_weights": "SoVITS_weights/me.pth",
               "reference_audio": str(own), "prompt_text": "hello there", "prompt_lang": "en",
               "text_lang": "en", "speed_factor": 0.9, "aliases": ["myself"]},
        "Maple": {"gpt_weights": "/abs/maple.ckpt", "sovits_weights": "/abs/maple.pth",
                  "reference_audio": "/abs/maple.wav", "prompt_text": "replaced"},
    }}))
    reg = VoiceRegistry(tmp_path / "root", user)
    me = reg.get("myself")
    assert me.name == "Me" and me.speed == 0.9 and me.text_lang == "en"
    assert me.gpt_path == tmp_path / "root" / "moyoyo" / "GPT_weights" / "me.ckpt"
    assert me.ref_audio == own
    assert reg.get("Maple").prompt_text == "replaced" and not reg.is_builtin("Maple")
    assert reg.names()[-1] == "Maple" and "Me" in reg.names() and len(reg.names()) == 16


def test_auxiliary_references(tmp_path):
    """upstream's aux_ref_audio_paths: resolved like the reference, needed like it; none by default."""
    aux = _touch(tmp_path / "elsewhere" / "aux.wav")
    entry = {"gpt_weights": "a.ckpt", "sovits_weights": "a.pth", "reference_audio": "ref_audios/a.wav",
             "prompt_text": "好。", "aux_ref_audio_paths": ["ref_audios/b.wav", str(aux)]}
    (tmp_path / "voices.json").write_text(json.dumps({"A": entry}))
    reg = VoiceRegistry(tmp_path)
    voice = reg.get("A")
    moyoyo = tmp_path / "moyoyo"
    assert voice.aux_ref_audios == (moyoyo / "ref_audios" / "b.wav", aux)
    assert voice.references == (moyoyo / "ref_audios" / "a.wav", moyoyo / "ref_audios" / "b.wav", aux)
    assert moyoyo / "ref_audios" / "b.wav" in reg.missing_files("A") and aux not in reg.missing_files("A")
    assert reg.get("Doubao").aux_ref_audios == ()
    _touch(moyoyo / "ref_audios" / "a.wav")
    assert reg.custom(moyoyo / "ref_audios" / "a.wav", "好。", "zh").aux_ref_audios == ()


def test_bare_mapping_and_auto_discovered_file(tmp_path):
    entry = {"gpt_weights": "a.ckpt", "sovits_weights": "a.pth", "reference_audio": "a.wav", "prompt_text": "好。"}
    (tmp_path / "voices.json").write_text(json.dumps({"A": entry, "Broken": {"gpt_weights": "x"}}))
    reg = VoiceRegistry(tmp_path)  # <root>/voices.json is read; a bad entry there is skipped
    assert reg.get("A").prompt_lang == "auto" and "Broken" not in reg.names()


@pytest.mark.parametrize("content,match", [
    ("{not json", "cannot read user voices file"),
    (json.dumps({"voices": {"X": {"gpt_weights": "x"}}}), "voice 'X' lacks sovits_weights"),
    (json.dumps({"voices": {"X": {"gpt_weights": "a", "sovits_weights": "b", "reference_audio": "c",
                                  "prompt_text": "d", "speed_factor": "fast"}}}), "non-numeric speed_factor"),
    (json.dumps({"voices": {"X": {"gpt_weights": "a", "sovits_weights": "b", "reference_audio": "c",
                                  "prompt_text": "d", "aux_ref_audio_paths": "e.wav"}}}),
     "aux_ref_audio_paths that is not a list of paths"),
    (json.dumps([1, 2]), "expected"),
])
def test_explicit_user_file_errors_are_loud(tmp_path, content, match):
    path = tmp_path / "v.json"
    path.write_text(content)
    with pytest.raises(PrimeSpeechError, match=match):
        VoiceRegistry(tmp_path, path)
    with pytest.raises(PrimeSpeechError, match="user voices file not found"):
        VoiceRegistry(tmp_path, tmp_path / "missing.json")


def test_custom_and_trained_voices(tmp_path):
    reg = VoiceRegistry(tmp_path)
    ref = _touch(tmp_path / "clip.wav")
    custom = reg.custom(ref, "参考文本。", "fr")
    doubao = reg.get("Doubao")
    assert (custom.name, custom.gpt_path, custom.sovits_path) == ("CUSTOM", doubao.gpt_path, doubao.sovits_path)
    assert (custom.prompt_lang, custom.text_lang, custom.speed, custom.ref_audio) == ("auto", "auto", 1.1, ref)
    assert reg.custom(ref, "hi.", "en").prompt_lang == "en"
    gpt, sov = _touch(tmp_path / "g.ckpt"), _touch(tmp_path / "s.pth")
    trained = reg.custom(ref, "hi.", "zh", gpt_path=gpt, sovits_path=sov)
    assert (trained.name, trained.gpt_path, trained.sovits_path, trained.text_lang) == ("TRAINED", gpt, sov, "zh")
    with pytest.raises(PrimeSpeechError, match="reference audio not found"):
        reg.custom(tmp_path / "nope.wav", "x", "zh")
    with pytest.raises(PrimeSpeechError, match="GPT weights not found"):
        reg.custom(ref, "x", "zh", gpt_path=tmp_path / "nope.ckpt", sovits_path=sov)


# ------------------------------------------------------------------------------------- model-root layout
def test_model_root_knows_every_path_of_the_originals_layout(tmp_path):
    root = ModelRoot(tmp_path)
    moyoyo = tmp_path / "moyoyo"
    assert root.path == tmp_path and root.moyoyo == moyoyo
    assert (root.gpt_weights, root.sovits_weights, root.ref_audios) == (
        moyoyo / "GPT_weights", moyoyo / "SoVITS_weights", moyoyo / "ref_audios")
    assert root.hubert == root.encoder("hubert") == moyoyo / "chinese-hubert-base"
    assert root.roberta == root.encoder("roberta") == moyoyo / "chinese-roberta-wwm-ext-large"
    assert root.g2pw == tmp_path / "G2PWModel" and root.user_voices == tmp_path / "voices.json"
    assert root.encoder_files() == [moyoyo / "chinese-hubert-base" / "config.json",
                                    moyoyo / "chinese-hubert-base" / "pytorch_model.bin",
                                    moyoyo / "chinese-roberta-wwm-ext-large" / "config.json",
                                    moyoyo / "chinese-roberta-wwm-ext-large" / "pytorch_model.bin",
                                    moyoyo / "chinese-roberta-wwm-ext-large" / "tokenizer.json"]
    assert root.g2pw_tokenizers() == [tmp_path / "G2PWModel" / "tokenizer.json",
                                      moyoyo / "chinese-roberta-wwm-ext-large" / "tokenizer.json",
                                      tmp_path / "chinese-roberta-wwm-ext-large" / "tokenizer.json"]
    with pytest.raises(ValueError, match="unknown encoder 'wav2vec'"):
        root.encoder("wav2vec")


def test_model_root_expands_home_and_resolves_voice_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    root = ModelRoot("~/models")
    assert root.path == tmp_path / "models" and root == ModelRoot(tmp_path / "models")
    assert root.resolve("GPT_weights/a.ckpt") == tmp_path / "models" / "moyoyo" / "GPT_weights" / "a.ckpt"
    assert root.resolve("/abs/a.wav") == Path("/abs/a.wav")
    assert root.resolve("~/a.wav") == tmp_path / "a.wav"
    reg = VoiceRegistry("~/models")
    assert reg.root == root and reg.model_root == root.path


def test_the_packaged_manifest_agrees_with_the_layout(tmp_path):
    manifest, root = builtin_config(), ModelRoot(tmp_path)
    for kind in ("hubert", "roberta"):
        assert root.encoder(kind).name == manifest["encoders"][kind]["folder"]
    assert root.g2pw.name == manifest["g2pw"]["folder"]
    for entry in manifest["voices"].values():
        folders = {Path(entry[key]).parent for key in ("gpt_weights", "sovits_weights", "reference_audio")}
        assert {root.moyoyo / folder for folder in folders} == {root.gpt_weights, root.sovits_weights,
                                                                root.ref_audios}


def test_every_user_of_the_layout_asks_model_root(tmp_path, caplog):
    from dora_primespeech_mlx.coreml import export
    from dora_primespeech_mlx.text.g2pw import load_g2pw

    root = ModelRoot(tmp_path)
    assert [export.model_folder(tmp_path, kind) for kind in export.KINDS] == [root.hubert, root.roberta]
    with caplog.at_level(logging.INFO, logger="dora_primespeech_mlx"):
        assert load_g2pw(tmp_path) is None
    assert f"pypinyin (no {root.g2pw})" in caplog.text
    reg = VoiceRegistry(tmp_path)
    assert (reg.hubert_dir, reg.roberta_dir, reg.g2pw_dir) == (root.hubert, root.roberta, root.g2pw)


def test_the_layout_is_written_down_once():
    """No package module but voices.py spells a folder or file name of the model root (the dev-only
    oracle and bench packages, which build test roots, aside)."""
    names = {"moyoyo", "GPT_weights", "SoVITS_weights", "ref_audios", "chinese-hubert-base",
             "chinese-roberta-wwm-ext-large", "G2PWModel", "voices.json"}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in ("oracle", "bench") or relative == Path("voices.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{relative}:{node.lineno}: {node.value!r}")
    assert found == []


# ------------------------------------------------------------------ REPOSITORY and the file overrides
def test_repository_replaces_the_builtin_voices_source_not_a_user_voices(tmp_path):
    (tmp_path / "voices.json").write_text(json.dumps({"mine": {
        "gpt_weights": "a.ckpt", "sovits_weights": "b.pth", "reference_audio": "c.wav", "prompt_text": "x",
        "repository": "me/own"}}), "utf-8")
    reg = VoiceRegistry(tmp_path, repository="mirror/tone-models")
    assert reg.repository == "mirror/tone-models"
    assert reg.entry("Maple")["repository"] == "mirror/tone-models"
    assert reg.entry("mine")["repository"] == "me/own"
    assert VoiceRegistry(tmp_path).repository == "MoYoYoTech/tone-models"


def test_overrides_replace_the_configured_voices_files_only(tmp_path):
    reg = VoiceRegistry(tmp_path, voice_files={"luoxiang": {
        "gpt_weights": tmp_path / "own" / "g.ckpt", "reference_audio": "ref_audios/other.wav"}})
    voice = reg.get("Luo Xiang")
    assert voice.gpt_path == tmp_path / "own" / "g.ckpt"
    assert voice.sovits_path == tmp_path / "moyoyo" / "SoVITS_weights" / "luoxiang_best_sovits.pth"
    # a relative override is resolved like a voices.json path: against <model_root>/moyoyo
    assert voice.ref_audio == tmp_path / "moyoyo" / "ref_audios" / "other.wav"
    assert reg.overridden("Luo Xiang") == {"gpt_weights": voice.gpt_path, "reference_audio": voice.ref_audio}
    assert reg.entry("Luo Xiang")["gpt_weights"] == "GPT_weights/luoxiang_best_gpt.ckpt"  # the hub's name
    assert reg.get("Doubao").gpt_path.name == "doubao-mixed.ckpt" and reg.overridden("Doubao") == {}
    with pytest.raises(ValueError, match="unknown keys"):
        VoiceRegistry(tmp_path, voice_files={"Doubao": {"gpt": "x"}})


def test_overrides_for_an_unknown_voice_go_to_the_default_voice_the_node_falls_back_to(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        reg = VoiceRegistry(tmp_path, voice_files={"Nobody": {"sovits_weights": "/s.pth"}})
    assert reg.get("Doubao").sovits_path == Path("/s.pth")
    assert "'Nobody' apply to 'Doubao'" in caplog.text


def test_from_config_reads_the_originals_variables(tmp_path):
    from dora_primespeech_mlx.config import NodeConfig

    config, problems = NodeConfig.from_env({
        "PRIMESPEECH_MODEL_DIR": str(tmp_path), "VOICE_NAME": "Maple", "REPOSITORY": "me/voices",
        "GPT_MODEL_PATH": "~/g.ckpt", "SOVITS_MODEL_PATH": "SoVITS_weights/s.pth", "HOME": str(tmp_path / "home")})
    assert problems == []
    reg = VoiceRegistry.from_config(config)
    maple = reg.get("Maple")
    assert reg.model_root == tmp_path and reg.repository == "me/voices"
    assert maple.gpt_path == tmp_path / "home" / "g.ckpt"
    assert maple.sovits_path == tmp_path / "moyoyo" / "SoVITS_weights" / "s.pth"
    assert maple.ref_audio == tmp_path / "moyoyo" / "ref_audios" / "maple_ref.wav"
    assert reg.get("Cove").gpt_path.name == "cove_best_gpt.ckpt"
    assert VoiceRegistry.from_config(config, tmp_path / "other").model_root == tmp_path / "other"


def test_missing_message_names_the_override_or_the_repository(tmp_path):
    root = ModelRoot(tmp_path)
    for path in root.encoder_files():
        _touch(path)
    own = _touch(tmp_path / "own.ckpt")
    reg = VoiceRegistry(tmp_path, repository="me/voices", voice_files={"Maple": {
        "gpt_weights": own, "sovits_weights": tmp_path / "gone.pth"}})
    message = reg.missing_message("Maple")
    assert message == (f"voice 'Maple': SOVITS_MODEL_PATH names {tmp_path / 'gone.pth'}, which does not exist: "
                       "point it at the voice's sovits weights file or unset it")
    cove = reg.missing_message("Cove")
    assert cove.startswith(f"voice 'Cove' is not installed in {tmp_path} (missing ")
    assert f'primespeech-mlx download --voice "Cove" --model-root {tmp_path}' in cove
    assert "Hugging Face repository me/voices; REPOSITORY names another" in cove
    _touch(tmp_path / "gone.pth")
    _touch(root.ref_audios / "maple_ref.wav")
    assert reg.missing_message("Maple") is None and reg.installed("Maple")  # no official weights needed
