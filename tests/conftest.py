"""Shared fixtures. The upstream oracle (torch + gpt-sovits-cpufast) is installed by `make test`."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def upstream():
    """Import upstream GPT-SoVITS once per session; returns its package folder."""
    from dora_primespeech_mlx.oracle import import_upstream

    return import_upstream()
