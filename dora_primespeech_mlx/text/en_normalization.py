"""English text normalisation as GPT-SoVITS v2 does it (numbers, ordinals, money, times, units, maths).

The rules, their order and their quirks follow upstream's `text/en_normalization/expend.py` so the
phones match what the models were trained on: e.g. a negative sign eats the whitespace before it
("is -5" -> "isnegative five", later split again by word segmentation), "km/h" reads as "km" + "/h",
and a comma survives inside spelled-out numbers ("twelve thousand, three hundred").
Numbers are spelled with `inflect`.
"""

from __future__ import annotations

import importlib
import re
import sys
import threading
import types
import unicodedata
from functools import lru_cache

_UNITS = {
    "m": ("meter", "meters"),
    "km": ("kilometer", "kilometers"),
    "km/h": ("kilometer per hour", "kilometers per hour"),
    "ft": ("feet", "feet"),
    "L": ("liter", "liters"),
    "tbsp": ("tablespoon", "tablespoons"),
    "tsp": ("teaspoon", "teaspoons"),
    "h": ("hour", "hours"),
    "min": ("minute", "minutes"),
    "s": ("second", "seconds"),
    "°C": ("degree celsius", "degrees celsius"),
    "°F": ("degree fahrenheit", "degrees fahrenheit"),
}
_ARITHMETIC = {"+": " plus ", "-": " minus ", "×": " times ", "÷": " divided by ", "=": " Equals "}

# One operand of a spaced arithmetic expression: a (signed, decimal) number, a bare decimal or a
# single letter, each optionally followed by superscripts.
_SUP = "[⁰¹²³⁴⁵⁶⁷⁸⁹ˣʸⁿ]*"
_OPERAND = rf"((-?)((\d+)(\.\d+)?{_SUP})|(\.\d+{_SUP})|([A-Za-z]{_SUP}))"
_ARITHMETIC_RE = re.compile(_OPERAND + r"\s+([\+\-\×÷=])\s+" + _OPERAND)
_NEGATIVE_RE = re.compile(r"(?:^|\s+)(-)(\d+)")
_LIST_NUMBER_RE = re.compile(r"\b([0-9]+)\. ")
_GROUPED_NUMBER_RE = re.compile(r"([0-9][0-9\,]+[0-9])")
_CLOCK_RE = re.compile(r"\b([01]?[0-9]|2[0-3]):([0-5][0-9])\b")
_UNIT_RE = re.compile(r"\b([0-9]+(\.[0-9]+)?(m|km|km/h|ft|L|tbsp|tsp|h|min|s|°C|°F))\b")
_POUNDS_BEFORE_RE = re.compile(r"£([0-9\.\,]*[0-9]+)")
_POUNDS_AFTER_RE = re.compile(r"([0-9\.\,]*[0-9]+)£")
_DOLLARS_BEFORE_RE = re.compile(r"\$([0-9\.\,]*[0-9]+)")
_DOLLARS_AFTER_RE = re.compile(r"([(0-9\.\,]*[0-9]+)\$")
_DECIMAL_RE = re.compile(r"([0-9]+\.\s*[0-9]+)")
_FRACTION_RE = re.compile(r"([0-9]+/[0-9]+)")
_ORDINAL_RE = re.compile(r"[0-9]+(st|nd|rd|th)")
_DIGITS_RE = re.compile(r"[0-9]+")
_UNSPEAKABLE_RE = re.compile(r"[^ A-Za-z'.,?!-]")
_IE_RE = re.compile(r"(?i)i\.e\.")
_EG_RE = re.compile(r"(?i)e\.g\.")
_INNER_CAPITAL_RE = re.compile(r"(?<!^)(?<![\s])([A-Z])")

_inflect_lock = threading.Lock()


@lru_cache(maxsize=1)
def _inflect():
    """An inflect engine. inflect decorates every method with typeguard's `typechecked`, which
    costs about a second at import and slows each call; upstream imports it with typeguard
    replaced by a no-op and so do we (only when typeguard is not already loaded)."""
    with _inflect_lock:
        stubbed = "typeguard" not in sys.modules
        if stubbed:
            stub = types.ModuleType("typeguard")
            stub.typechecked = lambda target=None, **_: (lambda f: f) if target is None else target
            sys.modules["typeguard"] = stub
        try:
            module = importlib.import_module("inflect")
        finally:
            if stubbed:
                sys.modules.pop("typeguard", None)
        return module.engine()


def _cardinal(number, **options) -> str:
    engine = _inflect()
    try:
        return engine.number_to_words(number, **options)
    except Exception:  # inflect gives up past decillions (upstream then fails): read digit by digit
        return " ".join(engine.number_to_words(d) for d in str(number) if d.isdigit())


def _list_number(m: re.Match) -> str:
    return _inflect().ordinal(m.group(1)) + ", "


def _arithmetic(m: re.Match) -> str:
    return m.group(1) + _ARITHMETIC[m.group(8)] + m.group(9)


def _negative(m: re.Match) -> str:
    return ("negative " if m.group(1) else "") + m.group(2)


def _clock(m: re.Match) -> str:
    hours, minutes = int(m.group(1)), int(m.group(2))
    period = "a.m." if hours < 12 else "p.m."
    if hours > 12:
        hours -= 12
    if minutes == 0:
        return f"{_cardinal(hours)} o'clock {period}"
    return f"{_cardinal(hours)} {_cardinal(minutes)} {period}"


def _unit(m: re.Match) -> str:
    whole, decimals, unit = m.group(1), m.group(2), m.group(3)
    value = int(whole.replace(unit, "").replace(".", ""))
    singular = decimals is None and value == 1
    return whole.replace(unit, " " + _UNITS[unit][0 if singular else 1])


def _money(amount: str, major: tuple[str, str], minor: tuple[str, str]) -> str:
    parts = amount.split(".")
    if len(parts) > 2:
        return f"{amount} {major[1]}"
    try:
        whole = int(parts[0]) if parts[0] else 0
        cents = int(parts[1].ljust(2, "0")) if len(parts) > 1 and parts[1] else 0
    except ValueError:  # stray commas such as "$,5" (upstream fails): leave the digits to later rules
        return f"{amount} {major[1]}"
    major_word = major[0] if whole == 1 else major[1]
    minor_word = minor[0] if cents == 1 else minor[1]
    if whole and cents:
        return f"{whole} {major_word} and {cents} {minor_word}"
    if whole:
        return f"{whole} {major_word}"
    if cents:
        return f"{cents} {minor_word}"
    return f"zero {major[1]}"


def _pounds(m: re.Match) -> str:
    return _money(m.group(1), ("pound", "pounds"), ("penny", "pence"))


def _dollars(m: re.Match) -> str:
    return _money(m.group(1), ("dollar", "dollars"), ("cent", "cents"))


def _decimal(m: re.Match) -> str:
    whole, fraction = m.group(1).split(".")
    # the fraction keeps any whitespace after the point, each character read on its own
    return whole + " point " + " ".join(fraction)


def _fraction(m: re.Match) -> str:
    numerator, denominator = (int(x) for x in m.group(0).split("/"))
    top = _cardinal(numerator)
    if denominator == 1:
        return top
    if denominator == 2:
        return f"{top} {'half' if numerator == 1 else 'halves'}"
    bottom = _inflect().ordinal(_cardinal(denominator))
    return f"{top} {bottom}{'s' if numerator > 1 else ''}"


def _ordinal(m: re.Match) -> str:
    return _cardinal(m.group(0))


def _number(m: re.Match) -> str:
    value = int(m.group(0))
    if 1000 < value < 3000:  # read like a year
        if value == 2000:
            return "two thousand"
        if 2000 < value < 2010:
            return "two thousand " + _cardinal(value % 100)
        if value % 100 == 0:
            return _cardinal(value // 100) + " hundred"
        return _cardinal(value, andword="", zero="oh", group=2).replace(", ", " ")
    return _cardinal(value, andword="")


def normalize(text: str) -> str:
    """Spell out numbers, money, times, units and maths; keep only ` A-Za-z'.,?!-`."""
    text = _LIST_NUMBER_RE.sub(_list_number, text)
    while _ARITHMETIC_RE.search(text):
        text = _ARITHMETIC_RE.sub(_arithmetic, text)
    text = _NEGATIVE_RE.sub(_negative, text)
    text = _GROUPED_NUMBER_RE.sub(lambda m: m.group(1).replace(",", ""), text)
    text = _CLOCK_RE.sub(_clock, text)
    text = _UNIT_RE.sub(_unit, text)
    text = _POUNDS_BEFORE_RE.sub(_pounds, text)
    text = _POUNDS_AFTER_RE.sub(_pounds, text)
    text = _DOLLARS_BEFORE_RE.sub(_dollars, text)
    text = _DOLLARS_AFTER_RE.sub(_dollars, text)
    text = _DECIMAL_RE.sub(_decimal, text)
    text = _FRACTION_RE.sub(_fraction, text)
    text = _ORDINAL_RE.sub(_ordinal, text)
    text = _DIGITS_RE.sub(_number, text)
    text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    text = text.replace("%", " percent")
    text = _UNSPEAKABLE_RE.sub("", text)
    text = _IE_RE.sub("that is", text)
    text = _EG_RE.sub("for example", text)
    # split runs of capitals so acronyms are read letter by letter ("GPU" -> "G P U")
    return _INNER_CAPITAL_RE.sub(r" \1", text)
