"""Data safety of image folders: deep (16-bit, float) images are scaled by their bit depth, not
clipped; unreadable folders and files are reported as permission problems, not "no images"."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
import torch
from ebmkit.builtin import datasets as D
from ebmkit.errors import DataError
from ebmkit.params import build
from PIL import Image


def open_folder(path, **values):
    return D.ImageFolder(build(D.ImageFolder.Config, {"path": str(path), **values})).open()


def png16(path, arr: np.ndarray) -> None:
    """Write ``arr`` (uint16 ``[H, W, C]``, C = 1..4) as a 16-bit PNG by hand: PIL cannot write
    16-bit RGB(A), and this checks what PIL makes of one when it reads it."""
    h, w, c = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


# a grey gradient from black to white whose levels 8 bits cannot tell apart (e.g. 0, 1040, ...)
GRADIENT = np.round(np.linspace(0, 65535, 64)).astype(np.uint16).reshape(8, 8)


def expected(levels: np.ndarray, white: int) -> torch.Tensor:
    return torch.from_numpy(levels.astype(np.float64) / white * 2 - 1).float()


# ---------------------------------------------------------------------------------------------
# bit depth
# ---------------------------------------------------------------------------------------------
def write_grey16(path, fmt):
    if fmt in ("png", "tiff-le"):  # PIL writes uint16 as mode I;16 and reads it back as I;16
        Image.fromarray(GRADIENT).save(path)
    elif fmt == "tiff-be":  # big-endian samples: mode I;16B
        Image.fromarray(GRADIENT.astype(">u2")).save(path)
    elif fmt == "ppm":  # maxval 65535: PIL reads it as 32-bit mode I
        path.write_bytes(b"P5\n8 8\n65535\n" + GRADIENT.astype(">u2").tobytes())


@pytest.mark.parametrize("fmt,suffix", [("png", ".png"), ("tiff-le", ".tif"), ("tiff-be", ".tif"),
                                        ("ppm", ".ppm")])
def test_16_bit_grey_is_scaled_by_65535_not_clipped(tmp_path, fmt, suffix):
    write_grey16(tmp_path / f"a{suffix}", fmt)
    x, _ = open_folder(tmp_path, resolution=8, channels=1).tensors
    assert x.shape == (1, 1, 8, 8)
    torch.testing.assert_close(x[0, 0], expected(GRADIENT, 65535), rtol=0, atol=1e-6)
    assert x.min() == -1 and x.max() == 1
    rgb, _ = open_folder(tmp_path, resolution=8, channels=3).tensors  # grey replicated, same levels
    torch.testing.assert_close(rgb[0], expected(GRADIENT, 65535).expand(3, 8, 8), rtol=0, atol=1e-6)


@pytest.mark.parametrize("channels", [3, 4])
def test_16_bit_rgb_png_keeps_its_range(tmp_path, channels):
    # PIL opens 16-bit RGB(A) PNGs as 8-bit RGB(A), keeping each sample's top byte
    arr = np.stack([GRADIENT, GRADIENT[::-1], np.full_like(GRADIENT, 32768), np.full_like(GRADIENT, 65535)],
                   axis=-1)[..., :channels]
    png16(tmp_path / "a.png", arr)
    x, _ = open_folder(tmp_path, resolution=8, channels=3).tensors
    torch.testing.assert_close(x[0], expected(arr[..., :3].transpose(2, 0, 1) >> 8, 255), rtol=0, atol=1e-6)
    assert x.min() == -1 and x.max() == 1


def test_float_image_in_unit_range_is_taken_as_is(tmp_path):
    levels = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(levels).save(tmp_path / "a.tif")
    x, _ = open_folder(tmp_path, resolution=8, channels=1).tensors
    torch.testing.assert_close(x[0, 0], torch.from_numpy(levels) * 2 - 1, rtol=0, atol=1e-6)


def test_images_without_a_known_white_level_are_named(tmp_path):
    Image.fromarray(np.linspace(0, 4, 64, dtype=np.float32).reshape(8, 8)).save(tmp_path / "f.tif")
    with pytest.raises(DataError, match=r"f\.tif: floating-point image has values in \[0, 4\]") as err:
        open_folder(tmp_path, resolution=8)
    assert "\n" not in str(err.value)
    (tmp_path / "f.tif").unlink()
    Image.fromarray(np.arange(64, dtype=np.int32).reshape(8, 8) - 10).save(tmp_path / "i.tif")  # signed
    with pytest.raises(DataError, match=r"i\.tif: .*no known white level.*save it as") as err:
        open_folder(tmp_path, resolution=8)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# permissions (simulated, so that the tests also run as root, who may read anything)
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def labelled(tmp_path):
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("L", (8, 8), 100 + i).save(tmp_path / cls / f"{i}.png")
    return tmp_path


def deny_listing(monkeypatch, denied):
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path) == os.fspath(denied):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


@pytest.mark.parametrize("which", ["", "dogs"])
def test_unreadable_folder_is_a_permission_error_naming_it(labelled, monkeypatch, which):
    denied = labelled / which if which else labelled
    deny_listing(monkeypatch, denied)
    with pytest.raises(DataError) as err:
        open_folder(labelled, resolution=8)
    msg = str(err.value)
    assert msg.startswith(f"permission denied reading image folder {denied};") and "chmod" in msg
    assert "no images" not in msg and "\n" not in msg


def test_unreadable_image_file_is_named(labelled, monkeypatch):
    denied = labelled / "dogs" / "1.png"
    real = Image.open

    def open_(fp, *args, **kwargs):
        if os.fspath(fp) == os.fspath(denied):
            raise PermissionError(13, "Permission denied", os.fspath(fp))
        return real(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", open_)
    with pytest.raises(DataError) as err:
        open_folder(labelled, resolution=8)
    msg = str(err.value)
    assert msg.startswith(f"permission denied reading image {denied};") and "chmod u+r" in msg
    assert "\n" not in msg


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root may read any file; the simulated tests above cover it")
def test_real_unreadable_folder(labelled):
    (labelled / "dogs").chmod(0)
    try:
        with pytest.raises(DataError, match="permission denied reading image folder"):
            open_folder(labelled, resolution=8)
    finally:
        (labelled / "dogs").chmod(0o755)
