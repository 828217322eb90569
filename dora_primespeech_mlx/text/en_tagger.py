"""Part-of-speech tags for English homographs ("read", "record", "use", ...).

Upstream asks nltk's averaged-perceptron tagger, whose model is a separate nltk data download.
We never download: when the model files are already on disk (nltk >= 3.9 JSON layout
`taggers/averaged_perceptron_tagger_eng/`, which g2p_en users normally have in ~/nltk_data), our
own implementation of that tagger reads them and reproduces nltk's tags exactly, without importing
nltk. Otherwise a small context rule tagger decides; it only has to tell verbs from nouns and
adjectives next to homographs, and its choices are logged once.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

MODEL_NAME = "averaged_perceptron_tagger_eng"


def default_model_dirs() -> list[Path]:
    """Where nltk keeps data when no NLTK_DATA is set (the node may add that folder itself)."""
    roots = [Path.home() / "nltk_data", Path(sys.prefix) / "nltk_data", Path(sys.prefix) / "share" / "nltk_data",
             Path(sys.prefix) / "lib" / "nltk_data", Path("/usr/share/nltk_data"),
             Path("/usr/local/share/nltk_data"), Path("/usr/lib/nltk_data"), Path("/usr/local/lib/nltk_data")]
    return [root / "taggers" / MODEL_NAME for root in roots]


def find_model_dir(extra: Sequence[str | Path] = ()) -> Path | None:
    """The first folder holding the tagger's three JSON files, searching `extra` first."""
    candidates = [Path(p) for p in extra] + default_model_dirs()
    for folder in candidates:
        folder = folder / "taggers" / MODEL_NAME if (folder / "taggers").is_dir() else folder
        if all((folder / f"{MODEL_NAME}.{part}.json").is_file() for part in ("weights", "tagdict", "classes")):
            return folder
    return None


class PerceptronTagger:
    """Greedy averaged-perceptron tagger reading nltk's JSON model (same features, same scores)."""

    def __init__(self, model_dir: str | Path):
        folder = Path(model_dir)

        def part(name: str):
            with open(folder / f"{MODEL_NAME}.{name}.json", encoding="utf-8") as f:
                return json.load(f)

        self.weights: dict[str, dict[str, float]] = part("weights")
        self.tagdict: dict[str, str] = part("tagdict")
        self.classes = sorted(set(part("classes")))

    @staticmethod
    def _context_form(word: str) -> str:
        if "-" in word and word[0] != "-":
            return "!HYPHEN"
        if word.isdigit() and len(word) == 4:
            return "!YEAR"
        if word and word[0].isdigit():
            return "!DIGITS"
        return word.lower()

    def _best(self, features: list[str]) -> str:
        scores: dict[str, float] = {}
        # Features are summed in nltk's order (a repeated feature counts twice) so the floating-point
        # totals, and hence ties and near-ties, come out identical.
        counts: dict[str, int] = {}
        for feature in features:
            counts[feature] = counts.get(feature, 0) + 1
        for feature, count in counts.items():
            weights = self.weights.get(feature)
            if weights is None:
                continue
            for label, weight in weights.items():
                scores[label] = scores.get(label, 0.0) + count * weight
        return max(self.classes, key=lambda label: (scores.get(label, 0.0), label))

    def __call__(self, tokens: Sequence[str]) -> list[tuple[str, str]]:
        context = ["-START-", "-START2-"] + [self._context_form(w) for w in tokens] + ["-END-", "-END2-"]
        prev, prev2 = "-START-", "-START2-"
        out = []
        for i, word in enumerate(tokens):
            tag = self.tagdict.get(word)
            if not tag:
                c = i + 2
                tag = self._best([
                    "bias",
                    "i suffix " + word[-3:],
                    "i pref1 " + (word[0] if word else ""),
                    "i-1 tag " + prev,
                    "i-2 tag " + prev2,
                    f"i tag+i-2 tag {prev} {prev2}",
                    "i word " + context[c],
                    f"i-1 tag+i word {prev} {context[c]}",
                    "i-1 word " + context[c - 1],
                    "i-1 suffix " + context[c - 1][-3:],
                    "i-2 word " + context[c - 2],
                    "i+1 word " + context[c + 1],
                    "i+1 suffix " + context[c + 1][-3:],
                    "i+2 word " + context[c + 2],
                ])
            out.append((word, tag))
            prev2, prev = prev, tag
        return out


# Context cues for the fallback. Penn tags are what the homograph table is keyed on: a tag starting
# with the table's tag picks the first reading (mostly the verb), anything else the second.
_MODALS = {"will", "would", "can", "could", "shall", "should", "may", "might", "must", "to", "do", "does",
           "did", "don't", "doesn't", "didn't", "won't", "can't", "cannot", "let's", "please", "not", "never"}
_SUBJECTS = {"i", "you", "we", "they", "he", "she", "it", "who", "people"}
_PERFECT = {"have", "has", "had", "having", "was", "were", "been", "be", "being", "is", "are", "am", "get",
            "gets", "got", "getting"}
_NOUN_CUES = {"the", "a", "an", "this", "that", "these", "those", "my", "your", "his", "her", "its", "our",
              "their", "of", "in", "on", "at", "for", "with", "from", "by", "some", "any", "no", "every",
              "each", "another", "such", "new", "first", "last", "next", "good", "great", "big", "small"}


def rule_tagger(tokens: Sequence[str]) -> list[tuple[str, str]]:
    """Tags from the neighbouring words: before "of" a noun, "close to" an adverb, sentence-initial an
    imperative verb, after "have"/"be" forms a past participle, after modals/"to"/subject pronouns a
    verb, after determiners/prepositions a noun (an adjective before another word), otherwise a
    noun. Punctuation is tagged as itself."""
    out = []
    for i, word in enumerate(tokens):
        prev = tokens[i - 1].lower() if i > 0 else ""
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        lower = word.lower()
        if not any(c.isalpha() for c in word):
            tag = word
        elif nxt.lower() == "of":
            tag = "NN"
        elif lower == "close" and nxt.lower() == "to":
            tag = "RB"
        elif i == 0 or not any(c.isalpha() for c in prev):
            tag = "VB"  # sentence-initial: imperative
        elif prev in _PERFECT:
            tag = "VBN"
        elif prev in _MODALS:
            tag = "VB"
        elif prev in _SUBJECTS:
            tag = "VBZ" if lower.endswith("s") and prev in {"he", "she", "it", "who"} else "VBP"
        elif prev in _NOUN_CUES:
            tag = "JJ" if nxt[:1].isalpha() and lower.endswith(("ed", "ate", "ex", "ct", "ent")) else "NN"
        else:
            tag = "NN"
        out.append((word, tag))
    return out


_cached: dict[str, object] = {}


def get_tagger(model_dirs: Sequence[str | Path] = ()):
    """The perceptron tagger when its model is on disk, else `rule_tagger` (decided once, logged)."""
    key = "|".join(str(p) for p in model_dirs)
    if key not in _cached:
        folder = find_model_dir(model_dirs)
        if folder is not None:
            log.info("English homographs: nltk averaged-perceptron model from %s", folder)
            _cached[key] = PerceptronTagger(folder)
        else:
            log.info("English homographs: nltk tagger data not found (%s); using context rules",
                     MODEL_NAME)
            _cached[key] = rule_tagger
    return _cached[key]
