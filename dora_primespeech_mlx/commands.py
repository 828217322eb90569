"""CLI subcommands `say`, `voices` and `download` (registered by `cli.py` through `add_commands`).

Defaults come from `NodeConfig.from_env()`, as the node reads them: the model root from
$PRIMESPEECH_MODEL_DIR (else ~/.dora/models/primespeech, the original dora-primespeech's layout), user
voices from $PRIMESPEECH_VOICES_FILE, the hub repository from REPOSITORY (else MoYoYoTech/tone-models), the
hub mirror from HF_ENDPOINT and HF_HUB_OFFLINE, and VOICE_NAME's files replaced by GPT_MODEL_PATH,
SOVITS_MODEL_PATH and REFERENCE_AUDIO_PATH (never downloaded). Progress is
logged (INFO) and shown by the CLI's logging setup; errors raise PrimeSpeechError (one line, exit code 2).

`download` is also meant for scripts (`make run` calls `primespeech-mlx download --voice NAME
[--model-root DIR]`): without the network it fails at once with a non-zero exit code and one `error:`
line on stderr, and a failed run removes every file and folder it created, except finished files and
partial ones that hold data (they resume next time).
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
import time
from pathlib import Path

from .config import NodeConfig
from .errors import PrimeSpeechError
from .text import SUPPORTED_MODES

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT = 5.0  # seconds: one request to the hub before downloading, instead of its retries
# Where `make run VOICE=test` builds the random-weight test voice (scripts/run.py, primespeech_devtools.oracle.voice).
TEST_VOICE_ROOT = "out/test-voice"
TEST_VOICE_NAME = "test"


def _registry(args: argparse.Namespace):
    from .voices import VoiceRegistry

    return VoiceRegistry.from_config(args.config, args.model_root, args.voices_file)


def find_voice(registry, name: str):
    """The registry's voice `name`, or a PrimeSpeechError naming close matches and, for the test voice,
    how it is used."""
    from .voices import ModelRoot, normalize_name

    try:
        return registry.get(name)
    except PrimeSpeechError:
        pass
    names = registry.names()
    by_key = {normalize_name(n): n for n in names}
    close = difflib.get_close_matches(normalize_name(name), list(by_key), n=3, cutoff=0.6)
    message = f"unknown voice {name!r} in {registry.model_root}"
    message += f"; did you mean {' or '.join(repr(by_key[key]) for key in close)}?" if close else "."
    message += f" Known voices: {', '.join(names)}."
    if normalize_name(name) == TEST_VOICE_NAME:
        built = " (already built here)" if ModelRoot(Path(TEST_VOICE_ROOT)).user_voices.is_file() else ""
        message += (f" The random-weight test voice has a model root of its own: `make run VOICE=test` builds it "
                    f"in {TEST_VOICE_ROOT}{built}; use it with `primespeech-mlx say --model-root {TEST_VOICE_ROOT} "
                    f"--voice {TEST_VOICE_NAME} TEXT`.")
    raise PrimeSpeechError(message)


def _add_root_options(p: argparse.ArgumentParser, config: NodeConfig) -> None:
    p.add_argument("--model-root", metavar="DIR", default=config.model_dir,
                   help="model root holding moyoyo/ (default: $PRIMESPEECH_MODEL_DIR, here %(default)s)")
    p.add_argument("--voices-file", metavar="JSON", default=config.voices_file,
                   help="extra user voices (default: $PRIMESPEECH_VOICES_FILE)")


# -- say ---------------------------------------------------------------------------------------------
def _say(args: argparse.Namespace) -> int:
    from .audio import write_wav
    from .engine import SynthesisOptions, Synthesizer

    text = args.text if args.text != "-" else sys.stdin.read()
    registry = _registry(args)
    voice = find_voice(registry, args.voice or registry.default_voice)
    missing = registry.missing_message(voice.name)
    if missing:
        raise PrimeSpeechError(missing)
    options = SynthesisOptions(
        text_lang=args.text_lang or voice.text_lang, speed=args.speed, seed=args.seed, top_k=args.top_k,
        text_split_method=args.split, fragment_interval=args.fragment_interval)
    started = time.perf_counter()
    engine = Synthesizer(args.model_root, registry=registry, device=args.device)
    engine.load_voice(voice)  # converts official checkpoints on first use (logged)
    logger.info("warming up: the first synthesis in a process compiles MLX's kernels ...")
    engine.warmup(voice)
    logger.info("voice %r ready in %.2f s on %s", voice.name, time.perf_counter() - started, engine.device)
    out = Path(args.output)
    started = time.perf_counter()
    first_audio = None
    if args.stream:
        import numpy as np

        pieces = []
        segment_text = ""
        for number, result in enumerate(engine.stream(text, voice, options), 1):
            elapsed = time.perf_counter() - started
            first_audio = elapsed if first_audio is None else first_audio
            pieces.append(result.audio)
            if result.text:
                segment_text, label = result.text, f'"{_clip(result.text)}"'
            else:  # a later chunk of a segment streamed in pieces
                label = f'(more of "{_clip(segment_text)}")'
            logger.info("+%.2fs  chunk %d: %.2f s of audio  %s", elapsed, number,
                        result.audio.shape[0] / result.sample_rate, label)
        audio = np.concatenate(pieces)
    else:
        audio = engine.synthesize(text, voice, options).audio
    elapsed = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    write_wav(out, audio, 32000)
    seconds = audio.shape[0] / 32000
    first = "" if first_audio is None else f"; first audio after {first_audio:.2f} s"
    logger.info("wrote %s: %.2f s of audio in %.2f s (real-time factor %.2f%s)", out, seconds, elapsed,
                elapsed / seconds if seconds else 0.0, first)
    return 0


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


# -- voices ------------------------------------------------------------------------------------------
def _voices(args: argparse.Namespace) -> int:
    from .loading import sovits_version

    registry = _registry(args)
    encoders_missing = [p for p in registry.encoder_files() if not p.is_file()]
    print(f"model root: {registry.model_root}")
    width = max(len(n) for n in registry.names())
    for name in registry.names():
        voice = registry.get(name)
        state = "installed" if registry.installed(name) else "missing"
        kind = "built-in" if registry.is_builtin(name) else "user"
        version = (sovits_version(voice.sovits_path) or "?") if voice.sovits_path.is_file() else "-"
        print(f"  {name:<{width}}  {state:<9}  {voice.text_lang:<4} speed {voice.speed:<4}  {version:<9}  {kind}")
    if encoders_missing:
        print(f"shared encoders missing ({len(encoders_missing)} files, e.g. {encoders_missing[0]}): "
              "`primespeech-mlx download` fetches them")
    return 0


# -- download ----------------------------------------------------------------------------------------
def download_plan(registry, voices: list[str], with_g2pw: bool,
                  with_speaker: bool = False) -> list[tuple[str, str | None, Path]]:
    """(hub repository, file in the repository or None for the whole repository, local folder) for each
    needed file. Files already on disk are left out, and so are a voice's files replaced by overrides
    (GPT_MODEL_PATH, ...): those are the user's own."""
    from .voices import ENCODER_KINDS

    root = registry.root
    moyoyo = root.moyoyo
    repo = registry.repository
    plan: list[tuple[str, str, Path]] = []
    for kind in ENCODER_KINDS:  # the hub repository holds them as moyoyo/ does
        folder = root.encoder(kind).relative_to(moyoyo).as_posix()
        plan += [(repo, f"{folder}/{f}", moyoyo) for f in registry.config["encoders"][kind]["files"]]
    for name in voices:
        entry = registry.entry(name)
        source = entry.get("repository")
        if not source:
            raise PrimeSpeechError(f"voice {name!r} is a user voice without a hub repository: copy its files "
                                   "by hand")
        overridden = registry.overridden(name)
        plan += [(source, entry[k], moyoyo) for k in ("gpt_weights", "sovits_weights", "reference_audio")
                 if k not in overridden]
    if with_speaker:  # the speaker-verification model of v2Pro/v2ProPlus voices, where moyoyo/ keeps it
        plan.append((registry.config["speaker"]["repository"], root.speaker.relative_to(moyoyo).as_posix(), moyoyo))
    plan = [(r, f, d) for r, f, d in plan if not (d / f).is_file()]
    g2pw = registry.config["g2pw"]
    if with_g2pw and not all((root.g2pw / f).is_file() for f in g2pw["required"]):
        plan.append((g2pw["repository"], None, root.g2pw))  # the model plus its dictionaries
    return plan


def _hub():
    try:
        import huggingface_hub
    except ImportError as exc:
        raise PrimeSpeechError("downloading needs huggingface_hub: "
                               "pip install 'dora-primespeech-mlx[download]'") from exc
    return huggingface_hub


def hub_endpoint(hub=None, configured: str | None = None) -> str:
    """The hub address huggingface_hub uses: `configured` (HF_ENDPOINT), else its own setting, else
    huggingface.co."""
    configured = configured or getattr(getattr(hub, "constants", None), "ENDPOINT", None)
    return (configured or DEFAULT_ENDPOINT).rstrip("/")


def hub_problem(endpoint: str, timeout: float = PROBE_TIMEOUT) -> str | None:
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
        if isinstance(exc.reason, ssl.SSLError):
            return None  # connected: certificates are huggingface_hub's business
        return str(exc.reason)
    except (OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__


def run_download(plan: list[tuple[str, str | None, Path]], hub=None, *, config: NodeConfig | None = None,
                 endpoint: str | None = None, probe: bool = True) -> list[Path]:
    """Fetch every planned file with `hf_hub_download` (or a whole repository with `snapshot_download`)
    into its folder; interrupted files resume; huggingface_hub shows progress bars.

    `config` (default: `NodeConfig.from_env()`) gives HF_HUB_OFFLINE and HF_ENDPOINT. With `probe`, the
    hub is asked once (PROBE_TIMEOUT) before anything is written, so that an offline machine fails at
    once instead of after huggingface_hub's retries. A failed run removes what it created (see `_Undo`)."""
    config = config or NodeConfig.from_env()[0]
    hub = hub or _hub()
    if config.hf_hub_offline:
        raise PrimeSpeechError("HF_HUB_OFFLINE is set: unset it (or run where the network is reachable) "
                               "to download models")
    endpoint = endpoint or hub_endpoint(hub, config.hf_endpoint)
    if probe:
        problem = hub_problem(endpoint)
        if problem:
            raise PrimeSpeechError(f"cannot reach the Hugging Face hub at {endpoint} ({problem}): check the "
                                   "network (or set HF_ENDPOINT to a reachable mirror) and run the command again")
    logger.info("downloading %d file(s) from %s", len(plan), endpoint)
    undo = _Undo([folder for _, _, folder in plan])
    done: list[Path] = []
    try:
        for i, (repo, filename, folder) in enumerate(plan, 1):
            logger.info("[%d/%d] %s: %s", i, len(plan), repo, filename or "(whole repository)")
            folder.mkdir(parents=True, exist_ok=True)
            try:
                if filename is None:
                    path = hub.snapshot_download(repo_id=repo, local_dir=str(folder), endpoint=endpoint)
                else:
                    path = hub.hf_hub_download(repo_id=repo, filename=filename, local_dir=str(folder),
                                               endpoint=endpoint)
            except Exception as exc:  # hub errors (offline, 404, auth) have many types
                raise PrimeSpeechError(
                    f"could not download {filename or 'the files'} from {repo} ({type(exc).__name__}: {exc}); "
                    "check the network and run the command again: finished files are kept and partial ones "
                    "resume") from exc
            done.append(Path(path))
    except BaseException:
        undo.run(keep=set(done))
        raise
    return done


class _Undo:
    """What a download run creates under its folders, to remove it again when the run fails.

    Files and folders that existed before are never touched. Kept: finished downloads and partial
    downloads holding data (huggingface_hub's `*.incomplete` files, resumed by the next run), with the
    folders that hold them."""

    def __init__(self, folders: list[Path]):
        self.before: dict[Path, set[Path]] = {}
        self.new: list[Path] = []  # folders (and missing parents) that do not exist yet
        for folder in dict.fromkeys(Path(f) for f in folders):
            if folder.exists():
                self.before[folder] = set(folder.rglob("*"))
                continue
            missing = folder
            while not missing.exists() and missing != missing.parent:
                self.new.append(missing)
                missing = missing.parent

    def run(self, keep: set[Path]) -> None:
        created: set[Path] = set()
        for folder, before in self.before.items():
            created |= set(folder.rglob("*")) - before
        for folder in self.new:
            if folder.exists():
                created |= {folder, *folder.rglob("*")}
        for path in sorted(created, key=lambda p: len(p.parts), reverse=True):  # contents before folders
            try:
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()  # fails while it holds something kept
                elif path not in keep and not (path.name.endswith(".incomplete") and path.stat().st_size > 0):
                    path.unlink()
            except OSError:
                pass


def _download(args: argparse.Namespace) -> int:
    registry = _registry(args)
    if args.all:
        voices = [n for n in registry.names() if registry.is_builtin(n)]
    else:
        voices = [find_voice(registry, v).name for v in (args.voice or [registry.default_voice])]
    plan = download_plan(registry, voices, with_g2pw=args.g2pw, with_speaker=args.sv)
    if plan:
        run_download(plan, config=args.config)
    still_missing = [message for message in map(registry.missing_message, voices) if message]
    for message in still_missing:  # overrides naming no file: nothing to download for them
        logger.warning("%s", message)
    if not plan and not still_missing:
        logger.info("already installed under %s: %s", registry.model_root, ", ".join(voices))
    elif plan:
        logger.info("done: %s downloaded from %s into %s. The first use converts the weights to MLX once "
                    "(a few seconds per model).", ", ".join(voices), registry.repository, registry.model_root)
    return 1 if still_missing else 0


def add_commands(sub, config: NodeConfig | None = None) -> None:
    """Register `say`, `voices` and `download` on the `primespeech-mlx` subparsers; their defaults come
    from `config` (default: `NodeConfig.from_env()`)."""
    config = config or NodeConfig.from_env()[0]
    say = sub.add_parser(
        "say", help="speak text into a WAV file",
        description="Synthesise TEXT with a voice and write a 32 kHz WAV. Example:\n"
                    "  primespeech-mlx say '你好，欢迎使用。' --voice Doubao -o hello.wav",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    say.add_argument("text", metavar="TEXT", help="the text to speak ('-' reads standard input)")
    say.add_argument("--voice", help="voice name (see `primespeech-mlx voices`; default Doubao)")
    say.add_argument("-o", "--output", default="out.wav", help="WAV file to write (default %(default)s)")
    say.add_argument("--stream", action="store_true",
                     help="synthesise chunk by chunk and report each chunk's time, audio length and text")
    say.add_argument("--text-lang", choices=SUPPORTED_MODES,
                     help=f"language of TEXT: {', '.join(SUPPORTED_MODES)} (default: the voice's)")
    say.add_argument("--speed", type=float, help="speaking speed factor (default: the voice's)")
    say.add_argument("--seed", type=int, default=233333, help="sampling seed (-1: random)")
    say.add_argument("--top-k", type=int, default=5, help="T2S top-k sampling (default %(default)s)")
    say.add_argument("--split", default="cut5", choices=[f"cut{i}" for i in range(6)],
                     help="sentence cutting method (default %(default)s)")
    say.add_argument("--fragment-interval", type=float, default=0.07,
                     help="seconds of silence after each sentence (default %(default)s)")
    say.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"), help="MLX device")
    _add_root_options(say, config)
    say.set_defaults(func=_say, config=config)

    voices = sub.add_parser("voices", help="list the voices and which are installed",
                            description="List built-in and user voices, their language and default speed, "
                                        "and whether their files are under the model root.")
    _add_root_options(voices, config)
    voices.set_defaults(func=_voices, config=config)

    dl = sub.add_parser(
        "download", help="download voices from the Hugging Face hub",
        description="Download voice weights, reference clips and the shared encoders from the original's hub "
                    f"repository ($REPOSITORY, here {config.repository}) into the model root, in "
                    "dora-primespeech's layout. Files replaced by GPT_MODEL_PATH, SOVITS_MODEL_PATH or "
                    "REFERENCE_AUDIO_PATH are not downloaded. Interrupted downloads resume. Needs "
                    "huggingface_hub and the network.")
    group = dl.add_mutually_exclusive_group()
    group.add_argument("--voice", action="append", help="a voice to download (repeatable; default Doubao)")
    group.add_argument("--all", action="store_true", help="all 15 built-in voices")
    dl.add_argument("--sv", action="store_true",
                    help="also the speaker-verification model v2Pro/v2ProPlus voices need "
                         "(lj1995/GPT-SoVITS sv/pretrained_eres2netv2w24s4ep4.ckpt)")
    dl.add_argument("--g2pw", action="store_true",
                    help="also the g2pW polyphone model (alextomcat/G2PWModel; needs onnxruntime to use)")
    _add_root_options(dl, config)
    dl.set_defaults(func=_download, config=config)


__all__ = ["add_commands", "download_plan", "run_download"]
