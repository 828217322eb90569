"""`primespeech-mlx`: convert official checkpoints, benchmark, and (with the engine) speak."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from .errors import PrimeSpeechError

CONVERTERS = {
    "gpt": ("dora_primespeech_mlx.models.t2s", "a GPT-SoVITS T2S checkpoint (GPT_weights/*.ckpt)"),
    "sovits": ("dora_primespeech_mlx.models.sovits", "a SoVITS checkpoint (SoVITS_weights/*.pth)"),
    "hubert": ("dora_primespeech_mlx.models.hubert", "the chinese-hubert-base folder"),
    "roberta": ("dora_primespeech_mlx.models.roberta", "the chinese-roberta-wwm-ext-large folder"),
}


def _convert(args: argparse.Namespace) -> int:
    chosen = [(name, getattr(args, name)) for name in CONVERTERS if getattr(args, name)]
    if not chosen:
        raise PrimeSpeechError("nothing to convert: give --gpt, --sovits, --hubert or --roberta")
    if args.out and len(chosen) > 1:
        raise PrimeSpeechError("--out names one folder: convert one model at a time with --out")
    for name, source in chosen:
        module = importlib.import_module(CONVERTERS[name][0])
        out = module.convert(source, args.out)
        print(f"{name}: {source} -> {out}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    result = args.bench_module.run(args)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .bench import BENCHMARKS

    parser = argparse.ArgumentParser(
        prog="primespeech-mlx",
        description="GPT-SoVITS voice-cloning TTS in MLX (drop-in for dora-primespeech).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    conv = sub.add_parser("convert", help="convert official checkpoints to MLX safetensors",
                          description="Convert official GPT-SoVITS files into MLX safetensors + config.json. "
                                      "Without --out the result is cached beside the source.")
    for name, (_, what) in CONVERTERS.items():
        conv.add_argument(f"--{name}", metavar="PATH", help=what)
    conv.add_argument("--out", metavar="DIR", help="output folder (default: beside the source)")
    conv.set_defaults(func=_convert)

    bench = sub.add_parser("bench", help="benchmark against the upstream PyTorch oracle",
                           description="Run ours and the upstream oracle on the same random weights in one "
                                       "run and report both and the ratio (needs the test extras).")
    bench_sub = bench.add_subparsers(dest="bench_name", required=True)
    for name in BENCHMARKS:
        try:
            module = importlib.import_module(f"dora_primespeech_mlx.bench.{name}")
        except ImportError:
            continue
        p = bench_sub.add_parser(name, help=(module.__doc__ or name).strip().splitlines()[0])
        module.add_arguments(p)
        p.set_defaults(func=_bench, bench_module=module)

    from .coreml import add_coreml_command

    add_coreml_command(sub)

    try:
        commands = importlib.import_module("dora_primespeech_mlx.commands")
    except ImportError:
        commands = None
    if commands is not None:
        commands.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except PrimeSpeechError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
