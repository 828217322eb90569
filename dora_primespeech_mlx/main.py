"""The Dora node entry point (`dora-primespeech`, `dora-primespeech-mlx`): config, engine, node, loop."""

from __future__ import annotations

import dataclasses
import logging
import sys
import traceback
from typing import Any

from .config import NodeConfig

logger = logging.getLogger(__name__)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def build_engine(config: NodeConfig) -> tuple[Any | None, str | None, list[str]]:
    """(Synthesizer or None, why not, problems): start-up failures are reported, never raised.

    A setting this machine cannot honour (a missing user voices file, PRIMESPEECH_DEVICE=gpu without a
    GPU, an encoder backend not built in) is reported as a problem and its default used instead.
    """
    problems: list[str] = []
    try:
        from .engine import Synthesizer
        from .voices import VoiceRegistry

        try:
            registry = VoiceRegistry.from_config(config)
        except Exception as exc:
            if config.voices_file is None:
                raise
            problems.append(f"PRIMESPEECH_VOICES_FILE ignored: {_describe(exc)}")
            registry = VoiceRegistry.from_config(dataclasses.replace(config, voices_file=None))
        settings = {"device": config.device, "dtype": config.dtype, "encoder_backend": config.encoder_backend}
        try:
            engine = Synthesizer(config.model_dir, registry=registry, max_loaded_voices=config.max_voices,
                                 t2s_bits=config.t2s_bits, **settings)
        except Exception as exc:
            chosen = {k: v for k, v in settings.items() if v != "auto"}
            if not chosen:
                raise
            names = ", ".join(f"PRIMESPEECH_{k.upper()}={v}" for k, v in chosen.items())
            problems.append(f"{names} cannot be used here ({_describe(exc)}); using auto")
            engine = Synthesizer(config.model_dir, registry=registry, max_loaded_voices=config.max_voices)
    except Exception as exc:
        logger.debug("engine start-up failed:\n%s", traceback.format_exc())
        return None, _describe(exc), problems
    return engine, None, problems


def main() -> int:
    """Run the node inside a Dora dataflow until its inputs close or the dataflow stops."""
    config, problems = NodeConfig.from_env()
    # the node's own lines also go to stderr, which `dora run` shows; the `log` output carries them too
    logging.basicConfig(level=config.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        from dora import Node

        node = Node()
    except Exception as exc:
        print(f"dora-primespeech: cannot connect to a Dora dataflow ({exc}).\n"
              "This is a Dora node: start it from a dataflow, e.g. `dora run dataflows/say.yml`; "
              "to speak text directly use `primespeech-mlx say TEXT`.", file=sys.stderr)
        return 1
    from .node import TTSNode
    from .runtime import prepare

    prepare(config)  # BLAS threads and the CPU-kernel switch, before build_engine loads any model
    engine, error, engine_problems = build_engine(config)
    TTSNode(node, config, engine, problems=problems + engine_problems, startup_error=error).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
