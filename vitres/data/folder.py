"""Image-folder dataset: one sub-folder per class, images decoded lazily with Pillow.

Layout::

    root/<class_name>/<image files>      (nested folders inside a class are searched too)

Class indices follow the sorted class-folder names. Images keep their own size; the
resolution a model sees is chosen by the loader (:mod:`vitres.data.loader`).
A file Pillow cannot decode never stops a job: it is skipped and recorded in
:attr:`ImageFolderDataset.bad_files`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset"]

#: File extensions (lower case) that are treated as images.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
)

_PIL_MODES = {1: "L", 3: "RGB"}

_LAYOUT = (
    "Expected the layout root/<class_name>/<image files>, e.g. root/cat/001.png and "
    "root/dog/002.jpg (one sub-folder per class)."
)


def _has_extension(name: str, extensions: tuple[str, ...]) -> bool:
    return name.lower().endswith(extensions)


def _list_images(folder: str, extensions: tuple[str, ...]) -> list[str]:
    """All image files under ``folder`` (recursively), sorted, hidden entries skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(
            os.path.join(dirpath, f)
            for f in sorted(filenames)
            if not f.startswith(".") and _has_extension(f, extensions)
        )
    return found


def image_to_tensor(image: Image.Image, in_chans: int) -> torch.Tensor:
    """Converts a Pillow image to a uint8 tensor (in_chans, H, W), upright: a JPEG's EXIF
    orientation (a phone photo's rotation or mirroring) is applied first, as a viewer
    shows it."""
    image = ImageOps.exif_transpose(image) or image
    if image.mode.startswith("I;16"):
        # 16-bit greyscale: Pillow's convert("L") clips at 255; rescale to 8 bits instead.
        wide = np.asarray(image, dtype=np.uint16)
        image = Image.fromarray((wide >> 8).astype(np.uint8))  # 2-D uint8 -> "L"
    mode = _PIL_MODES[in_chans]
    if image.mode != mode:
        image = image.convert(mode)
    width, height = image.size
    if width * height == 0:
        return torch.zeros(in_chans, height, width, dtype=torch.uint8)
    # one copy of the decoded pixels, into memory the tensor owns (Pillow's own buffer
    # is read-only); interleaved (H, W, C) -> (C, H, W)
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    if in_chans == 1:
        return pixels.view(1, height, width)
    return pixels.view(height, width, in_chans).permute(2, 0, 1).contiguous()


def _describe_error(path: str, error: Exception) -> str:
    """A short reason for a failed decode, without repeating the path."""
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return "empty file (0 bytes)"
    if isinstance(error, UnidentifiedImageError):
        return "cannot identify image file"
    message = str(error).replace(repr(path), "").replace(path, "").strip(" :")
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


class ImageFolderDataset:
    """A classification dataset read from ``root/<class_name>/<image files>``.

    Items are ``(image, label)`` with ``image`` a uint8 tensor (in_chans, H, W) at the
    file's own size, or ``None`` when the file cannot be decoded (the file and the
    reason are then recorded in :attr:`bad_files`).

    Attributes:
        root: The dataset folder.
        in_chans: Channels of the returned images (1: greyscale, 3: RGB).
        classes: Sorted class names; ``classes[k]`` is the name of label ``k``.
        class_to_idx: Class name -> label.
        samples: ``(path, label)`` for every image file, in class then file order.
        bad_files: Path -> reason, for every file that failed to decode so far.
        name: Human-readable name (the root path).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        in_chans: int = 3,
        extensions: Iterable[str] = IMAGE_EXTENSIONS,
    ) -> None:
        """Scans ``root`` for class folders and image files (no image is decoded here).

        Args:
            root: Dataset folder holding one sub-folder per class.
            in_chans: 1 to convert every image to greyscale ('L'), 3 for RGB.
            extensions: File-name endings treated as images (case-insensitive).

        Raises:
            FileNotFoundError: If ``root`` is not a folder.
            ValueError: If ``in_chans`` is not 1 or 3, or the folder does not follow the
                expected layout (no class folders, images directly in root, or a class
                folder without images).
        """
        self.root = os.fspath(root)
        if in_chans not in _PIL_MODES:
            raise ValueError(f"in_chans must be 1 (greyscale) or 3 (RGB); got {in_chans}.")
        self.in_chans = in_chans
        self.extensions = tuple(
            e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions
        )
        self.name = self.root
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"Image folder {self.root} does not exist. {_LAYOUT}")

        entries = sorted(e for e in os.listdir(self.root) if not e.startswith("."))
        class_dirs = [e for e in entries if os.path.isdir(os.path.join(self.root, e))]
        loose = [
            e
            for e in entries
            if os.path.isfile(os.path.join(self.root, e)) and _has_extension(e, self.extensions)
        ]
        if loose:
            shown = ", ".join(loose[:3]) + (", ..." if len(loose) > 3 else "")
            raise ValueError(
                f"Image folder {self.root} has {len(loose)} image file(s) directly in it "
                f"({shown}); images must sit inside one sub-folder per class. {_LAYOUT}"
            )
        if not class_dirs:
            what = "is empty" if not entries else "has no class sub-folders"
            raise ValueError(f"Image folder {self.root} {what}. {_LAYOUT}")

        self.classes: tuple[str, ...] = tuple(class_dirs)
        self.class_to_idx: dict[str, int] = {c: i for i, c in enumerate(self.classes)}
        self.samples: list[tuple[str, int]] = []
        for name in self.classes:
            files = _list_images(os.path.join(self.root, name), self.extensions)
            if not files:
                raise ValueError(
                    f"Class folder {os.path.join(self.root, name)} holds no image files "
                    f"(accepted extensions: {' '.join(self.extensions)}). {_LAYOUT}"
                )
            self.samples.extend((f, self.class_to_idx[name]) for f in files)
        self.bad_files: dict[str, str] = {}

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def targets(self) -> list[int]:
        """The label of every sample, in sample order."""
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        """Decodes one image.

        Returns:
            ``(image, label)`` with ``image`` uint8 (in_chans, H, W), or ``None`` if the
            file could not be decoded (recorded in :attr:`bad_files`).
        """
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                image.load()
                tensor = image_to_tensor(image, self.in_chans)
        except Exception as error:  # a bad file must never stop a job
            self.bad_files[path] = _describe_error(path, error)
            return None
        return tensor, label

    def report(self) -> str:
        """A one-line human summary of the files skipped so far."""
        if not self.bad_files:
            return f"all files readable so far ({len(self)} images in {len(self.classes)} classes)"
        items = ", ".join(
            f"{os.path.relpath(path, self.root)} ({reason})"
            for path, reason in self.bad_files.items()
        )
        count = len(self.bad_files)
        return f"skipped {count} unreadable file{'s' if count != 1 else ''}: {items}"

    def __repr__(self) -> str:
        return (
            f"ImageFolderDataset(root={self.root!r}, in_chans={self.in_chans}, "
            f"{len(self)} images, {len(self.classes)} classes)"
        )
