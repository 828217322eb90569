"""Text frontend: sentences per second and cold start, ours vs upstream GPT-SoVITS.

For a ~200-character paragraph in each language (Chinese, English, Japanese, Korean, Cantonese): cut
with cut5 (upstream's segment rules), then clean_text per segment, repeated. Upstream runs in a child process (its `text` package must
not share a process with ours while timing): Chinese through its v2 module with g2pW off (the
pypinyin path, as ours without a g2pW model), English through `clean_text(t, "en", "v2")` with
our homograph tagger in place of nltk's (whose model is not installed offline), Japanese, Korean and
Cantonese through `clean_text(t, lang, "v2")` (g2pK2's cmudict emptied, as in oracle.text_cjk: upstream
would download nltk's on its first English lookup). Cold start = the
first paragraph in a fresh interpreter, from importing the text frontend to the last phone
(the `dora_primespeech_mlx` package itself already imported, as the engine has it).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

PARAGRAPHS = {
    "zh": ("今天是2024年3月15日，天气晴朗，气温在15到25摄氏度之间。早上八点半，我和同事一起去公司参加了一个重要的会议，"
           "会议持续了大约两个小时。会上，经理介绍了第一季度的销售情况：总收入达到了1.2亿元，同比增长了百分之十五。"
           "大家都觉得这个成绩来之不易。中午我们在附近的餐厅吃了饭，下午又讨论了新产品的设计方案，一直忙到晚上七点才下班。"
           "回家的路上，我给妈妈打了个电话，告诉她周末会回去看她。"),
    "en": ("On March 15, 2024, the weather was clear. At 8:30 my colleagues and I attended a meeting that lasted "
           "two hours. The manager said revenue reached $1.2 million, up 15% from last year. We will present "
           "it tomorrow."),
    "ja": ("今日は2024年3月15日です。天気は晴れで、気温は15度から25度くらいでした。朝8時半に同僚と会社の会議に出ました。"
           "会議は約2時間続きました。部長は第1四半期の売上が前年より15%増えたと話しました。昼は近くのレストランでラーメンを"
           "食べて、午後は新製品のデザインについて話し合いました。帰り道、母に電話をして週末に帰ると伝えました。"),
    "ko": ("오늘은 2024년 3월 15일입니다. 날씨가 맑고 기온은 15도에서 25도 사이였습니다. 아침 8시 반에 동료들과 회사 회의에 "
           "참석했습니다. 회의는 약 두 시간 동안 계속되었습니다. 부장님은 1분기 매출이 작년보다 15% 늘었다고 말했습니다. "
           "점심에는 근처 식당에서 비빔밥을 먹고, 오후에는 새 제품 디자인에 대해 이야기했습니다."),
    "yue": ("今日係2024年3月15號，天氣好好，氣溫喺15度到25度之間。朝早八點半我同同事去公司開會，個會開咗大概兩個鐘。"
            "經理話第一季嘅營業額升咗百分之十五，大家都好開心。晏晝我哋喺附近間茶餐廳食飯，下晝再傾新產品嘅設計，"
            "一直忙到夜晚七點先收工。返屋企嘅時候，我打咗個電話俾阿媽，話佢知週末會返去探佢。"),
}

_OURS = r"""
import json, sys, time
import dora_primespeech_mlx
lang, text, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0, c0 = time.perf_counter(), time.process_time()
from dora_primespeech_mlx.text import clean_text, prepare_segments
segments = prepare_segments(text, lang, "cut5")
for s in segments:
    clean_text(s, lang, "v2")
cold, cold_cpu = time.perf_counter() - t0, time.process_time() - c0
t0 = time.perf_counter()
for _ in range(reps):
    for s in prepare_segments(text, lang, "cut5"):
        clean_text(s, lang, "v2")
warm = time.perf_counter() - t0
print(json.dumps({"segments": len(segments), "cold_s": cold, "cold_cpu_s": cold_cpu, "warm_s": warm}))
"""

_UPSTREAM = r"""
import json, sys, time
import dora_primespeech_mlx
lang, text, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0, c0 = time.perf_counter(), time.process_time()
from primespeech_devtools.oracle.text_en import upstream_prepare_segments
if lang == "zh":
    from primespeech_devtools.oracle.text_zh import load_upstream_module
    module = load_upstream_module("v2")
    def clean(s):
        norm = module.text_normalize(s)
        return module.g2p(norm), norm
elif lang in ("ja", "ko", "yue"):
    from primespeech_devtools.oracle import import_upstream
    import_upstream()
    from text.cleaner import clean_text
    if lang == "ko":
        from text import korean
        korean._g2p.cmu = {}
    def clean(s):
        return clean_text(s, lang, "v2")
else:
    from primespeech_devtools.oracle.text_en import upstream_english
    from dora_primespeech_mlx.text.en_tagger import get_tagger
    upstream_english(get_tagger())
    from text.cleaner import clean_text
    def clean(s):
        return clean_text(s, "en", "v2")
segments = upstream_prepare_segments(text, lang, "cut5")
for s in segments:
    clean(s)
cold, cold_cpu = time.perf_counter() - t0, time.process_time() - c0
t0 = time.perf_counter()
for _ in range(reps):
    for s in upstream_prepare_segments(text, lang, "cut5"):
        clean(s)
warm = time.perf_counter() - t0
print(json.dumps({"segments": len(segments), "cold_s": cold, "cold_cpu_s": cold_cpu, "warm_s": warm}))
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reps", type=int, default=20, help="warm repetitions of each paragraph")
    parser.add_argument("--langs", default="zh,en,ja,ko,yue", help="comma-separated: zh, en, ja, ko, yue")


def _child(code: str, lang: str, reps: int) -> dict:
    out = subprocess.run([sys.executable, "-c", code, lang, PARAGRAPHS[lang], str(reps)],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> dict:
    from primespeech_devtools.bench import oracle_missing

    note = oracle_missing()
    result: dict = {"note": note} if note else {}
    result |= {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                           "processor": platform.processor() or platform.machine()},
               "reps": args.reps, "method": "cut5", "version": "v2"}
    for lang in args.langs.split(","):
        ours = _child(_OURS, lang, args.reps)
        entry: dict = {"paragraph_chars": len(PARAGRAPHS[lang]), "ours": ours}
        if note is not None:
            if "error" not in ours:
                entry["ours_sentences_per_s"] = round(ours["segments"] * args.reps / ours["warm_s"], 1)
                entry["ours_cold_start_s"] = round(ours["cold_s"], 3)
                entry["ours_cold_start_cpu_s"] = round(ours["cold_cpu_s"], 3)
            result[lang] = entry
            continue
        theirs = entry["upstream"] = _child(_UPSTREAM, lang, args.reps)
        if "error" not in ours and "error" not in theirs:
            n = ours["segments"] * args.reps
            entry["ours_sentences_per_s"] = round(n / ours["warm_s"], 1)
            entry["upstream_sentences_per_s"] = round(theirs["segments"] * args.reps / theirs["warm_s"], 1)
            entry["speedup"] = round(entry["ours_sentences_per_s"] / entry["upstream_sentences_per_s"], 2)
            # wall clock, and CPU time (what the wall clock would be on an otherwise idle machine)
            entry["ours_cold_start_s"] = round(ours["cold_s"], 3)
            entry["ours_cold_start_cpu_s"] = round(ours["cold_cpu_s"], 3)
            entry["upstream_cold_start_s"] = round(theirs["cold_s"], 3)
            entry["upstream_cold_start_cpu_s"] = round(theirs["cold_cpu_s"], 3)
        result[lang] = entry
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    add_arguments(p)
    print(json.dumps(run(p.parse_args()), indent=2, ensure_ascii=False))
