"""The converted-weight cache: converted once, reused while the source is unchanged."""

from __future__ import annotations

import numpy as np

from dora_primespeech_mlx.loading import (
    converted_dir_for,
    ensure_converted,
    is_fresh,
    load_converted,
    save_converted,
)


def _converter(calls):
    def convert(source, out):
        calls.append(out)
        save_converted(out, {"w": np.arange(4, dtype=np.float32)}, {"dim": 4}, kind="demo", source=source)

    return convert


def test_file_source_converted_once_and_again_when_changed(tmp_path):
    source = tmp_path / "voice.ckpt"
    source.write_bytes(b"a" * 100)
    calls = []
    out = ensure_converted(source, "demo", _converter(calls))
    assert out == converted_dir_for(source) == tmp_path / "voice.mlx"
    assert ensure_converted(source, "demo", _converter(calls)) == out
    assert len(calls) == 1
    source.write_bytes(b"b" * 100)
    ensure_converted(source, "demo", _converter(calls))
    assert len(calls) == 2
    weights, config = load_converted(out)
    assert config["dim"] == 4 and config["conversion"]["kind"] == "demo"
    np.testing.assert_array_equal(np.array(weights["w"]), np.arange(4))


def test_folder_source_ignores_its_own_conversion(tmp_path):
    # A parent folder named "mlx" must not hide the source files either.
    folder = tmp_path / "mlx" / "chinese-hubert-base"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"x" * 10)
    calls = []
    out = ensure_converted(folder, "demo", _converter(calls))
    assert out == folder / "mlx"
    (out / "extra.mlpackage").write_text("kept")
    assert ensure_converted(folder, "demo", _converter(calls)) == out
    assert len(calls) == 1 and (out / "extra.mlpackage").exists()
    (folder / "pytorch_model.bin").write_bytes(b"y" * 10)
    assert not is_fresh(out, folder, "demo")
    assert not is_fresh(out, folder, "other-kind")


def test_concurrent_first_uses_convert_once(tmp_path):
    """Several processes (here threads, each with its own lock handle) starting on one model root: one
    converts, the others wait and take its conversion, so no folder is replaced under a reader."""
    import threading
    import time

    source = tmp_path / "voice.ckpt"
    source.write_bytes(b"a" * 100)
    calls = []

    def slow(source, out):
        time.sleep(0.3)
        _converter(calls)(source, out)

    results, errors = [], []

    def first_use():
        try:
            results.append(ensure_converted(source, "demo", slow))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=first_use) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(calls) == 1
    assert results == [tmp_path / "voice.mlx"] * 3
