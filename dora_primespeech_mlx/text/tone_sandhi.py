"""Mandarin tone sandhi as GPT-SoVITS applies it (its PaddleSpeech-derived ToneSandhi).

Two stages: `pre_merge` joins jieba words so that sandhi sees the right units (不/一 with the next
word, reduplications, third-tone chains, 儿), then `modify_tones` rewrites a word's finals
("ang3" style, neutral tone 5) for 不, 一, neutral-tone words and third-tone chains.
Finals lists are edited in place and returned, as upstream does, so callers pass fresh lists.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from importlib import resources

Seg = list[list[str]]  # [[word, pos], ...]

# final particles read in the neutral tone
_NEUTRAL_PARTICLES = "吧呢哈啊呐噻嘛吖嗨呐哦哒额滴哩哟喽啰耶喔诶"
_SANDHI_PUNCTUATION = "：，；。？！“”‘’':,;.?!"


@lru_cache(maxsize=1)
def _word_lists() -> tuple[frozenset[str], frozenset[str]]:
    must, must_not = set(), set()
    text = resources.files(__package__).joinpath("data/zh_neutral_tone_words.txt").read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.startswith("+"):
            must.add(line[1:])
        elif line.startswith("-"):
            must_not.add(line[1:])
    return frozenset(must), frozenset(must_not)


def _retone(final: str, tone: str) -> str:
    return final[:-1] + tone


def _all_third(finals: list[str]) -> bool:
    return all(f[-1] == "3" for f in finals)


def _is_reduplication(word: str) -> bool:
    return len(word) == 2 and word[0] == word[1]


class ToneSandhi:
    """Tone sandhi rules; needs the finals of a word and a fine-grained word splitter.

    finals_of(word) -> ["ang3", ...] (pypinyin FINALS_TONE3, neutral tone 5), one per syllable;
    search_cut(word) -> jieba's cut_for_search pieces of the word.
    """

    def __init__(self, finals_of: Callable[[str], list[str]], search_cut: Callable[[str], list[str]]):
        self._finals_of = finals_of
        self._search_cut = search_cut
        self.must_neutral, self.must_not_neutral = _word_lists()

    # --- word merging ---------------------------------------------------------------------------

    def pre_merge(self, seg: list[tuple[str, str]]) -> Seg:
        """Merge jieba words before sandhi. The guarded steps keep their input when they fail
        (a syllable without a final), as upstream does."""
        out = self._merge_bu(seg)
        out = self._guarded(self._merge_yi, out)
        out = self._merge_reduplication(out)
        out = self._guarded(self._merge_third_tones, out)
        out = self._guarded(self._merge_third_tone_edges, out)
        return self._merge_er(out)

    @staticmethod
    def _guarded(step: Callable[[Seg], Seg], seg: Seg) -> Seg:
        try:
            return step(seg)
        except Exception:  # noqa: BLE001 - upstream ignores any failure of these steps
            return seg

    @staticmethod
    def _merge_bu(seg) -> Seg:
        # a lone 不 is glued to the following word; a final lone 不 is kept as an adverb
        out: Seg = []
        last = ""
        for word, pos in seg:
            if last == "不":
                word = last + word
            if word != "不":
                out.append([word, pos])
            last = word
        if last == "不":
            out.append([last, "d"])
        return out

    @staticmethod
    def _merge_yi(seg: Seg) -> Seg:
        # "听", "一", "听" -> "听一听" (verbs only), then a lone 一 absorbs the next word
        joined: Seg = []
        i = 0
        while i < len(seg):
            word, pos = seg[i]
            if i >= 1 and word == "一" and i + 1 < len(seg):
                prev = joined[-1] if joined else seg[i - 1]
                nxt = seg[i + 1]
                if prev[0] == nxt[0] and prev[1] == "v" and nxt[1] == "v":
                    joined[-1] = [prev[0] + "一" + nxt[0], prev[1]]
                    i += 2
                    continue
            joined.append([word, pos])
            i += 1
        out: Seg = []
        for word, pos in joined:
            if out and out[-1][0] == "一":
                out[-1][0] += word
            else:
                out.append([word, pos])
        return out

    @staticmethod
    def _merge_reduplication(seg: Seg) -> Seg:
        out: Seg = []
        for word, pos in seg:
            if out and word == out[-1][0]:
                out[-1][0] += word
            else:
                out.append([word, pos])
        return out

    def _merge_third_tones(self, seg: Seg) -> Seg:
        # two neighbouring words made only of third tones become one (at most 3 characters)
        finals = [self._finals_of(word) for word, _ in seg]
        return self._merge_pairs(seg, lambda i: _all_third(finals[i - 1]) and _all_third(finals[i]))

    def _merge_third_tone_edges(self, seg: Seg) -> Seg:
        # a third tone meeting a third tone across a word boundary joins the two words
        finals = [self._finals_of(word) for word, _ in seg]
        return self._merge_pairs(seg, lambda i: finals[i - 1][-1][-1] == "3" and finals[i][0][-1] == "3")

    @staticmethod
    def _merge_pairs(seg: Seg, joinable: Callable[[int], bool]) -> Seg:
        out: Seg = []
        merged = [False] * len(seg)
        for i, (word, pos) in enumerate(seg):
            if i >= 1 and joinable(i) and not merged[i - 1]:
                # a reduplication stays alone: it needs the neutral-tone rule
                if not _is_reduplication(seg[i - 1][0]) and len(seg[i - 1][0]) + len(word) <= 3:
                    out[-1][0] += word
                    merged[i] = True
                    continue
            out.append([word, pos])
        return out

    @staticmethod
    def _merge_er(seg: Seg) -> Seg:
        out: Seg = []
        for i, (word, pos) in enumerate(seg):
            if i >= 1 and word == "儿" and seg[i - 1][0] != "#":
                out[-1][0] += word
            else:
                out.append([word, pos])
        return out

    # --- tone changes ---------------------------------------------------------------------------

    def modify_tones(self, word: str, pos: str, finals: list[str]) -> list[str]:
        """Apply 不, 一, neutral-tone and third-tone sandhi to one word's finals."""
        finals = self._bu(word, finals)
        finals = self._yi(word, finals)
        finals = self._neutral(word, pos, finals)
        return self._third(word, finals)

    @staticmethod
    def _bu(word: str, finals: list[str]) -> list[str]:
        if len(word) == 3 and word[1] == "不":  # 看不懂
            finals[1] = _retone(finals[1], "5")
            return finals
        for i, ch in enumerate(word):
            if ch == "不" and i + 1 < len(word) and finals[i + 1][-1] == "4":  # 不怕 -> bu2
                finals[i] = _retone(finals[i], "2")
        return finals

    @staticmethod
    def _yi(word: str, finals: list[str]) -> list[str]:
        if "一" in word and all(ch.isnumeric() for ch in word if ch != "一"):
            return finals  # a digit in a number: 一零零
        if len(word) == 3 and word[1] == "一" and word[0] == word[-1]:
            finals[1] = _retone(finals[1], "5")  # 看一看
        elif word.startswith("第一"):
            finals[1] = _retone(finals[1], "1")
        else:
            for i, ch in enumerate(word):
                if ch == "一" and i + 1 < len(word):
                    if finals[i + 1][-1] == "4":
                        finals[i] = _retone(finals[i], "2")  # 一段
                    elif word[i + 1] not in _SANDHI_PUNCTUATION:
                        finals[i] = _retone(finals[i], "4")  # 一天
        return finals

    def _split(self, word: str) -> list[str]:
        # the shortest cut_for_search piece and the rest, in text order
        pieces = sorted(self._search_cut(word), key=len)
        first = pieces[0]
        if word.find(first) == 0:
            return [first, word[len(first):]]
        return [word[: -len(first)], first]

    def _neutral(self, word: str, pos: str, finals: list[str]) -> list[str]:
        for j in range(1, len(word)):
            # reduplicated nouns, verbs and adjectives: 奶奶, 试试, 旺旺
            if word[j] == word[j - 1] and pos[0] in "nva" and word not in self.must_not_neutral:
                finals[j] = _retone(finals[j], "5")
        ge = word.find("个")
        last = word[-1] if word else ""
        if last and last in _NEUTRAL_PARTICLES:
            finals[-1] = _retone(finals[-1], "5")
        elif last and last in "的地得":
            finals[-1] = _retone(finals[-1], "5")
        elif len(word) == 1 and word in "了着过" and pos in ("ul", "uz", "ug"):
            finals[-1] = _retone(finals[-1], "5")
        elif len(word) > 1 and last in "们子" and pos in ("r", "n") and word not in self.must_not_neutral:
            finals[-1] = _retone(finals[-1], "5")
        elif len(word) > 1 and last in "上下里" and pos in ("s", "l", "f"):  # 桌上, 地下, 家里
            finals[-1] = _retone(finals[-1], "5")
        elif len(word) > 1 and last in "来去" and word[-2] in "上下进出回过起开":  # 上来, 下去
            finals[-1] = _retone(finals[-1], "5")
        elif (ge >= 1 and (word[ge - 1].isnumeric() or word[ge - 1] in "几有两半多各整每做是")) or word == "个":
            finals[ge] = _retone(finals[ge], "5")  # 个 as a measure word
        elif word in self.must_neutral or word[-2:] in self.must_neutral:
            finals[-1] = _retone(finals[-1], "5")

        parts = self._split(word)
        groups = [finals[: len(parts[0])], finals[len(parts[0]):]]
        for i, part in enumerate(parts):
            if part in self.must_neutral or part[-2:] in self.must_neutral:
                groups[i][-1] = _retone(groups[i][-1], "5")
        return groups[0] + groups[1]

    def _third(self, word: str, finals: list[str]) -> list[str]:
        if len(word) == 2 and _all_third(finals):
            finals[0] = _retone(finals[0], "2")
        elif len(word) == 3:
            parts = self._split(word)
            if _all_third(finals):
                if len(parts[0]) == 2:  # 蒙古/包
                    finals[0] = _retone(finals[0], "2")
                    finals[1] = _retone(finals[1], "2")
                elif len(parts[0]) == 1:  # 纸/老虎
                    finals[1] = _retone(finals[1], "2")
            else:
                head, tail = finals[: len(parts[0])], finals[len(parts[0]):]
                if _all_third(head) and len(head) == 2:  # 所有/人
                    head[0] = _retone(head[0], "2")
                if _all_third(tail) and len(tail) == 2:
                    tail[0] = _retone(tail[0], "2")
                elif not _all_third(tail) and tail[0][-1] == "3" and head[-1][-1] == "3":  # 好/喜欢
                    head[-1] = _retone(head[-1], "2")
                finals = head + tail
        elif len(word) == 4:  # idioms: two halves of two syllables
            halves = [finals[:2], finals[2:]]
            for half in halves:
                if _all_third(half):
                    half[0] = _retone(half[0], "2")
            finals = halves[0] + halves[1]
        return finals
