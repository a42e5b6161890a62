"""Frame sources for the stream runner: video files, image folders, named datasets.

Every source yields :class:`Frame` objects (a uint8 image ``(C, H, W)`` at its own size,
and its label when known) one at a time, and counts what it had to skip:

* :class:`VideoSource` decodes a video file with PyAV (FFmpeg), packet by packet; a
  packet the decoder rejects is skipped and counted, a missing or unreadable file is a
  clear error before the first frame. Labels, when given, are one per frame in order; a
  frame's position comes from its timestamp (at the stream's average frame rate), so a
  skipped frame leaves a gap rather than shifting later labels. What FFmpeg decodes
  without complaint is used: with inter-frame codecs, frames after a damaged one may
  decode wrongly without an error, so only rejected packets are counted.
* :class:`FolderSource` reads an image folder: ``root/<class>/<images>`` (labelled, via
  :class:`vitres.data.ImageFolderDataset`) or images directly in ``root`` (unlabelled,
  in file-name order). Files Pillow cannot decode are skipped and counted.
* :class:`DatasetSource` streams a named dataset (``fashion-mnist``) split with labels.

:func:`open_source` picks one from a command-line string.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from vitres.data.folder import IMAGE_EXTENSIONS, ImageFolderDataset

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts")


@dataclass(frozen=True)
class Frame:
    """One frame of a stream.

    Attributes:
        image: uint8 tensor (C, H, W) at the source's own size.
        label: Class index when known.
        index: Position in the source, skipped frames included.
        name: Where it came from (file path, or ``"frame 12"``).
    """

    image: Tensor
    label: int | None
    index: int
    name: str


@dataclass
class SkipLog:
    """Frames a source could not decode: how many, and why (the first few reasons)."""

    count: int = 0
    reasons: list[str] = field(default_factory=list)
    keep: int = 20

    def add(self, reason: str) -> None:
        self.count += 1
        if len(self.reasons) < self.keep:
            self.reasons.append(reason)

    def summary(self) -> str:
        if not self.count:
            return "no frames skipped"
        shown = "; ".join(self.reasons[:3]) + ("; ..." if self.count > 3 else "")
        return f"skipped {self.count} undecodable frame(s): {shown}"


def read_labels(path: str | os.PathLike[str]) -> list[int]:
    """Labels from a text file: one class index per line (blank lines ignored).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line that is not a non-negative integer.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"labels file {os.fspath(path)} does not exist")
    labels = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            text = line.strip()
            if not text:
                continue
            if not text.isdigit():
                raise ValueError(
                    f"{os.fspath(path)}, line {number}: expected one class index (a "
                    f"non-negative integer) per line, got {text!r}"
                )
            labels.append(int(text))
    return labels


STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt", "file")
# "<format>:<device>" names a capture device through one of FFmpeg's input devices
DEVICE_FORMATS = ("v4l2", "video4linux2", "avfoundation", "dshow", "x11grab", "gdigrab")


def stream_target(spec: str) -> tuple[str, str | None] | None:
    """``(what to open, FFmpeg input format)`` for a stream URL or a capture device, or
    ``None`` for anything else: ``rtsp://…``, ``http(s)://…``, ``file:///path``,
    ``v4l2:/dev/video0`` (or another of :data:`DEVICE_FORMATS`), or a character device
    such as ``/dev/video0`` (read with ``v4l2``)."""
    scheme, sep, rest = spec.partition("://")
    if sep and scheme.lower() in STREAM_SCHEMES:
        return (rest if scheme.lower() == "file" else spec), None
    fmt, sep, device = spec.partition(":")
    if sep and fmt.lower() in DEVICE_FORMATS and device:
        return device, fmt.lower()
    try:
        if stat.S_ISCHR(os.stat(spec).st_mode):
            return spec, "v4l2"
    except OSError:
        pass
    return None


class VideoSource:
    """Frames of a video file, a stream or a capture device, decoded with PyAV.

    Args:
        path: The video file, a stream URL (``rtsp://``, ``http(s)://``, ``file://``...)
            or a capture device (``v4l2:/dev/video0``, ``/dev/video0``): see
            :func:`stream_target`.
        in_chans: 1 (greyscale frames) or 3 (RGB).
        labels: One class index per frame (a list or a labels file), optional.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not a video FFmpeg can open (a stream that does not answer, a device
            that is not there), or no video stream in it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        in_chans: int = 1,
        labels: Sequence[int] | str | os.PathLike[str] | None = None,
    ) -> None:
        import av

        self.path = os.fspath(path)
        self.name = self.path
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 (greyscale) or 3 (RGB), got {in_chans}")
        self.in_chans = in_chans
        target = stream_target(self.path)
        self.target, self.format = target if target is not None else (self.path, None)
        if target is None and not os.path.isfile(self.path):
            raise FileNotFoundError(f"video file {self.path} does not exist")
        try:
            with self._open() as container:
                streams = container.streams.video
                if not streams:
                    raise ValueError(
                        f"{self.path} holds no video stream (only "
                        f"{', '.join(s.type for s in container.streams) or 'nothing'}); give "
                        "a video file"
                    )
                stream = streams[0]
                self.codec = stream.codec_context.name
                self.frames_hint = int(stream.frames or 0) or None
        except av.error.FFmpegError as error:
            what = (
                "a video file FFmpeg can decode (mp4, mkv, avi, ...) -- is it corrupt or truncated?"
                if target is None
                else "a stream or device that answers -- is the address right and the "
                "stream or camera up?"
            )
            raise ValueError(
                f"cannot open {self.path} as a video ({error.strerror or error}); expected {what}"
            ) from None
        self.labels = (
            None
            if labels is None
            else (read_labels(labels) if isinstance(labels, (str, os.PathLike)) else list(labels))
        )
        self.classes: tuple[str, ...] | None = None
        self.skipped = SkipLog()

    def __len__(self) -> int:
        return self.frames_hint or 0

    def _open(self):  # noqa: ANN202 - an av container
        import av

        options = {"rw_timeout": "10000000"} if self.target != self.path or self.format else {}
        return av.open(self.target, format=self.format, options=options, timeout=10.0)

    def _frame(self, image: np.ndarray, index: int) -> Frame:
        if image.ndim == 2:
            image = image[:, :, None]
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()
        label = None
        if self.labels is not None and index < len(self.labels):
            label = self.labels[index]
        return Frame(tensor, label, index, f"frame {index}")

    def __iter__(self) -> Iterator[Frame]:
        import av

        pixel_format = "gray" if self.in_chans == 1 else "rgb24"
        index = -1  # of the last frame yielded
        with self._open() as container:
            stream = container.streams.video[0]
            rate, time_base = stream.average_rate, stream.time_base
            start = stream.start_time or 0
            packets = container.demux(stream)
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    break
                except av.error.FFmpegError as error:  # a damaged container: stop here
                    self.skipped.add(f"demuxing stopped after frame {index}: {error.strerror}")
                    break
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError as error:
                    self.skipped.add(
                        f"frame at {_seconds(packet.pts, time_base)}: {error.strerror or error}"
                    )
                    continue
                for video_frame in decoded:
                    # the frame's position from its timestamp, so a rejected packet leaves
                    # a gap instead of shifting every later label
                    position = index + 1
                    if video_frame.pts is not None and rate and time_base:
                        position = round(float((video_frame.pts - start) * time_base * rate))
                    index = max(position, index + 1)
                    yield self._frame(video_frame.to_ndarray(format=pixel_format), index)


def _seconds(pts: int | None, time_base: object) -> str:
    if pts is None or not time_base:
        return "unknown time"
    return f"{float(pts * time_base):.3f} s"


class FolderSource:
    """Images of a folder, in file order: labelled when laid out one sub-folder per class.

    Args:
        root: The folder.
        in_chans: 1 (greyscale) or 3 (RGB).

    Raises:
        FileNotFoundError: not a folder.
        ValueError: a folder with neither class sub-folders nor images.
    """

    def __init__(self, root: str | os.PathLike[str], in_chans: int = 1) -> None:
        self.root = os.fspath(root)
        self.name = self.root
        self.in_chans = in_chans
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        loose = sorted(
            os.path.join(self.root, f)
            for f in os.listdir(self.root)
            if not f.startswith(".")
            and f.lower().endswith(IMAGE_EXTENSIONS)
            and os.path.isfile(os.path.join(self.root, f))
        )
        self.dataset: ImageFolderDataset | None = None
        if loose:
            self.files = loose
            self.classes: tuple[str, ...] | None = None
        else:
            self.dataset = ImageFolderDataset(self.root, in_chans=in_chans)
            self.files = [path for path, _ in self.dataset.samples]
            self.classes = self.dataset.classes
        self.skipped = SkipLog()

    def __len__(self) -> int:
        return len(self.files)

    def _decode(self, path: str) -> Tensor | None:
        """The image at ``path`` as uint8 (in_chans, H, W), or ``None`` (skip counted)."""
        from PIL import Image

        from vitres.data.folder import image_to_tensor

        try:
            with Image.open(path) as image:
                image.load()
                return image_to_tensor(image, self.in_chans)  # upright (EXIF orientation)
        except Exception as error:  # a bad file must never stop the stream
            reason = "empty file" if os.path.getsize(path) == 0 else type(error).__name__
            self.skipped.add(f"{os.path.relpath(path, self.root)} ({reason}: {error})")
            return None

    def __iter__(self) -> Iterator[Frame]:
        for index, path in enumerate(self.files):
            if self.dataset is None:
                image, label = self._decode(path), None
            else:
                item = self.dataset[index]
                image, label = (None, None) if item is None else item
                if item is None:
                    reason = self.dataset.bad_files.get(path, "undecodable")
                    self.skipped.add(f"{os.path.relpath(path, self.root)} ({reason})")
            if image is not None:
                yield Frame(image, label, index, path)


class DatasetSource:
    """A named dataset split as a labelled stream (see :func:`vitres.data.get_dataset`).

    Args:
        name: ``"fashion-mnist"``.
        split: ``"test"`` (default) or ``"train"``.
        data_dir: Folder of the dataset's files.
        start: First example.
    """

    def __init__(
        self, name: str, split: str = "test", data_dir: str | None = None, start: int = 0
    ) -> None:
        from vitres.data import get_dataset

        self.dataset = get_dataset(name, split, data_dir=data_dir)
        self.name = f"{name}/{split}"
        self.start = start
        self.classes = getattr(self.dataset, "classes", None)
        self.skipped = SkipLog()

    def __len__(self) -> int:
        return max(0, len(self.dataset) - self.start)

    def __iter__(self) -> Iterator[Frame]:
        for index in range(self.start, len(self.dataset)):
            item = self.dataset[index]
            if item is None:
                self.skipped.add(f"example {index}")
                continue
            image, label = item
            yield Frame(image, int(label), index, f"{self.name}[{index}]")


Source = VideoSource | FolderSource | DatasetSource


def open_source(
    spec: str,
    in_chans: int = 1,
    *,
    labels: str | os.PathLike[str] | Sequence[int] | None = None,
    split: str = "test",
    data_dir: str | None = None,
) -> Source:
    """The source a command-line string names: a dataset name, a folder, a video file, a
    stream URL or a capture device (:func:`stream_target`).

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a file that is not a video, or labels given for a non-video source.
    """
    from vitres.data import FASHION_MNIST_ALIASES

    if spec.lower() in FASHION_MNIST_ALIASES:
        source: Source = DatasetSource(spec.lower(), split=split, data_dir=data_dir)
    elif os.path.isdir(spec):
        source = FolderSource(spec, in_chans=in_chans)
    elif os.path.isfile(spec) or stream_target(spec) is not None:
        return VideoSource(spec, in_chans=in_chans, labels=labels)
    else:
        raise FileNotFoundError(
            f"source {spec!r} is neither an existing video file or image folder, a stream URL "
            f"({', '.join(s + '://' for s in STREAM_SCHEMES)}), a capture device "
            f"(v4l2:/dev/video0) nor a known dataset ({', '.join(FASHION_MNIST_ALIASES)})"
        )
    if labels is not None:
        raise ValueError(
            "labels files are for video sources; folders take labels from their class "
            "sub-folders and datasets carry their own"
        )
    return source
