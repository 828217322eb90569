"""Streaming-mode chunk boundaries against upstream's `infer_panel_naive(streaming_mode=True)`.

Same random T2S weights on both sides, greedy decoding, so both make the same codes; the chunks must
then fall where upstream's fall. Fixed-length chunks are identical; mute-split chunks end where
upstream advances its pointer (upstream also repeats the codes after the split: see chunking.py).
"""

from __future__ import annotations

import numpy as np
import pytest

import dora_primespeech_mlx  # noqa: F401  (OpenBLAS before MLX)
from dora_primespeech_mlx import loading
from dora_primespeech_mlx.chunking import chunk_codes, mute_similarity, mute_split
from dora_primespeech_mlx.models import generate
from primespeech_devtools.oracle import t2s as oracle

GREEDY = dict(top_k=1, top_p=1.0, temperature=1.0, repetition_penalty=1.0)
SIM_TOL = 1e-6


@pytest.fixture(scope="module", autouse=True)
def _single_thread(torch_single_thread):
    yield


@pytest.fixture(scope="module")
def small(tmp_path_factory, upstream):
    ref, path = oracle.write_random_checkpoint(tmp_path_factory.mktemp("chunks") / "small.ckpt",
                                               oracle.SMALL_CONFIG, seed=3)
    return ref, loading.load_model("t2s", path)


def _upstream_chunks(ref, phones, bert, prompt, *, early_stop_num, chunk_length, similarity):
    import torch

    with torch.no_grad():
        gen = ref.infer_panel_naive(
            torch.as_tensor(phones)[None], torch.tensor([len(phones)]), torch.as_tensor(prompt)[None],
            torch.as_tensor(bert)[None], **GREEDY, early_stop_num=early_stop_num, streaming_mode=True,
            chunk_length=chunk_length, mute_emb_sim_matrix=similarity, chunk_split_thershold=0.0)
        return [(None if y is None else y[0].tolist(), bool(final)) for y, final in gen]


def _ours(model, phones, bert, prompt, *, early_stop_num, chunk_length, similarity):
    steps = generate.generate_step(model, [(phones, bert)], prompt, seeds=[None], **GREEDY,
                                   early_stop_num=early_stop_num)
    codes = (row_codes[0] for _, row_codes in steps)
    return list(chunk_codes(codes, last_step=early_stop_num, chunk_length=chunk_length, similarity=similarity))


def test_mute_similarity_matches_torch(small):
    import torch.nn.functional as F

    ref, model = small
    table = ref.ar_audio_embedding.weight.detach()
    expected = F.cosine_similarity(table[486][None].float(), table.float(), dim=-1).numpy()
    ours = mute_similarity(np.array(model.ar_audio_embedding.word_embeddings.weight))
    assert ours.shape == (1025,) and np.abs(ours - expected).max() < SIM_TOL
    assert ours[486] == pytest.approx(1.0) and (ours > 0).mean() > 0.2 and (ours < 0).mean() > 0.2


@pytest.mark.parametrize("chunk_length", [16, 8])
def test_fixed_length_chunks_equal_upstream(small, chunk_length):
    ref, model = small
    phones, bert, prompt = oracle.random_inputs(30, 20, seed=5)
    up = _upstream_chunks(ref, phones, bert, prompt, early_stop_num=70, chunk_length=chunk_length, similarity=None)
    ours = _ours(model, phones, bert, prompt, early_stop_num=70, chunk_length=chunk_length, similarity=None)
    assert ours == up and len(up) >= 4


@pytest.mark.parametrize("seed", [5, 7, 18])
def test_mute_split_chunks_end_where_upstream_splits(small, seed):
    import torch

    ref, model = small
    phones, bert, prompt = oracle.random_inputs(30, 20, seed=seed)
    sim_torch = torch.nn.functional.cosine_similarity(
        ref.ar_audio_embedding.weight[486][None].float(), ref.ar_audio_embedding.weight.float(), dim=-1).detach()
    up = _upstream_chunks(ref, phones, bert, prompt, early_stop_num=120, chunk_length=16, similarity=sim_torch)
    similarity = mute_similarity(np.array(model.ar_audio_embedding.word_embeddings.weight))
    ours = _ours(model, phones, bert, prompt, early_stop_num=120, chunk_length=16, similarity=similarity)
    assert len(ours) == len(up) >= 3 and ours[-1][1] and not any(final for _, final in ours[:-1])
    whole = generate.generate(model, [(phones, bert)], prompt, seeds=[None], **GREEDY, early_stop_num=120)[0]
    assert [c for chunk, _ in ours for c in chunk] == whole  # every code once, in order
    for (mine, _), (theirs, _) in zip(ours[:-1], up[:-1], strict=True):
        # upstream hands out all pending codes; our chunk is the part before its pointer's new place
        assert theirs[:len(mine)] == mine and len(mine) >= 16
    assert ours[-1][0] == up[-1][0]  # the final chunk starts at upstream's last pointer: same codes
    if seed == 5:  # here upstream's chunks run past the split: the repeated codes we leave out
        assert any(len(theirs) > len(mine) for (mine, _), (theirs, _) in zip(ours[:-1], up[:-1], strict=True))


def test_mute_split_rule():
    similarity = np.full(10, -0.5, dtype=np.float32)
    similarity[3] = similarity[4] = 0.2  # two quiet codes in a row
    assert mute_split([0, 1, 2, 3, 4, 5], similarity, chunk_length=2) == 4  # after the first quiet code
    assert mute_split([0, 1, 2, 3, 4, 5], similarity, chunk_length=5) is None  # too early to split
    assert mute_split([0, 1, 2, 5, 6], similarity, chunk_length=1) is None  # nothing quiet
    chunks = list(chunk_codes(iter(range(7)), last_step=100, chunk_length=3))
    assert chunks == [([0, 1, 2], False), ([3, 4, 5], False), ([6], True)]
    assert list(chunk_codes(iter([0, 1, 2]), last_step=100, chunk_length=3)) == [([0, 1, 2], False), (None, True)]
    assert list(chunk_codes(iter(range(9)), last_step=2, chunk_length=2)) == [([0, 1], False), ([2], True)]
    # fixed_first: the first chunk does not wait for a pause, the later ones do
    quiet = np.full(100, -0.5, dtype=np.float32)
    quiet[[20, 21]] = 0.3
    chunks = list(chunk_codes(iter(range(30)), last_step=100, chunk_length=3, similarity=quiet, fixed_first=True))
    assert chunks == [([0, 1, 2], False), (list(range(3, 21)), False), (list(range(21, 30)), True)]
    assert list(chunk_codes(iter(range(30)), last_step=100, chunk_length=3, similarity=quiet))[0] == \
        (list(range(21)), False)
