"""Where upstream GPT-SoVITS's `streaming_mode` cuts a segment's semantic codes into chunks.

While T2S decodes, a chunk is handed to the streaming SoVITS decoder as soon as it is long enough:
- mute split (upstream's default): once `chunk_length + 2` codes are pending, each pending code is
  scored by the cosine similarity of its embedding to the "mute" code's (486 in v1/v2 models), minus
  a threshold (0 in TTS.run), negatives set to -1, and each score summed with its successor's (two
  quiet codes in a row); the chunk ends after the best-scoring code if that score is >= 0 and the
  chunk has at least `chunk_length` codes — so audio is cut in pauses;
- fixed length (`mute_similarity` None): every `chunk_length` codes.
The codes left when decoding stops form the final chunk (None when there are none). Optionally (ours,
`fixed_first`) the first chunk is cut at `chunk_length` codes even in mute-split mode: a clause often
has no pause, and the first audio should not wait for the whole of it.

One deliberate difference: in mute-split mode upstream hands out every pending code but advances
its pointer only past the split, so the codes after the split are handed out twice and their audio
is spoken twice; here a chunk ends at the split and those codes open the next chunk.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

MUTE_CODE = 486  # the semantic code of silence in the v1/v2 codebooks (upstream's `mute_tokens`)
CHECK_CODES = 2  # codes past chunk_length before a mute split is looked for
SPLIT_THRESHOLD = 0.0  # TTS.run's `chunk_split_thershold`


def mute_similarity(embedding: np.ndarray, mute_code: int = MUTE_CODE) -> np.ndarray:
    """Cosine similarity [vocab] of every row of the T2S audio-code embedding to the mute code's row,
    as torch's `cosine_similarity` (norms clamped at 1e-8), in float32."""
    table = np.asarray(embedding, dtype=np.float32)
    mute = table[mute_code]
    norms = np.maximum(np.linalg.norm(table, axis=1), 1e-8) * max(float(np.linalg.norm(mute)), 1e-8)
    return (table @ mute / norms).astype(np.float32)


def mute_split(pending: list[int], similarity: np.ndarray, chunk_length: int,
               threshold: float = SPLIT_THRESHOLD) -> int | None:
    """How many of the `pending` codes the next chunk takes, or None for no split yet."""
    score = similarity[np.asarray(pending, dtype=np.int64)] - np.float32(threshold)
    score[score < 0] = -1
    score[:-1] = score[:-1] + score[1:]
    best = int(np.argmax(score))
    return best + 1 if score[best] >= 0 and best + 1 >= chunk_length else None


def chunk_codes(codes: Iterable[int], *, last_step: int, chunk_length: int = 16,
                similarity: np.ndarray | None = None, threshold: float = SPLIT_THRESHOLD,
                fixed_first: bool = False) -> Iterator[tuple[list[int] | None, bool]]:
    """(chunk, is_final) pairs from T2S `codes` as they are generated. `last_step` is the index of the
    step whose code ends decoding when no EOS comes first (`min(max_tokens - 1, early_stop_num)`):
    upstream looks for no split after that code, it goes to the final chunk. `fixed_first` (ours, for
    latency): the first chunk is cut at `chunk_length` codes without waiting for a pause."""
    if chunk_length < 1:
        raise ValueError(f"chunk_length must be at least 1, got {chunk_length}")
    pending: list[int] = []
    first = True
    for step, code in enumerate(codes):
        pending.append(int(code))
        if step >= last_step:
            break
        if similarity is not None and not (first and fixed_first):
            if len(pending) >= chunk_length + CHECK_CODES:
                take = mute_split(pending, similarity, chunk_length, threshold)
                if take is not None:
                    yield pending[:take], False
                    pending, first = pending[take:], False
        elif len(pending) >= chunk_length:
            yield pending, False
            pending, first = [], False
    yield (pending or None), True
