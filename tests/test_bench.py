"""`primespeech-mlx bench ...`: the benchmarks live in the dev tools (devtools/, never in the wheel).

Without the dev tools (a wheel install) `bench` says how to get them; without the upstream oracle (torch,
gpt-sovits-cpufast) each benchmark times ours only, on random weights made without torch, with a note.
Both are simulated here by hiding the modules (a None entry in sys.modules makes their import fail).
"""

from __future__ import annotations

import json
import sys

import pytest

from dora_primespeech_mlx import cli, loading

bench = pytest.importorskip("primespeech_devtools.bench", reason="the dev tools are not installed (make setup)")


@pytest.fixture
def no_oracle(monkeypatch):
    for name in bench.ORACLE_MODULES:
        monkeypatch.setitem(sys.modules, name, None)


def run_bench(capsys, *argv: str) -> tuple[dict, str]:
    assert cli.main(["bench", *argv]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_without_the_dev_tools_bench_says_how_to_get_them(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "primespeech_devtools.bench", None)
    assert cli.main(["bench", "t2s", "--steps", "3"]) == 2
    err = capsys.readouterr().err
    assert "dev tools" in err and "make setup" in err and "not part of the installed package" in err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "--help"])
    assert exit_.value.code == 0
    assert "make setup" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "bench" in capsys.readouterr().out


def test_the_oracle_note_names_what_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    note = bench.oracle_missing()
    assert note.startswith("ours only") and "torch" in note and "make setup" in note


def test_with_the_oracle_installed_there_is_no_note():
    pytest.importorskip("torch")
    pytest.importorskip("GPT_SoVITS")
    assert bench.oracle_missing() is None


def test_bench_t2s_without_the_oracle_times_ours_only(no_oracle, capsys):
    result, err = run_bench(capsys, "t2s", "--layers", "1", "--steps", "4", "--phones", "8", "--prompt", "4",
                            "--repeat", "1", "--rows", "1,2")
    assert result["note"].startswith("ours only") and "warning: ours only" in err
    assert result["codes"] == 4 and result["ours_tokens_per_s"] > 0 and len(result["ours_times_s"]) == 1
    rows_memory = result["ours_rows_peak_memory_above_start_mb"]
    assert set(result["ours_rows_tokens_per_s"]) == set(rows_memory) == {"1", "2"}
    # two rows hold two KV caches; measured above the start, so other tests' arrays do not count
    assert 0 < rows_memory["1"] < rows_memory["2"] < result["ours_peak_memory_mb"]
    assert not [key for key in result if key.startswith("upstream") or key == "ratio"]


def test_bench_sovits_without_the_oracle_times_ours_in_vocoder_windows(no_oracle, capsys):
    result, err = run_bench(capsys, "sovits", "--codes", "40", "--phones", "10", "--ref-frames", "50",
                            "--repeats", "1", "--rows", "2", "--vocoder-frames", "30")
    assert result["note"].startswith("ours only") and "warning: ours only" in err
    assert result["rows"] == 2 and result["vocoder_frames"] == 30 and result["audio_seconds"] == 2 * 40 * 1280 / 32000
    assert result["ours_rtf"] > 0 and len(result["ours_seconds"]) == 1
    assert not [key for key in result if key.startswith("upstream") or key.startswith("ratio")]


def test_bench_frontend_without_the_oracle_times_ours_only(no_oracle, capsys):
    result, _ = run_bench(capsys, "frontend", "--langs", "en", "--reps", "1")
    assert result["note"].startswith("ours only")
    assert "error" not in result["en"]["ours"], result["en"]["ours"]
    assert result["en"]["ours_sentences_per_s"] > 0 and "upstream" not in result["en"]


def test_bench_e2e_without_the_oracle_or_a_voice_says_what_to_pass(no_oracle, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PRIMESPEECH_TEST_VOICE_ROOT", str(tmp_path))  # holds no test voice
    assert cli.main(["bench", "e2e", "--no-startup"]) == 2
    err = capsys.readouterr().err
    assert "--model-root" in err and "make setup" in err


def test_random_weights_load_through_the_package_loader(tmp_path):
    from safetensors.numpy import load_file

    from dora_primespeech_mlx.features import bert_features
    from dora_primespeech_mlx.models import roberta
    from primespeech_devtools.bench.weights import load_random_model, random_model_folder

    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
            "vocab_size": 200}
    folder = random_model_folder("roberta", tmp_path / "roberta", tiny)
    model, tokenizer = loading.load_model("roberta", folder), roberta.load_tokenizer(folder)
    assert tokenizer.encode("你好。").tokens == ["[CLS]", "[UNK]", "[UNK]", "[UNK]", "[SEP]"]  # beyond 200
    assert bert_features(model, tokenizer, "你好。", [2, 2, 1]).shape == (32, 5)

    folder = random_model_folder("t2s", tmp_path / "t2s", {"n_layer": 1})
    (weights,) = [load_file(str(path)) for path in folder.glob("*.safetensors")]
    assert not weights["ar_predict_layer.weight"][1024].any()  # EOS's row: greedy decoding never stops early
    assert load_random_model("t2s", tmp_path / "t2s-loaded", {"n_layer": 1}).args.n_layer == 1


def test_effects_bench_times_pitch_and_volume():
    import argparse

    from primespeech_devtools.bench import effects

    result = effects.run(argparse.Namespace(seconds=1.0, semitones=2.0, repeats=1))
    assert result["pitch_shift_ms_per_audio_second"] > 0 and result["volume_ms_per_audio_second"] > 0
    assert result["semitones"] == 2.0


def test_bench_e2e_reports_each_stages_memory_and_restores_the_engine():
    from dora_primespeech_mlx import pipeline
    from dora_primespeech_mlx.models import generate, sovits, t2s
    from primespeech_devtools.bench import e2e
    from primespeech_devtools.oracle.voice import shared_test_voice

    originals = (pipeline.TextPipeline.bert_many, t2s.Model.prefill, generate.generate, sovits.Model.decode_batch)
    result = e2e._ours(shared_test_voice().model_root, "test", "你好，今天天气很好。我们去公园散步吧。", 1)
    stages = result["stage_peak_memory_mb"]
    assert {"bert", "t2s", "sovits"} <= set(stages) and stages["sovits"] > 0, stages
    assert all(value >= 0 for value in stages.values())
    assert result["peak_memory_mb"] >= result["loaded_memory_mb"] > 0
    assert (pipeline.TextPipeline.bert_many, t2s.Model.prefill, generate.generate,
            sovits.Model.decode_batch) == originals
