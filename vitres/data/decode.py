"""Decoding one uploaded image (bytes in any format Pillow reads) into a uint8 tensor,
with limits on its size, and clear errors for input that is not an image.

The server (:mod:`vitres.serve.app`) calls this on every request, so nothing here
may crash on hostile input: every failure is an :class:`ImageInputError` that says what
was wrong. Pillow reads the header first (``Image.open`` is lazy), so the pixel limit is
checked before any pixel is decoded -- a small file that claims to be 100 000 x 100 000
pixels (a "decompression bomb") is refused without allocating it. :func:`open_image`
stops there, so that the server can decode small images on its event loop and large ones
in a thread, from one parse of the header.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from PIL import Image, UnidentifiedImageError

from vitres.data.folder import image_to_tensor
from vitres.limits import DEFAULT_MAX_PIXELS

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageInputError",
    "ImageTooLargeError",
    "OpenedImage",
    "decode_image",
    "open_image",
    "small_image_warning",
]

# file signatures, to tell "a damaged PNG" from "not an image at all"
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"RIFF", "WebP"),
)


class ImageInputError(ValueError):
    """The bytes are not a readable image (empty, unknown format, truncated, corrupt)."""


class ImageTooLargeError(ImageInputError):
    """The image is larger than the byte or pixel limit it was decoded under."""


@contextmanager
def _image_errors(data: bytes) -> Iterator[None]:
    """Turns whatever Pillow raises on ``data`` into an :class:`ImageInputError` that
    says what was wrong."""
    try:
        with warnings.catch_warnings():
            # Pillow warns about (and at 2x its own limit refuses) decompression bombs;
            # our own pixel limit decides, with its own message.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except ImageTooLargeError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(f"the image is too large to decode safely: {error}") from None
    except UnidentifiedImageError:
        kind = next((name for magic, name in _SIGNATURES if data.startswith(magic)), None)
        if kind is not None:
            raise ImageInputError(
                f"the body starts like a {kind} file but its header is corrupt; Pillow cannot "
                "read it. Re-encode the image and send it again"
            ) from None
        head = data[:8].hex(" ")
        raise ImageInputError(
            f"the body is not an image Pillow can read (first bytes: {head}); send the file "
            "itself (PNG, JPEG, BMP, GIF, TIFF, WebP...) as the raw body or as a multipart file"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageInputError(
            f"the image is corrupt or truncated and could not be decoded ({type(error).__name__}: "
            f"{error})"
        ) from None


@dataclass
class OpenedImage:
    """An image whose header has been read and checked against the limits, and whose
    pixels have not been decoded yet (:func:`open_image`; decode with :meth:`decode`).

    Attributes:
        data: The encoded file.
        image: Pillow's lazily opened image.
        pixels: Height x width, from the header.
    """

    data: bytes
    image: Image.Image
    pixels: int

    def decode(self, in_chans: int) -> torch.Tensor:
        """The pixels as a uint8 tensor ``(in_chans, H, W)`` (first frame of a
        multi-frame file; see :func:`decode_image` for the conversions).

        Raises:
            ImageInputError: the file is corrupt or truncated.
            ValueError: ``in_chans`` is not 1 or 3.
        """
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 (greyscale) or 3 (RGB); got {in_chans}")
        with _image_errors(self.data):
            self.image.seek(0)
            self.image.load()
            return image_to_tensor(self.image, in_chans)


def open_image(
    data: bytes, *, max_bytes: int | None = None, max_pixels: int | None = None
) -> OpenedImage:
    """Reads an encoded image's header (nothing is decoded) and checks the limits, so
    that a caller can decide where to decode it from its size.

    Args:
        data: The encoded file (PNG, JPEG, BMP, GIF, TIFF, WebP, PNM...).
        max_bytes: Refuse files larger than this many bytes.
        max_pixels: Refuse images with more than this many pixels (height x width).

    Raises:
        ImageTooLargeError: over ``max_bytes`` or ``max_pixels``.
        ImageInputError: empty, not an image, or a corrupt header.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageTooLargeError(
            f"the upload is {len(data)} bytes, over the limit of {max_bytes} bytes; "
            "send a smaller (or more compressed) image"
        )
    if not data:
        raise ImageInputError("the request holds no image: the body (or file part) is empty")
    with _image_errors(data):
        image = Image.open(io.BytesIO(data))
        width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"the image is {width}x{height} = {width * height} pixels, over the limit "
            f"of {max_pixels} pixels; resize it before sending"
        )
    return OpenedImage(data, image, int(width) * int(height))


def decode_image(
    data: bytes,
    in_chans: int,
    *,
    max_bytes: int | None = None,
    max_pixels: int | None = None,
) -> torch.Tensor:
    """Decodes an encoded image to a uint8 tensor ``(in_chans, H, W)``.

    Multi-frame files (GIF, TIFF) give their first frame. Colour images are converted to
    greyscale with Pillow's ITU-R 601-2 luma for ``in_chans=1``; 16-bit greyscale is
    rescaled to 8 bits.

    Args:
        data: The encoded file (PNG, JPEG, BMP, GIF, TIFF, WebP, PNM...).
        in_chans: Channels wanted: 1 (greyscale) or 3 (RGB).
        max_bytes: Refuse files larger than this many bytes.
        max_pixels: Refuse images with more than this many pixels (height x width).

    Raises:
        ImageTooLargeError: over ``max_bytes`` or ``max_pixels``.
        ImageInputError: empty, not an image, or corrupt / truncated.
        ValueError: ``in_chans`` is not 1 or 3.
    """
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 (greyscale) or 3 (RGB); got {in_chans}")
    return open_image(data, max_bytes=max_bytes, max_pixels=max_pixels).decode(in_chans)


def small_image_warning(height: int, width: int, patch: int) -> str | None:
    """A sentence when an image is smaller than one ``patch``: it is still answered
    (upscaled to the resolution used), but the answer carries little information."""
    if min(int(height), int(width)) >= patch:
        return None
    return (
        f"the image is {height}x{width} px, smaller than one {patch}x{patch} patch: it is "
        "upscaled, so the answer carries little information"
    )
