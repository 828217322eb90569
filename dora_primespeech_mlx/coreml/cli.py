"""`primespeech-mlx coreml-export`: build (or check) the Core ML encoder packages."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..errors import PrimeSpeechError


def _default_model_root() -> Path:
    try:
        from ..config import NodeConfig

        return NodeConfig.from_env()[0].model_dir  # PRIMESPEECH_MODEL_DIR, as the node reads it
    except ImportError:
        return Path(os.path.expanduser("~/.dora/models/primespeech"))


def _folders(args: argparse.Namespace) -> dict[str, Path]:
    from .export import KINDS, model_folder

    root = Path(args.model_root).expanduser() if args.model_root else _default_model_root()
    kinds = [args.only] if args.only else list(KINDS)
    folders = {kind: model_folder(root, kind) for kind in kinds}
    for kind in kinds:
        override = getattr(args, kind)
        if override:
            folders[kind] = Path(override).expanduser()
    return folders


def _status(kind: str, folder: Path) -> dict:
    from ..loading import converted_dir_for, is_converted, is_fresh
    from . import readback
    from .export import package_path, package_problem

    converted = folder if is_converted(folder, kind) else converted_dir_for(folder)
    entry: dict = {"kind": kind, "folder": str(folder), "package": str(package_path(converted, kind))}
    if converted != folder and not is_fresh(converted, folder, kind):
        entry["problem"] = "no current MLX conversion (run coreml-export)"
        return entry
    problem = package_problem(converted, kind)
    if problem:
        entry["problem"] = problem
    else:
        entry.update(ok=True, **readback.summary(package_path(converted, kind)))
    return entry


def _run(args: argparse.Namespace) -> int:
    from .export import export_encoder

    folders = _folders(args)
    if args.check:
        report = [_status(kind, folder) for kind, folder in folders.items()]
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0 if all(r.get("ok") for r in report) else 1
    for kind, folder in folders.items():
        if not folder.exists():
            raise PrimeSpeechError(f"{kind} folder not found: {folder} (run `primespeech-mlx download`, "
                                   "or give --model-root / --hubert / --roberta)")
    for kind, folder in folders.items():
        result = export_encoder(kind, folder, force=args.force, verify=not args.no_verify)
        state = "exported" if result.exported else "up to date"
        print(f"{kind}: {state}: {result.package} ({result.size_bytes / 2**20:.0f} MiB, {result.seconds:.1f} s)")
    return 0


def add_coreml_command(subparsers) -> None:
    """Add the `coreml-export` subcommand to `primespeech-mlx`."""
    p = subparsers.add_parser(
        "coreml-export", help="export HuBERT and RoBERTa as Core ML packages (Apple Neural Engine)",
        description="Convert CNHuBERT and Chinese RoBERTa from the converted MLX weights into Core ML "
                    "ML Program packages (float16) stored beside them, so that on macOS the encoder "
                    "backend 'auto' or 'coreml' runs them on the Neural Engine. Runs on any OS; needs "
                    "coremltools (pip install 'dora-primespeech-mlx[coreml]'). Each package is read back "
                    "and its weights compared with the source before it replaces an older one.")
    p.add_argument("--model-root", metavar="DIR",
                   help="model root holding moyoyo/chinese-hubert-base and moyoyo/chinese-roberta-wwm-ext-large "
                        "(default: $PRIMESPEECH_MODEL_DIR or ~/.dora/models/primespeech)")
    p.add_argument("--hubert", metavar="DIR", help="the chinese-hubert-base folder (overrides --model-root)")
    p.add_argument("--roberta", metavar="DIR",
                   help="the chinese-roberta-wwm-ext-large folder (overrides --model-root)")
    p.add_argument("--only", choices=("hubert", "roberta"), help="export one encoder only")
    p.add_argument("--force", action="store_true", help="export even if an up-to-date package exists")
    p.add_argument("--no-verify", action="store_true", help="skip reading the package back (faster)")
    p.add_argument("--check", action="store_true",
                   help="export nothing: print each package's state and interface as JSON (exit 1 if any "
                        "is missing or stale)")
    p.set_defaults(func=_run)
