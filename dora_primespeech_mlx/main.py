"""The Dora node entry point (`dora-primespeech`, `dora-primespeech-mlx`)."""

from __future__ import annotations

import sys


def main() -> int:
    print("dora-primespeech-mlx: the Dora node is not implemented yet (see the README status table).",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
