"""Chinese RoBERTa (BERT-large) in MLX against upstream's pure-torch BertForMaskedLM.

Identical random weights, written as the official `chinese-roberta-wwm-ext-large/pytorch_model.bin`
(torch.save, fp16, Hugging Face key names, MLM head included) next to the real tokenizer.json, go
through our converter; upstream loads the folder with its own `text.chinese_bert.load_model`.
Tolerance: max |ours - upstream| <= 1e-4 x max |upstream| on hidden_states[-3] (float32 on CPU).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from parity import rel_err

import dora_primespeech_mlx  # noqa: F401  (loads OpenBLAS before mlx)
from dora_primespeech_mlx.errors import PrimeSpeechError
from dora_primespeech_mlx.models import kernels, native_ops, panel_ops

torch = pytest.importorskip("torch")
mx = pytest.importorskip("mlx.core")

from dora_primespeech_mlx.models import roberta  # noqa: E402
from dora_primespeech_mlx.oracle import encoders as oracle  # noqa: E402

REL_TOL = 1e-4
TINY = {"hidden_size": 64, "num_hidden_layers": 5, "num_attention_heads": 4, "intermediate_size": 128}

# A varied Chinese corpus: punctuation of both widths, digits, Latin letters and words, quotes,
# brackets, rare and traditional characters, emoji, whitespace, ellipses and dashes.
CORPUS = [
    "你好，世界！",
    "今天天气很好，我们去公园散步吧。",
    "他说：“明天见。”然后就走了……",
    "这台GPU的价格是2999元，比去年便宜了15%。",
    "A股和B股的区别是什么？",
    "请在2024年3月15日之前提交报告。",
    "《红楼梦》是中国古典四大名著之一。",
    "她会说English和日本語，还会一点点Français。",
    "电话号码：138-0013-8000，邮箱test@example.com。",
    "鑫、淼、犇、骉、龘都是罕见字。",
    "繁體中文與簡體中文有什麼不同？",
    "我爱北京天安门，天安门上太阳升。",
    "气温零下5℃，注意保暖～",
    "（括号）【方括号】{花括号}",
    "哈哈哈😂这也太好笑了吧！！！",
    "一二三四五六七八九十百千万亿",
    "iPhone 15 Pro Max 售价 9999 元",
    "人工智能（AI）正在改变世界。",
    "“你吃饭了吗？”“还没呢。”",
    "Python3.11版本发布了新特性",
    "上海、广州、深圳都是一线城市；成都、杭州是新一线城市。",
    "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。",
    "这个问题——说实话——很难回答。",
    "   前后有空格   ",
    "ｆｕｌｌ　ｗｉｄｔｈ　全角字母ＡＢＣ１２３",
    "好",
    "他的分数是98.5分，排名第3。",
    "语音合成（TTS）和语音识别（ASR）是两个方向。",
    "我们……嗯……再想想吧。",
    "欢迎使用dora-primespeech！",
    "你知道π约等于3.14159吗？",
    "苹果、香蕉、橘子，你喜欢哪一个?",
    "GPT-SoVITS 是一个少样本语音克隆项目",
]

SENTENCES = ["你好，世界！今天天气很好。", "A股涨了3%，B站…好吗?", "春眠不觉晓，处处闻啼鸟。"]


pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="session")
def full_folder(upstream):
    return oracle.model_folder("roberta", seed=0)


@pytest.fixture(scope="session")
def full_model(full_folder):
    return roberta.load_model(full_folder)


@pytest.fixture(scope="session")
def tiny_folder(upstream):
    return oracle.model_folder("roberta", seed=1, overrides=TINY)


def test_hidden_state_minus_3_matches_upstream(full_folder, full_model):
    tokenizer = roberta.load_tokenizer(full_folder)
    assert len(full_model.encoder.layer) == 22  # hidden_states[-3] of 24 layers
    assert full_model.native_lengths(1, 8, None) == [8]  # the native CPU kernels are built and serve the full model
    for text in SENTENCES:
        ids = tokenizer.encode(text).ids
        states = oracle.roberta_hidden_states(full_folder, text)
        assert len(states) == 25
        ours = np.array(full_model(mx.array([ids])))[0]
        assert ours.shape == states[-3].shape == (len(ids), 1024)
        assert rel_err(ours, states[-3]) <= REL_TOL
        # Informative and not another layer's output.
        assert states[-3].std(axis=0).mean() > 0.1 * states[-3].std()
        assert rel_err(ours, states[-2]) > 0.1 and rel_err(ours, states[-4]) > 0.1


def test_tokenizer_ids_equal_upstream(full_folder):
    tokenizer = roberta.load_tokenizer(full_folder)
    lengths = []
    for text in CORPUS:
        ids = tokenizer.encode(text).ids
        assert ids == oracle.roberta_token_ids(full_folder, text), text
        lengths.append(len(ids) - 2 - len(text))
    assert any(lengths) and lengths.count(0) > 5  # the corpus has both one-token-per-char and other texts
    # The converted folder carries the tokenizer too.
    converted = roberta.load_tokenizer(full_folder / "mlx")
    assert converted.encode(CORPUS[3]).ids == tokenizer.encode(CORPUS[3]).ids


@pytest.fixture
def cpu_path(request):
    """Runs a test on one CPU path: native kernels with packed-weight products ("panels"), native
    kernels with BLAS products ("native-blas"), or pure MLX ("mlx")."""
    path = request.param
    native_ops.set_native_kernels(path != "mlx")
    panel_ops.set_panel_kernels(path == "panels")
    yield path
    native_ops.set_native_kernels(True)
    panel_ops.set_panel_kernels(True)


@pytest.mark.parametrize("cpu_path", ["panels", "native-blas", "mlx"], indirect=True)
def test_padding_mask_matches_single_sentences(tiny_folder, cpu_path):
    model = roberta.load_model(tiny_folder)
    tokenizer = roberta.load_tokenizer(tiny_folder)
    a, b = (tokenizer.encode(t).ids for t in ("你好，世界！今天天气很好。", "好的"))
    ids = mx.array([a, b + [0] * (len(a) - len(b))])
    mask = mx.array([[1] * len(a), [1] * len(b) + [0] * (len(a) - len(b))])
    assert (model.native_lengths(2, len(a), mask) == [len(a), len(b)]) == (cpu_path != "mlx")
    batched = np.array(model(ids, attention_mask=mask))
    np.testing.assert_allclose(batched[0], np.array(model(mx.array(a)))[0], atol=1e-5)
    np.testing.assert_allclose(batched[1, : len(b)], np.array(model(mx.array(b)))[0], atol=1e-5)
    ref = oracle.roberta_hidden_states(tiny_folder, "好的")[-3]
    assert rel_err(np.array(model(mx.array(b)))[0], ref) <= REL_TOL
    assert rel_err(batched[1, : len(b)], ref) <= REL_TOL


def test_only_right_padding_goes_native(tiny_folder):
    """The native path stacks each row's leading tokens: masks of any other shape stay in MLX."""
    model = roberta.load_model(tiny_folder)
    assert model.native_lengths(2, 4, mx.array([[1, 1, 1, 1], [1, 1, 0, 0]])) == [4, 2]
    assert model.native_lengths(2, 4, mx.array([[1, 1, 1, 1], [0, 0, 1, 1]])) is None  # left padding
    assert model.native_lengths(1, 4, mx.array([[1, 0, 1, 1]])) is None
    assert model.native_lengths(2, 4, mx.array([[1, 1, 1, 1], [0, 0, 0, 0]])) is None


@pytest.mark.parametrize("native", [True, False], ids=["native", "mlx"])
@pytest.mark.parametrize("lanes", [1, 2])
def test_cpu_lanes_match_upstream(tiny_folder, lanes, native):
    # On CPU each layer's products are split by output features over `lanes` threads: native
    # kernels (models/kernels.py) or MLX streams.
    model = roberta.load_model(tiny_folder)
    tokenizer = roberta.load_tokenizer(tiny_folder)
    text = SENTENCES[0]
    kernels.set_lane_count(lanes)
    native_ops.set_native_kernels(native)
    try:
        assert (model.native_lengths(1, 4, None) is not None) == native
        ours = np.array(model(mx.array(tokenizer.encode(text).ids)))[0]
    finally:
        kernels.set_lane_count(None)
        native_ops.set_native_kernels(True)
    assert rel_err(ours, oracle.roberta_hidden_states(tiny_folder, text)[-3]) <= REL_TOL


def test_upstream_loader_reads_our_folder(tiny_folder):
    # model_folder keeps the built model as the oracle; upstream's own loader must agree with it.
    from text import chinese_bert

    model = chinese_bert.load_model(str(tiny_folder)).eval()
    built, tokenizer = oracle.load_upstream_roberta(tiny_folder)
    assert model is not built
    inputs = tokenizer("春眠不觉晓", return_tensors="pt")
    with torch.no_grad():
        a = model(**inputs, output_hidden_states=True)["hidden_states"][-3]
        b = built(**inputs, output_hidden_states=True)["hidden_states"][-3]
    assert torch.equal(a, b)


def test_sanitize_drops_exactly_the_unused_parts(tiny_folder):
    from dora_primespeech_mlx.checkpoint import read_checkpoint

    state = read_checkpoint(tiny_folder / "pytorch_model.bin")
    assert any(k.startswith("cls.predictions.") for k in state) and "bert.embeddings.position_ids" in state
    args = roberta.ModelArgs.from_dict(json.loads((tiny_folder / "config.json").read_text()))
    assert args.layers_run == 3
    extra = {"bert.pooler.dense.weight": np.zeros((64, 64), np.float16)}
    out = roberta.Model.sanitize({**state, **extra}, args)
    assert not any(k.startswith(("cls.", "bert.", "pooler.")) for k in out)
    assert not any(k.startswith(("encoder.layer.3.", "encoder.layer.4.")) for k in out)
    assert "encoder.layer.2.output.LayerNorm.weight" in out
    # Old TF-style names map onto the same parameters.
    old = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
           for k, v in state.items()}
    assert sorted(roberta.Model.sanitize(old, args)) == sorted(out)


def test_strict_loading_and_cli(tiny_folder, tmp_path, capsys):
    from dora_primespeech_mlx.checkpoint import read_checkpoint
    from dora_primespeech_mlx.cli import main

    assert main(["convert", "--roberta", str(tiny_folder), "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["conversion"]["kind"] == "roberta"
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    assert "roberta" in capsys.readouterr().out

    state = read_checkpoint(tiny_folder / "pytorch_model.bin")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((tiny_folder / "config.json").read_text())
    state["bert.encoder.layer.0.attention.self.rotary.weight"] = np.zeros(4, np.float16)
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, bad / "pytorch_model.bin")
    with pytest.raises(PrimeSpeechError, match="unexpected"):
        roberta.convert(bad)
    del state["bert.encoder.layer.0.attention.self.rotary.weight"]
    del state["bert.encoder.layer.2.output.dense.weight"]
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, bad / "pytorch_model.bin")
    with pytest.raises(PrimeSpeechError, match="missing"):
        roberta.convert(bad)
    with pytest.raises(PrimeSpeechError, match="tokenizer.json"):
        roberta.load_tokenizer(bad)
    with pytest.raises(PrimeSpeechError, match="too long"):
        roberta.load_model(tiny_folder)(mx.zeros((1, 600), dtype=mx.int32))
