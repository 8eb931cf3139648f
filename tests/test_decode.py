"""decode_image scales by the file's format, never by its values; it turns images upright and refuses bombs."""

import re
import struct
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, ImageOps, UnidentifiedImageError

from apt_research.datasets import MAX_DECODE_PIXELS, decode_image, folder_dataset, iter_images, to_rgb_uint8

SHAPES = st.tuples(st.integers(1, 9), st.integers(1, 9))


def _round_257(values: np.ndarray) -> np.ndarray:
    """The 16-bit to 8-bit rule, written independently: round(v / 257)."""
    return np.round(values.astype(np.float64) / 257.0).astype(np.uint8)


def _png_16bit(samples: np.ndarray, color_type: int) -> bytes:
    """A PNG of 16-bit samples written by hand (Pillow writes 16-bit gray only): color type 0 gray, 2 RGB, 4 gray
    with alpha, 6 RGBA."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    height, width = samples.shape[:2]
    rows = b"".join(b"\x00" + samples[row].astype(">u2").tobytes() for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _declaring(path: Path, height: int, width: int) -> Path:
    """A 1x1 PNG whose header is patched to declare ``height x width`` (with a valid CRC)."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint16, SHAPES))
def test_16bit_gray_png_decodes_to_round_v_over_257_whatever_the_maximum(samples):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "gray16.png"
        Image.fromarray(samples).save(path)
        decoded, _ = decode_image(path)
    assert decoded.shape == (*samples.shape, 3) and decoded.dtype == np.uint8 and decoded.flags.writeable
    assert np.array_equal(decoded, np.repeat(_round_257(samples)[..., None], 3, axis=-1))


def test_two_16bit_pngs_differing_in_one_pixel_decode_differing_in_that_pixel(tmp_path):
    low = np.linspace(100, 255, 64).reshape(8, 8).astype(np.uint16)  # all <= 255: once kept as 8-bit values
    high = low.copy()
    high[0, 0] = 256
    Image.fromarray(low).save(tmp_path / "low.png")
    Image.fromarray(high).save(tmp_path / "high.png")
    first, _ = decode_image(tmp_path / "low.png")
    second, _ = decode_image(tmp_path / "high.png")
    assert np.argwhere((first != second).any(axis=-1)).tolist() == [[0, 0]]  # 100 / 257 -> 0, 256 / 257 -> 1
    assert first.max() == 1 and second.max() == 1  # 255 / 257 and 256 / 257 both round to 1


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_16bit_tiff_modes_decode_to_round_v_over_257(tmp_path, mode):
    samples = np.array([[0, 128, 129, 385, 386], [32767, 32768, 65406, 65407, 65535]], dtype=np.uint16)
    Image.frombytes(mode, samples.shape[::-1], samples.astype(">u2" if mode == "I;16B" else "<u2").tobytes()).save(
        tmp_path / "sixteen.tif")
    assert Image.open(tmp_path / "sixteen.tif").mode == mode
    decoded, _ = decode_image(tmp_path / "sixteen.tif")
    assert decoded[..., 0].tolist() == [[0, 0, 1, 1, 2], [127, 128, 254, 255, 255]]


def test_16bit_pgm_is_mode_i_and_scales_by_its_format(tmp_path):
    samples = np.array([[0, 257, 40000, 65535]], dtype=np.uint16)
    (tmp_path / "gray16.pgm").write_bytes(b"P5\n4 1\n65535\n" + samples.astype(">u2").tobytes())
    assert Image.open(tmp_path / "gray16.pgm").mode == "I"
    decoded, _ = decode_image(tmp_path / "gray16.pgm")
    assert np.array_equal(decoded[..., 0], _round_257(samples))


@settings(max_examples=30, deadline=None)
@given(arrays(np.uint16, st.tuples(st.integers(1, 6), st.integers(1, 6), st.sampled_from([3, 4]))))
def test_16bit_color_png_is_reduced_by_pillow_to_its_high_byte(samples):
    """Pillow decodes 16 bits per channel color to 8-bit RGB(A) itself, keeping each sample's high byte."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "color16.png"
        path.write_bytes(_png_16bit(samples, 2 if samples.shape[-1] == 3 else 6))
        decoded, _ = decode_image(path)
    assert np.array_equal(decoded, (samples[..., :3] >> 8).astype(np.uint8))
    assert np.abs(decoded.astype(int) - _round_257(samples[..., :3])).max() <= 1


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 9), st.integers(1, 9), st.just(3))),
       st.sampled_from(["1", "L", "LA", "P", "RGB", "RGBA"]))
def test_8bit_png_decodes_as_pillow_converts_it_to_rgb(pixels, mode):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "eight.png"
        Image.fromarray(pixels).convert(mode).save(path)
        decoded, info = decode_image(path)
        with Image.open(path) as image:
            expected = np.asarray(image.convert("RGB"))
    assert decoded.dtype == np.uint8 and decoded.flags.writeable and decoded.flags.c_contiguous
    assert np.array_equal(decoded, expected)
    assert info == {"original_height": pixels.shape[0], "original_width": pixels.shape[1], "reduced_by": 1,
                    "orientation": 1}


def test_cmyk_and_transparent_palette_decode_as_pillow_converts_them_without_a_warning(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert("CMYK").save(tmp_path / "cmyk.tif")
    Image.fromarray(pixels).convert("P").save(tmp_path / "palette.png", transparency=bytes(range(0, 256, 8)))
    for name in ("cmyk.tif", "palette.png"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            decoded, _ = decode_image(tmp_path / name)
        with Image.open(tmp_path / name) as image:
            assert np.array_equal(decoded, np.asarray(image.convert("RGBA"))[..., :3])


# The displayed image from the stored one, for each EXIF orientation (numpy's axes: rows, columns).
ORIENTATIONS = {
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation_turns_the_image_upright(tmp_path, orientation):
    stored = np.random.default_rng(orientation).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "oriented.png", exif=exif)
    decoded, info = decode_image(tmp_path / "oriented.png")
    expected = ORIENTATIONS[orientation](stored)
    assert np.array_equal(decoded, expected)
    assert (info["original_height"], info["original_width"]) == expected.shape[:2]
    assert info["orientation"] == orientation


@pytest.mark.parametrize("orientation,shape", [(6, (60, 40)), (8, (60, 40)), (3, (40, 60))])
def test_an_oriented_jpeg_is_decoded_upright(tmp_path, orientation, shape):
    stored = np.zeros((40, 60, 3), dtype=np.uint8)
    stored[:20, :30] = 255  # a white top-left quarter, as stored
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    decoded, info = decode_image(tmp_path / "photo.jpg")
    assert decoded.shape == (*shape, 3) and (info["original_height"], info["original_width"]) == shape
    expected = ORIENTATIONS[orientation](stored)
    assert np.abs(decoded.astype(int) - expected).mean() < 4
    with Image.open(tmp_path / "photo.jpg") as image:
        assert np.array_equal(decoded, np.asarray(ImageOps.exif_transpose(image).convert("RGB")))


def test_max_pixels_applies_to_the_upright_image(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((60, 90, 3), dtype=np.uint8)).save(tmp_path / "portrait.png", exif=exif)
    with pytest.warns(UserWarning, match=r"90x60 .* decoded at 1/3 of its size \(30x20\)"):
        decoded, info = decode_image(tmp_path / "portrait.png", max_pixels=600)
    assert decoded.shape == (30, 20, 3)
    assert info == {"original_height": 90, "original_width": 60, "reduced_by": 3, "orientation": 6}


def test_a_png_declaring_too_many_pixels_is_refused_from_its_header(tmp_path):
    path = _declaring(tmp_path / "tall.png", 100_000_000, 1)  # 67 bytes, above MAX_DECODE_PIXELS
    for max_pixels in (None, 1000):
        start = time.perf_counter()
        with pytest.warns(Image.DecompressionBombWarning):  # Pillow's own, at open, before ours
            with pytest.raises(ValueError, match=rf"tall.png' declares 100000000x1 \(height x width\), "
                                                 rf"100,000,000 pixels, which should be at most MAX_DECODE_PIXELS "
                                                 rf"\({MAX_DECODE_PIXELS:,}\)"):
                decode_image(path, max_pixels)
        assert time.perf_counter() - start < 1.0


def test_pillows_decompression_bomb_error_and_warning_become_our_error(tmp_path):
    huge = _declaring(tmp_path / "huge.png", 100_000, 100_000)
    with pytest.raises(ValueError, match=r"huge.png' declares more pixels than Pillow decodes \(Image size "
                                         r"\(10000000000 pixels\).*MAX_DECODE_PIXELS \(89,478,485\)"):
        decode_image(huge)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"tall.png' declares more pixels than Pillow decodes"):
            decode_image(_declaring(tmp_path / "tall.png", 100_000_000, 1))


def test_max_decode_pixels_is_pillows_default_bound():
    assert MAX_DECODE_PIXELS == Image.MAX_IMAGE_PIXELS == 89_478_485


@pytest.mark.parametrize("height,width", [(0, 5), (5, 0)])
def test_an_image_declaring_no_pixels_is_refused(tmp_path, height, width):
    path = _declaring(tmp_path / "empty.png", height, width)
    with pytest.raises(UnidentifiedImageError, match=r"empty.png'.*declaring a width and a height of at least 1"):
        decode_image(path)


@pytest.mark.parametrize("maximum", [1.0, 1.01, 255.0])
def test_a_float_tiff_is_refused_whatever_its_values(tmp_path, maximum):
    Image.fromarray(np.array([[0.0, 0.5], [0.25, maximum]], dtype=np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match=r"float.tif' holds 32-bit floating point samples \(Pillow mode 'F'\), "
                                         r"which have no defined white point; expected 8-bit modes .*"
                                         r"convert it to 8 or 16 bits"):
        decode_image(tmp_path / "float.tif")


@pytest.mark.parametrize("samples", [np.array([[70000, 1]], dtype=np.int32), np.array([[-5, 300]], dtype=np.int16)])
def test_a_32bit_or_signed_integer_tiff_is_refused(tmp_path, samples):
    Image.fromarray(samples).save(tmp_path / "wide.tif")
    with pytest.raises(ValueError, match=r"wide.tif' holds integer samples wider than 16 bits or signed "
                                         r"\(Pillow mode 'I' from a TIFF file\).*16-bit modes"):
        decode_image(tmp_path / "wide.tif")


def test_a_folder_skips_a_float_tiff_with_our_message(tmp_path):
    Image.fromarray(np.zeros((4, 4), dtype=np.float32)).save(tmp_path / "float.tif")
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "gray.png")
    source = folder_dataset(tmp_path)
    with pytest.warns(UserWarning, match=r"skipped unreadable image .*float.tif: ValueError: .*Pillow mode 'F'"):
        loaded = list(iter_images(source, "native", progress=False, workers=1))
    assert [meta["item"] for _, meta in loaded] == ["gray.png"]


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint16, SHAPES))
def test_to_rgb_uint8_scales_uint16_by_its_dtype(samples):
    assert np.array_equal(to_rgb_uint8(samples)[..., 0], _round_257(samples))


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, SHAPES, elements=st.floats(0.0, 1.0)))
def test_to_rgb_uint8_maps_float_zero_one_to_0_255(samples):
    assert np.array_equal(to_rgb_uint8(samples)[..., 0], np.round(samples * 255).astype(np.uint8))


@pytest.mark.parametrize("value", [1.01, -0.01, 255.0, np.nan])
def test_to_rgb_uint8_refuses_floats_outside_zero_one(value):
    samples = np.full((3, 4), 0.5)
    samples[1, 2] = value
    with pytest.raises(ValueError, match=r"array of dtype float64 must hold values in \[0, 1\]"):
        to_rgb_uint8(samples)


def test_to_rgb_uint8_refuses_other_dtypes_and_shapes():
    for dtype in (np.int16, np.int64, np.uint32):
        with pytest.raises(ValueError, match=f"array dtype must be bool, uint8, uint16 or floating point, got "
                                             f"{np.dtype(dtype).name}"):
            to_rgb_uint8(np.zeros((3, 4), dtype=dtype))
    for shape in ((3,), (3, 4, 5), (2, 3, 4, 3)):
        with pytest.raises(ValueError, match=re.escape(f"array must be (H, W) or (H, W, C) with C in (1, 2, 3, 4), "
                                                       f"got shape {shape}")):
            to_rgb_uint8(np.zeros(shape, dtype=np.uint8))


def test_to_rgb_uint8_channels():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for array in (gray, gray[..., None], np.dstack([gray, 255 - gray])):
        assert np.array_equal(to_rgb_uint8(array), np.dstack([gray] * 3))
    rgba = np.dstack([gray, gray + 1, gray + 2, np.zeros_like(gray)])
    assert np.array_equal(to_rgb_uint8(rgba), rgba[..., :3])
    assert np.array_equal(to_rgb_uint8(gray > 5)[..., 0], np.where(gray > 5, 255, 0))
