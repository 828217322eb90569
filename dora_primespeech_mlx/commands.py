"""CLI subcommands `say`, `voices` and `download` (registered by `cli.py` through `add_commands`).

The model root defaults to $PRIMESPEECH_MODEL_DIR or ~/.dora/models/primespeech, the layout the
original dora-primespeech node uses, and user voices to $PRIMESPEECH_VOICES_FILE.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import types
from pathlib import Path

from .errors import PrimeSpeechError

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ROOT = "~/.dora/models/primespeech"
TEXT_LANGS = ("auto", "auto_yue", "en", "zh", "ja", "yue", "ko", "all_zh", "all_ja", "all_yue", "all_ko")


def default_model_root() -> str:
    return os.environ.get("PRIMESPEECH_MODEL_DIR") or DEFAULT_MODEL_ROOT


def _registry(args: argparse.Namespace):
    from .voices import VoiceRegistry

    voices_file = args.voices_file or os.environ.get("PRIMESPEECH_VOICES_FILE") or None
    return VoiceRegistry(args.model_root, voices_file)


def _add_root_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-root", metavar="DIR", default=default_model_root(),
                   help="model root holding moyoyo/ (default: $PRIMESPEECH_MODEL_DIR or %(default)s)")
    p.add_argument("--voices-file", metavar="JSON", default=None,
                   help="extra user voices (default: $PRIMESPEECH_VOICES_FILE)")


# -- say ---------------------------------------------------------------------------------------------
def _say(args: argparse.Namespace) -> int:
    from .audio import write_wav
    from .engine import SynthesisOptions, Synthesizer

    text = args.text if args.text != "-" else sys.stdin.read()
    registry = _registry(args)
    voice = registry.get(args.voice or registry.default_voice)
    missing = registry.missing_files(voice.name)
    if missing:
        raise PrimeSpeechError(
            f"voice {voice.name!r} is not installed (missing {missing[0]}"
            f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}): run "
            f"`primespeech-mlx download --voice \"{voice.name}\" --model-root {args.model_root}`")
    options = SynthesisOptions(
        text_lang=args.text_lang or voice.text_lang, speed=args.speed, seed=args.seed, top_k=args.top_k,
        text_split_method=args.split, fragment_interval=args.fragment_interval)
    started = time.perf_counter()
    engine = Synthesizer(args.model_root, registry=registry, device=args.device)
    engine.load_voice(voice)
    print(f"voice {voice.name!r} ready in {time.perf_counter() - started:.2f}s on {engine.device}",
          file=sys.stderr)
    out = Path(args.output)
    started = time.perf_counter()
    if args.stream:
        pieces = []
        for result in engine.stream(text, voice, options):
            if not pieces:
                print(f"first audio after {time.perf_counter() - started:.2f}s", file=sys.stderr)
            pieces.append(result.audio)
            print(f"  [{result.segment_index}] {result.audio.shape[0] / result.sample_rate:.2f}s "
                  f"{result.text}", file=sys.stderr)
        import numpy as np

        audio = np.concatenate(pieces)
    else:
        audio = engine.synthesize(text, voice, options).audio
    elapsed = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    write_wav(out, audio, 32000)
    seconds = audio.shape[0] / 32000
    print(f"{out}: {seconds:.2f}s of audio in {elapsed:.2f}s (real-time factor {elapsed / seconds:.2f})",
          file=sys.stderr)
    return 0


# -- voices ------------------------------------------------------------------------------------------
def _voices(args: argparse.Namespace) -> int:
    registry = _registry(args)
    encoders_missing = [p for p in registry.encoder_files() if not p.is_file()]
    print(f"model root: {registry.model_root}")
    width = max(len(n) for n in registry.names())
    for name in registry.names():
        voice = registry.get(name)
        state = "installed" if registry.installed(name) else "missing"
        kind = "built-in" if registry.is_builtin(name) else "user"
        print(f"  {name:<{width}}  {state:<9}  {voice.text_lang:<4} speed {voice.speed:<4}  {kind}")
    if encoders_missing:
        print(f"shared encoders missing ({len(encoders_missing)} files, e.g. {encoders_missing[0]}): "
              "`primespeech-mlx download` fetches them")
    return 0


# -- download ----------------------------------------------------------------------------------------
def download_plan(registry, voices: list[str], with_g2pw: bool) -> list[tuple[str, str | None, Path]]:
    """(hub repository, file in the repository or None for the whole repository, local folder) for each
    needed file. Files already on disk are left out."""
    moyoyo = registry.moyoyo_dir
    repo = registry.repository
    plan: list[tuple[str, str, Path]] = []
    for kind in ("hubert", "roberta"):
        enc = registry.config["encoders"][kind]
        plan += [(repo, f"{enc['folder']}/{f}", moyoyo) for f in enc["files"]]
    for name in voices:
        entry = registry.entry(name)
        source = entry.get("repository")
        if not source:
            raise PrimeSpeechError(f"voice {name!r} is a user voice without a hub repository: copy its files "
                                   "by hand")
        plan += [(source, entry[k], moyoyo) for k in ("gpt_weights", "sovits_weights", "reference_audio")]
    plan = [(r, f, d) for r, f, d in plan if not (d / f).is_file()]
    g2pw = registry.config["g2pw"]
    if with_g2pw and not all((registry.g2pw_dir / f).is_file() for f in g2pw["required"]):
        plan.append((g2pw["repository"], None, registry.g2pw_dir))  # the model plus its dictionaries
    return plan


def _hub():
    try:
        import huggingface_hub
    except ImportError as exc:
        raise PrimeSpeechError("downloading needs huggingface_hub: "
                               "pip install 'dora-primespeech-mlx[download]'") from exc
    return huggingface_hub


def hub_problem(endpoint: str, timeout: float = 5.0) -> str | None:
    """Why the hub at `endpoint` cannot be reached (one request, no retries), or None when it answers."""
    import ssl
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # it answered
    except urllib.error.URLError as exc:
        return None if isinstance(exc.reason, ssl.SSLError) else str(exc.reason)
    except (OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__


def run_download(plan: list[tuple[str, str | None, Path]], hub=None) -> list[Path]:
    """Fetch every planned file with `hf_hub_download` (or a whole repository with `snapshot_download`)
    into its folder; interrupted files resume; huggingface_hub shows progress bars. The hub is asked
    once first, so that an offline machine fails at once instead of after huggingface_hub's retries."""
    hub = hub or _hub()
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise PrimeSpeechError("HF_HUB_OFFLINE is set: unset it (or run where the network is reachable) "
                               "to download models")
    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    problem = hub_problem(endpoint) if isinstance(hub, types.ModuleType) else None  # fakes in tests: no probe
    if problem:
        raise PrimeSpeechError(f"cannot reach the Hugging Face hub at {endpoint} ({problem}): check the network "
                               "and run the command again")
    done = []
    for i, (repo, filename, folder) in enumerate(plan, 1):
        print(f"[{i}/{len(plan)}] {repo}: {filename or '(whole repository)'}", file=sys.stderr)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            if filename is None:
                path = hub.snapshot_download(repo_id=repo, local_dir=str(folder))
            else:
                path = hub.hf_hub_download(repo_id=repo, filename=filename, local_dir=str(folder))
        except Exception as exc:  # hub errors (offline, 404, auth) have many types
            raise PrimeSpeechError(
                f"could not download {filename or 'the files'} from {repo} ({type(exc).__name__}: {exc}); check the network "
                "and run the command again: finished files are kept and partial ones resume") from exc
        done.append(Path(path))
    return done


def _download(args: argparse.Namespace) -> int:
    registry = _registry(args)
    if args.all:
        voices = [n for n in registry.names() if registry.is_builtin(n)]
    else:
        voices = [registry.get(v).name for v in (args.voice or [registry.default_voice])]
    plan = download_plan(registry, voices, with_g2pw=args.g2pw)
    if not plan:
        print(f"already installed under {registry.model_root}: {', '.join(voices)}", file=sys.stderr)
        return 0
    print(f"downloading {len(plan)} files into {registry.model_root} ...", file=sys.stderr)
    run_download(plan)
    print(f"done: {', '.join(voices)} installed under {registry.model_root}. The first use converts the "
          "weights to MLX once (a few seconds per model).", file=sys.stderr)
    return 0


def add_commands(sub) -> None:
    """Register `say`, `voices` and `download` on the `primespeech-mlx` subparsers."""
    say = sub.add_parser(
        "say", help="speak text into a WAV file",
        description="Synthesise TEXT with a voice and write a 32 kHz WAV. Example:\n"
                    "  primespeech-mlx say '你好，欢迎使用。' --voice Doubao -o hello.wav",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    say.add_argument("text", metavar="TEXT", help="the text to speak ('-' reads standard input)")
    say.add_argument("--voice", help="voice name (see `primespeech-mlx voices`; default Doubao)")
    say.add_argument("-o", "--output", default="out.wav", help="WAV file to write (default %(default)s)")
    say.add_argument("--stream", action="store_true", help="synthesise segment by segment and report the "
                                                         "time to first audio")
    say.add_argument("--text-lang", choices=TEXT_LANGS, help="language of TEXT (default: the voice's)")
    say.add_argument("--speed", type=float, help="speaking speed factor (default: the voice's)")
    say.add_argument("--seed", type=int, default=233333, help="sampling seed (-1: random)")
    say.add_argument("--top-k", type=int, default=5, help="T2S top-k sampling (default %(default)s)")
    say.add_argument("--split", default="cut5", choices=[f"cut{i}" for i in range(6)],
                     help="sentence cutting method (default %(default)s)")
    say.add_argument("--fragment-interval", type=float, default=0.07,
                     help="seconds of silence after each sentence (default %(default)s)")
    say.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"), help="MLX device")
    _add_root_options(say)
    say.set_defaults(func=_say)

    voices = sub.add_parser("voices", help="list the voices and which are installed",
                            description="List built-in and user voices, their language and default speed, "
                                        "and whether their files are under the model root.")
    _add_root_options(voices)
    voices.set_defaults(func=_voices)

    dl = sub.add_parser(
        "download", help="download voices from the Hugging Face hub",
        description="Download voice weights, reference clips and the shared encoders from the original's hub "
                    "repository (MoYoYoTech/tone-models) into the model root, in dora-primespeech's layout. "
                    "Interrupted downloads resume. Needs huggingface_hub and the network.")
    group = dl.add_mutually_exclusive_group()
    group.add_argument("--voice", action="append", help="a voice to download (repeatable; default Doubao)")
    group.add_argument("--all", action="store_true", help="all 15 built-in voices")
    dl.add_argument("--g2pw", action="store_true",
                    help="also the g2pW polyphone model (alextomcat/G2PWModel; needs onnxruntime to use)")
    _add_root_options(dl)
    dl.set_defaults(func=_download)


__all__ = ["add_commands", "download_plan", "run_download"]
