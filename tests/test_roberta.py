"""Chinese RoBERTa (BERT-large) in MLX against upstream's pure-torch BertForMaskedLM.

Identical random weights, written as the official `chinese-roberta-wwm-ext-large/pytorch_model.bin`
(torch.save, fp16, Hugging Face key names, MLM head included) next to the real tokenizer.json, go
through our converter; upstream loads the folder with its own `text.chinese_bert.load_model`.
Both of our paths are checked: the pure-MLX model (what every device runs) and the model with the
CPU accelerator's native twins installed (`cpu.encoders.install`). Tolerance: max |ours - upstream| <= 1e-4 x max |upstream| on hidden_states[-3] (float32 on CPU).
"""

from __future__ import annotations

import gc
import json

import numpy as np
import parity
import pytest
from parity import rel_err

import dora_primespeech_mlx  # noqa: F401  (loads OpenBLAS before mlx)
from dora_primespeech_mlx import loading
from dora_primespeech_mlx.errors import PrimeSpeechError

torch = pytest.importorskip("torch")
mx = pytest.importorskip("mlx.core")

from mlx.utils import tree_flatten  # noqa: E402

from dora_primespeech_mlx.cpu import encoders as cpu_encoders  # noqa: E402
from dora_primespeech_mlx.models import roberta  # noqa: E402
from primespeech_devtools.oracle import encoders as oracle  # noqa: E402

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


def load(folder, path: str) -> roberta.Model:
    """The model on one path: "accelerated" (as loaded on this CPU: the native twins installed) or
    "mlx" (loaded with the CPU kernels switched off: pure MLX, as on every other device)."""
    model = parity.load_model("roberta", folder, kernels=path != "mlx")
    # the native CPU kernels are built and serve this model, unless switched off
    assert isinstance(model.encoder, cpu_encoders.RobertaEncoder if path == "accelerated" else roberta.Encoder)
    return model


@pytest.fixture(scope="session")
def full_model(full_folder):
    return load(full_folder, "accelerated")


@pytest.fixture(scope="session")
def tiny_folder(upstream):
    return oracle.model_folder("roberta", seed=1, overrides=TINY)


def test_hidden_state_minus_3_matches_upstream(full_folder, full_model):
    tokenizer = roberta.load_tokenizer(full_folder)
    assert len(full_model.encoder.layer) == 22  # hidden_states[-3] of 24 layers
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


def test_pure_mlx_and_accelerated_models_agree(full_folder, full_model):
    # The pure-MLX model is what a GPU runs; on this CPU the accelerated one serves. Both must give
    # upstream's result, and so agree with each other.
    pure = load(full_folder, "mlx")
    ids = roberta.load_tokenizer(full_folder).encode(SENTENCES[1]).ids
    ours = np.array(pure(mx.array([ids])))[0]
    assert rel_err(ours, oracle.roberta_hidden_states(full_folder, SENTENCES[1])[-3]) <= REL_TOL
    assert rel_err(np.array(full_model(mx.array([ids])))[0], ours) <= REL_TOL


def parameter_bytes(model) -> int:
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def test_accelerated_model_holds_no_weight_twice(full_folder):
    # The twins pack the products' weights once and the MLX copies they were packed from are
    # released: MLX parameters left + packed bytes <= the model's bytes before (float16 panels
    # where exact are smaller), and MLX's memory drops by what was packed.
    model = load(full_folder, "mlx")
    before, active = parameter_bytes(model), mx.get_active_memory()
    assert cpu_encoders.install(model) and not cpu_encoders.install(model)  # once
    gc.collect()
    packed = sum(layer.packed_bytes() for layer in model.encoder.layer)
    left = parameter_bytes(model)
    replaced = before - left
    assert replaced > 0.5 * before  # most of the model is packed
    assert replaced / 2 <= packed <= replaced  # float16 panels where every value is exact, else float32
    assert active - mx.get_active_memory() >= before - left


@pytest.mark.parametrize("path", ["accelerated", "mlx"])
def test_padding_mask_matches_single_sentences(tiny_folder, path):
    model = load(tiny_folder, path)
    tokenizer = roberta.load_tokenizer(tiny_folder)
    a, b = (tokenizer.encode(t).ids for t in ("你好，世界！今天天气很好。", "好的"))
    ids = mx.array([a, b + [0] * (len(a) - len(b))])
    mask = mx.array([[1] * len(a), [1] * len(b) + [0] * (len(a) - len(b))])
    batched = np.array(model(ids, attention_mask=mask))
    np.testing.assert_allclose(batched[0], np.array(model(mx.array(a)))[0], atol=1e-5)
    np.testing.assert_allclose(batched[1, : len(b)], np.array(model(mx.array(b)))[0], atol=1e-5)
    ref = oracle.roberta_hidden_states(tiny_folder, "好的")[-3]
    assert rel_err(np.array(model(mx.array(b)))[0], ref) <= REL_TOL
    assert rel_err(batched[1, : len(b)], ref) <= REL_TOL


def test_key_masks_of_any_shape_match_pure_mlx(tiny_folder):
    """The twin stacks the tokens each row keeps (left padding, holes), so every kept position gets
    the pure-MLX value; the positions a row drops come back as zeros."""
    pure, fast = load(tiny_folder, "mlx"), load(tiny_folder, "accelerated")
    ids = mx.array([[101, 872, 1962, 8024, 686, 102], [0, 0, 101, 1962, 4638, 102], [101, 872, 0, 1962, 102, 0]])
    keep = np.array([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1], [1, 1, 0, 1, 1, 0]])
    expected, got = (np.array(m(ids, attention_mask=mx.array(keep))) for m in (pure, fast))
    kept = keep.astype(bool)
    np.testing.assert_allclose(got[kept], expected[kept], atol=1e-5)
    assert np.abs(expected[kept]).max() > 0.1 and not got[~kept].any()


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_cpu_threads_match_upstream(tiny_folder, threads, monkeypatch):
    # The twin splits each product by output features and attention by query rows over `threads`
    # pool threads: any split must give upstream's result.
    monkeypatch.setattr(cpu_encoders, "pool_threads", lambda: threads)
    model = load(tiny_folder, "accelerated")
    tokenizer = roberta.load_tokenizer(tiny_folder)
    text = SENTENCES[0]
    ours = np.array(model(mx.array(tokenizer.encode(text).ids)))[0]
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
        loading.convert("roberta", bad)
    del state["bert.encoder.layer.0.attention.self.rotary.weight"]
    del state["bert.encoder.layer.2.output.dense.weight"]
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, bad / "pytorch_model.bin")
    with pytest.raises(PrimeSpeechError, match="missing"):
        loading.convert("roberta", bad)
    with pytest.raises(PrimeSpeechError, match="tokenizer.json"):
        roberta.load_tokenizer(bad)
    with pytest.raises(PrimeSpeechError, match="too long"):
        loading.load_model("roberta", tiny_folder)(mx.zeros((1, 600), dtype=mx.int32))
