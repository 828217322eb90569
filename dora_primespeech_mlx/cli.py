"""`primespeech-mlx`: convert official checkpoints, benchmark, and (with the engine) speak.

Progress goes to stderr through logging: the package's INFO messages as bare lines (warnings and errors
prefixed), `-q` only warnings and errors, `-v` debug lines with their level and logger name. Other
libraries' loggers are left alone.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from . import runtime
from .config import NodeConfig
from .errors import PrimeSpeechError

logger = logging.getLogger(__name__)
PACKAGE = "dora_primespeech_mlx"
TERSE, QUIET, VERBOSE = 0, -1, 1
DEVTOOLS_BENCH = "primespeech_devtools.bench"
NO_DEVTOOLS = ("the benchmarks are dev tools, not part of the installed package: in a checkout of "
               "dora-primespeech-mlx, `make setup` installs them (devtools/, with the upstream oracle they "
               "compare against), then run `.venv/bin/primespeech-mlx bench ...`")

CONVERTERS = {  # option -> (model kind in `loading`, help)
    "gpt": ("t2s", "a GPT-SoVITS T2S checkpoint (GPT_weights/*.ckpt)"),
    "sovits": ("sovits", "a SoVITS checkpoint (SoVITS_weights/*.pth)"),
    "hubert": ("hubert", "the chinese-hubert-base folder"),
    "roberta": ("roberta", "the chinese-roberta-wwm-ext-large folder"),
    "sv": ("speaker", "the speaker-verification model of v2Pro/v2ProPlus voices (sv/pretrained_eres2netv2w24s4ep4.ckpt)"),
}


def _convert(args: argparse.Namespace) -> int:
    chosen = [(name, getattr(args, name)) for name in CONVERTERS if getattr(args, name)]
    if not chosen:
        raise PrimeSpeechError("nothing to convert: give --gpt, --sovits, --hubert, --roberta or --sv")
    if args.out and len(chosen) > 1:
        raise PrimeSpeechError("--out names one folder: convert one model at a time with --out")
    from .loading import convert

    for name, source in chosen:
        out = convert(CONVERTERS[name][0], source, args.out)
        print(f"{name}: {source} -> {out}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    result = args.bench_module.run(args)
    if result.get("note"):
        logger.warning("%s", result["note"])
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def _no_devtools(args: argparse.Namespace) -> int:
    raise PrimeSpeechError(NO_DEVTOOLS)


def _add_bench_command(sub) -> None:
    """`bench NAME`: the benchmarks live in the dev tools (devtools/ of a checkout), not in the wheel."""
    try:
        benchmarks = importlib.import_module(DEVTOOLS_BENCH)
    except ImportError:
        bench = sub.add_parser("bench", help="benchmarks (dev tools: not installed)", description=NO_DEVTOOLS)
        bench.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        bench.set_defaults(func=_no_devtools)
        return
    bench = sub.add_parser("bench", help="benchmark against the upstream PyTorch oracle",
                           description="Run ours and the upstream oracle on the same random weights in one "
                                       "run and report both and the ratio. Without the oracle (torch, "
                                       "gpt-sovits-cpufast: `make setup`) ours only, with a note.")
    bench_sub = bench.add_subparsers(dest="bench_name", required=True)
    for name in benchmarks.BENCHMARKS:
        module = importlib.import_module(f"{DEVTOOLS_BENCH}.{name}")
        p = bench_sub.add_parser(name, help=(module.__doc__ or name).strip().splitlines()[0])
        module.add_arguments(p)
        p.set_defaults(func=_bench, bench_module=module)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="primespeech-mlx",
        description="GPT-SoVITS voice-cloning TTS in MLX (drop-in for dora-primespeech).",
    )
    add_verbosity_options(parser, default=TERSE)
    sub = parser.add_subparsers(dest="command", required=True)

    conv = sub.add_parser("convert", help="convert official checkpoints to MLX safetensors",
                          description="Convert official GPT-SoVITS files into MLX safetensors + config.json. "
                                      "Without --out the result is cached beside the source.")
    for name, (_, what) in CONVERTERS.items():
        conv.add_argument(f"--{name}", metavar="PATH", help=what)
    conv.add_argument("--out", metavar="DIR", help="output folder (default: beside the source)")
    conv.set_defaults(func=_convert)

    _add_bench_command(sub)

    from .coreml.cli import add_coreml_command

    add_coreml_command(sub)

    try:
        commands = importlib.import_module("dora_primespeech_mlx.commands")
    except ImportError:
        commands = None
    if commands is not None:
        commands.add_commands(sub)
    for command in sub.choices.values():  # -v/-q also after the command name
        add_verbosity_options(command, default=argparse.SUPPRESS)
    return parser


def add_verbosity_options(parser: argparse.ArgumentParser, default) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=VERBOSE, default=default,
                       help="debug messages, with their level and source")
    group.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=QUIET, default=default,
                       help="only warnings and errors")


class _StderrHandler(logging.StreamHandler):
    """Writes to the current sys.stderr (which tests and callers may replace)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


class _TerseFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return f"{record.levelname.lower()}: {message}" if record.levelno >= logging.WARNING else message


def configure_logging(verbosity: int = TERSE) -> None:
    """Show the package's log messages on stderr (see the module docstring); replaces an earlier setup."""
    logger = logging.getLogger(PACKAGE)
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    if verbosity >= VERBOSE:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.setLevel(logging.DEBUG)
    else:
        handler.setFormatter(_TerseFormatter("%(message)s"))
        logger.setLevel(logging.INFO)
        handler.setLevel(logging.WARNING if verbosity <= QUIET else logging.INFO)
    logger.addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbosity)
    try:
        runtime.prepare(NodeConfig.from_env()[0])  # BLAS threads and the CPU-kernel switch, before any model
        return args.func(args)
    except PrimeSpeechError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
