"""Chinese text normalisation as GPT-SoVITS does it (its PaddleSpeech-derived TextNormalizer).

Numbers, dates, times, ranges, fractions, percentages, temperatures, phone numbers, units, maths
signs and Greek letters are spelled out in Chinese characters. The rules, their order and their
quirks follow upstream exactly, because the reading chosen here decides the phonemes the models
were trained on; where upstream has an odd behaviour it is kept and marked "(upstream quirk)".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from importlib import resources

_DIGITS = "零一二三四五六七八九"
# Powers of ten that have their own character; "亿" covers everything above 10^8.
_UNITS = ((8, "亿"), (4, "万"), (3, "千"), (2, "百"), (1, "十"))


@lru_cache(maxsize=1)
def _t2s_table() -> dict[int, str]:
    table: dict[int, str] = {}
    text = resources.files(__package__).joinpath("data/zh_t2s.txt").read_text(encoding="utf-8")
    for line in text.splitlines():
        if line and not line.startswith("#"):
            trad, simp = line.split("\t")
            table[ord(trad)] = simp
    return table


def to_simplified(text: str) -> str:
    """Traditional -> simplified characters, one character at a time (upstream's table)."""
    return text.translate(_t2s_table())


def _digit(ch: str) -> str:
    return _DIGITS[int(ch)]


def read_digits(digits: str, alt_one: bool = False) -> str:
    """Read a digit string digit by digit ("110" -> "一一零"; alt_one: "幺幺零")."""
    out = "".join(_digit(ch) for ch in digits)
    return out.replace("一", "幺") if alt_one else out


def _cardinal_parts(digits: str) -> list[str]:
    body = digits.lstrip("0")
    if not body:
        return []
    if len(body) == 1:
        # a zero is spoken when leading zeros were dropped ("05" inside "105" -> "零五")
        return ["零", _digit(body)] if len(body) < len(digits) else [_digit(body)]
    power, unit = next((p, u) for p, u in _UNITS if p < len(body))
    return _cardinal_parts(digits[:-power]) + [unit] + _cardinal_parts(digits[-power:])


def read_cardinal(digits: str) -> str:
    """Read an integer digit string as a cardinal number ("105" -> "一百零五", "12" -> "十二")."""
    if not digits:
        return ""
    digits = digits.lstrip("0")
    if not digits:
        return "零"
    parts = _cardinal_parts(digits)
    if len(parts) >= 2 and parts[0] == "一" and parts[1] == "十":
        parts = parts[1:]
    return "".join(parts)


def read_number(number: str) -> str:
    """Read "12", "3.5" or ".5" as a number; trailing decimal zeros collapse to one (upstream quirk)."""
    pieces = number.split(".")
    if len(pieces) > 2:
        raise ValueError(f"the number '{number}' has more than one decimal point")
    integer, decimal = (pieces[0], "") if len(pieces) == 1 else pieces
    out = read_cardinal(integer)
    decimal = decimal.rstrip("0") + "0" if decimal.endswith("0") else decimal.rstrip("0")
    if decimal:
        out = (out or "零") + "点" + read_digits(decimal)
    return out


def _sign(sign: str | None, word: str = "负") -> str:
    return word if sign else ""


# --- dates and times -------------------------------------------------------------------------

_RE_DATE = re.compile(r"(\d{4}|\d{2})年((0?[1-9]|1[0-2])月)?(((0?[1-9])|((1|2)[0-9])|30|31)([日号]))?")
_RE_DATE2 = re.compile(r"(\d{4})([- /.])(0[1-9]|1[012])\2(0[1-9]|[12][0-9]|3[01])")
_TIME = r"([0-1]?[0-9]|2[0-3]):([0-5][0-9])(:([0-5][0-9]))?"
_RE_TIME_RANGE = re.compile(_TIME + r"(~|-)" + _TIME)
_RE_TIME = re.compile(_TIME)


def _date(m: re.Match) -> str:
    year, month, day = m.group(1), m.group(3), m.group(5)
    out = f"{read_digits(year)}年"
    if month:
        out += f"{read_cardinal(month)}月"
    if day:
        out += f"{read_cardinal(day)}{m.group(9)}"
    return out


def _date2(m: re.Match) -> str:
    return f"{read_digits(m.group(1))}年{read_cardinal(m.group(3))}月{read_cardinal(m.group(4))}日"


def _clock_part(value: str) -> str:
    # minutes and seconds keep a spoken leading zero: "05" -> "零五"
    out = read_number(value.lstrip("0"))
    return "零" + out if value.startswith("0") else out


def _clock(hour: str, minute: str, second: str | None, half_from: str) -> str:
    out = f"{read_number(hour)}点"
    if minute.lstrip("0"):
        out += "半" if int(half_from) == 30 else f"{_clock_part(minute)}分"
    if second and second.lstrip("0"):
        out += f"{_clock_part(second)}秒"
    return out


def _time(m: re.Match) -> str:
    return _clock(m.group(1), m.group(2), m.group(4), m.group(2))


def _time_range(m: re.Match) -> str:
    # the second time says "半" when the FIRST minute is 30 (upstream quirk)
    first = _clock(m.group(1), m.group(2), m.group(4), m.group(2))
    return first + "至" + _clock(m.group(6), m.group(7), m.group(9), m.group(2))


# --- numbers -----------------------------------------------------------------------------------

_NUM = r"((-?)((\d+)(\.\d+)?)|(\.(\d+)))"
_RANGE_UNITS = r"(%|°C|℃|度|摄氏度|cm2|cm²|cm3|cm³|cm|db|ds|kg|km|m2|m²|m³|m3|ml|m|mm|s)"
_RE_TO_RANGE = re.compile(_NUM + _RANGE_UNITS + r"[~]" + _NUM + _RANGE_UNITS)
_RE_TEMPERATURE = re.compile(r"(-?)(\d+(\.\d+)?)(°C|℃|度|摄氏度)")
_MEASURES = (
    ("cm2", "平方厘米"), ("cm²", "平方厘米"), ("cm3", "立方厘米"), ("cm³", "立方厘米"), ("cm", "厘米"),
    ("db", "分贝"), ("ds", "毫秒"), ("kg", "千克"), ("km", "千米"), ("m2", "平方米"), ("m²", "平方米"),
    ("m³", "立方米"), ("m3", "立方米"), ("ml", "毫升"), ("m", "米"), ("mm", "毫米"), ("s", "秒"),
)  # fmt: skip
_SUP = "⁰¹²³⁴⁵⁶⁷⁸⁹ˣʸⁿ"
_SUP_PLAIN = dict(zip(_SUP, "0123456789xyn", strict=True))
_OPERAND = rf"((-?)((\d+)(\.\d+)?[{_SUP}]*)|(\.\d+[{_SUP}]*)|([A-Za-z][{_SUP}]*))"
_RE_ASMD = re.compile(_OPERAND + r"([\+\-\×÷=])" + _OPERAND)
_ASMD_WORDS = {"+": "加", "-": "减", "×": "乘", "÷": "除", "=": "等于"}
_RE_POWER = re.compile(rf"[{_SUP}]+")
_RE_FRAC = re.compile(r"(-?)(\d+)/(\d+)")
_RE_PERCENTAGE = re.compile(r"(-?)(\d+(\.\d+)?)%")
_RE_MOBILE = re.compile(r"(?<!\d)((\+?86 ?)?1([38]\d|5[0-35-9]|7[678]|9[89])\d{8})(?!\d)")
_RE_TELEPHONE = re.compile(r"(?<!\d)((0(10|2[1-3]|[3-9]\d{2})-?)?[1-9]\d{6,7})(?!\d)")
_RE_NATIONAL_NUMBER = re.compile(r"(400)(-)?\d{3}(-)?\d{4}")
_RE_RANGE = re.compile(
    r"(?<![\d\+\-\×÷=])((-?)((\d+)(\.\d+)?))[-~]((-?)((\d+)(\.\d+)?))(?![\d\+\-\×÷=])"
)
_RE_NEGATIVE = re.compile(r"(-)(\d+)")
_RE_VERSION = re.compile(r"((\d+)(\.\d+)(\.\d+)?(\.\d+)+)")
_RE_DECIMAL = re.compile(r"(-?)((\d+)(\.\d+))|(\.(\d+))")
_RE_NUMBER = re.compile(r"(-?)((\d+)(\.\d+)?)|(\.(\d+))")
_RE_SERIAL = re.compile(r"\d{3}\d*")
# measure words after which a number is read as a count ("2个" -> "两个"); upstream's list verbatim
_QUANTIFIERS = (
    "(处|台|架|枚|趟|幅|平|方|堵|间|床|株|批|项|例|列|篇|栋|注|亩|封|艘|把|目|套|段|人|所|朵|匹|张|座|回|场|尾|条|个|"
    "首|阙|阵|网|炮|顶|丘|棵|只|支|袭|辆|挑|担|颗|壳|窠|曲|墙|群|腔|砣|座|客|贯|扎|捆|刀|令|打|手|罗|坡|山|岭|江|溪|"
    "钟|队|单|双|对|出|口|头|脚|板|跳|枝|件|贴|针|线|管|名|位|身|堂|课|本|页|家|户|层|丝|毫|厘|分|钱|两|斤|担|铢|石|"
    "钧|锱|忽|(千|毫|微)克|毫|厘|(公)分|分|寸|尺|丈|里|寻|常|铺|程|(千|分|厘|毫|微)米|米|撮|勺|合|升|斗|石|盘|碗|碟|"
    "叠|桶|笼|盆|盒|杯|钟|斛|锅|簋|篮|盘|桶|罐|瓶|壶|卮|盏|箩|箱|煲|啖|袋|钵|年|月|日|季|刻|时|周|天|秒|分|小时|旬|"
    "纪|岁|世|更|夜|春|夏|秋|冬|代|伏|辈|丸|泡|粒|颗|幢|堆|条|根|支|道|面|片|张|颗|块|元|(亿|千万|百万|万|千|百)|"
    "(亿|千万|百万|万|千|百|美|)元|(亿|千万|百万|万|千|百|十|)吨|(亿|千万|百万|万|千|百|)块|角|毛|分)"
)
_RE_COUNT = re.compile(r"(\d+)([多余几\+])?" + _QUANTIFIERS)


def _to_range(m: re.Match) -> str:
    return m.group(0).replace("~", "至")


def _temperature(m: re.Match) -> str:
    # upstream picks the unit word from the decimal-part group, so it is always "度" (upstream quirk)
    return f"{_sign(m.group(1), '零下')}{read_number(m.group(2))}度"


def _measures(sentence: str) -> str:
    # plain substring replacement in this order, even inside Latin words (upstream quirk)
    for symbol, word in _MEASURES:
        sentence = sentence.replace(symbol, word)
    return sentence


def _asmd(m: re.Match) -> str:
    return m.group(1) + _ASMD_WORDS[m.group(8)] + m.group(9)


def _power(m: re.Match) -> str:
    return "的" + "".join(_SUP_PLAIN[ch] for ch in m.group(0)) + "次方"


def _frac(m: re.Match) -> str:
    return f"{_sign(m.group(1))}{read_number(m.group(3))}分之{read_number(m.group(2))}"


def _percentage(m: re.Match) -> str:
    return f"{_sign(m.group(1))}百分之{read_number(m.group(2))}"


def _mobile(m: re.Match) -> str:
    return "，".join(read_digits(part, alt_one=True) for part in m.group(0).strip("+").split())


def _telephone(m: re.Match) -> str:
    return "，".join(read_digits(part, alt_one=True) for part in m.group(0).split("-"))


def _number(m: re.Match) -> str:
    if m.group(5):
        return read_number(m.group(5))
    return _sign(m.group(1)) + read_number(m.group(2))


def _range(m: re.Match) -> str:
    return _RE_NUMBER.sub(_number, m.group(1)) + "到" + _RE_NUMBER.sub(_number, m.group(6))


def _negative(m: re.Match) -> str:
    return "负" + read_number(m.group(2))


def _version(m: re.Match) -> str:
    return "".join("点" if ch == "." else read_number(ch) for ch in m.group(1))


def _count(m: re.Match) -> str:
    number = read_number(m.group(1))
    more = "多" if m.group(2) == "+" else (m.group(2) or "")
    return ("两" if number == "二" else number) + more + m.group(3)


def _serial(m: re.Match) -> str:
    return read_digits(m.group(0), alt_one=True)


def _sub(pattern: re.Pattern, fn: Callable[[re.Match], str]) -> Callable[[str], str]:
    return lambda s: pattern.sub(fn, s)


def _asmd_all(sentence: str) -> str:
    while _RE_ASMD.search(sentence):
        sentence = _RE_ASMD.sub(_asmd, sentence)
    return sentence


# Fullwidth Latin letters and digits -> ASCII. Upstream also lists U+3000 -> space, but with a str
# key that str.translate never uses, so ideographic spaces survive (upstream quirk).
_FULLWIDTH = {ord(ch) + 0xFEE0: ord(ch) for ch in "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"}

_RULES: tuple[Callable[[str], str], ...] = (
    _sub(_RE_DATE, _date),
    _sub(_RE_DATE2, _date2),
    _sub(_RE_TIME_RANGE, _time_range),
    _sub(_RE_TIME, _time),
    _sub(_RE_TO_RANGE, _to_range),
    _sub(_RE_TEMPERATURE, _temperature),
    _measures,
    _asmd_all,
    _sub(_RE_POWER, _power),
    _sub(_RE_FRAC, _frac),
    _sub(_RE_PERCENTAGE, _percentage),
    _sub(_RE_MOBILE, _mobile),
    _sub(_RE_TELEPHONE, _telephone),
    _sub(_RE_NATIONAL_NUMBER, _telephone),
    _sub(_RE_RANGE, _range),
    _sub(_RE_NEGATIVE, _negative),
    _sub(_RE_VERSION, _version),
    _sub(_RE_DECIMAL, _number),
    _sub(_RE_COUNT, _count),
    _sub(_RE_SERIAL, _serial),
    _sub(_RE_NUMBER, _number),
)

# --- symbols left after the numbers --------------------------------------------------------------

_SYMBOL_WORDS = (
    ("/", "每"),
    ("①", "一"), ("②", "二"), ("③", "三"), ("④", "四"), ("⑤", "五"),
    ("⑥", "六"), ("⑦", "七"), ("⑧", "八"), ("⑨", "九"), ("⑩", "十"),
    ("α", "阿尔法"), ("β", "贝塔"), ("γ", "伽玛"), ("Γ", "伽玛"), ("δ", "德尔塔"), ("Δ", "德尔塔"),
    ("ε", "艾普西龙"), ("ζ", "捷塔"), ("η", "依塔"), ("θ", "西塔"), ("Θ", "西塔"), ("ι", "艾欧塔"),
    ("κ", "喀帕"), ("λ", "拉姆达"), ("Λ", "拉姆达"), ("μ", "缪"), ("ν", "拗"), ("ξ", "克西"), ("Ξ", "克西"),
    ("ο", "欧米克伦"), ("π", "派"), ("Π", "派"), ("ρ", "肉"), ("ς", "西格玛"), ("Σ", "西格玛"),
    ("σ", "西格玛"), ("τ", "套"), ("υ", "宇普西龙"), ("φ", "服艾"), ("Φ", "服艾"), ("χ", "器"),
    ("ψ", "普赛"), ("Ψ", "普赛"), ("ω", "欧米伽"), ("Ω", "欧米伽"),
    ("+", "加"), ("-", "减"), ("×", "乘"), ("÷", "除"), ("=", "等"),
)  # fmt: skip
SPELLED_SYMBOLS = frozenset(symbol for symbol, _ in _SYMBOL_WORDS)  # read as words (Greek letters, ①..⑩, signs)
_RE_DROP_LATE = re.compile(r"[-——《》【】<=>{}()（）#&@“”^_|\\]")
_RE_DROP_EARLY = re.compile(r"[——《》【】<>{}()（）#&@“”^_|\\]")
_RE_SENTENCE_END = re.compile(r"([：、，；。？！,;?!][”’]?)")


def split_sentences(text: str) -> list[str]:
    """Upstream's sentence split: spaces and bracket/quote symbols dropped, split after , ; : ? ! etc."""
    text = _RE_DROP_EARLY.sub("", text.replace(" ", ""))
    text = _RE_SENTENCE_END.sub(r"\1\n", text).strip()
    return [s.strip() for s in re.split(r"\n+", text)]


def normalize_sentence(sentence: str) -> str:
    """Spell out the numbers, units and symbols of one sentence."""
    sentence = to_simplified(sentence).translate(_FULLWIDTH)
    for rule in _RULES:
        sentence = rule(sentence)
    for symbol, word in _SYMBOL_WORDS:
        sentence = sentence.replace(symbol, word)
    return _RE_DROP_LATE.sub("", sentence)


def normalize(text: str) -> list[str]:
    """Split `text` into sentences and normalise each (upstream TextNormalizer.normalize)."""
    return [normalize_sentence(s) for s in split_sentences(text)]
