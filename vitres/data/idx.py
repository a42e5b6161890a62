"""Reader for the IDX format, the container of MNIST and Fashion-MNIST.

The format is described with the MNIST database (LeCun, Bottou, Bengio and Haffner,
"Gradient-based learning applied to document recognition", Proc. IEEE 1998):

```
byte 0-1   0x00 0x00            magic
byte 2     dtype code           0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                                0x0D float32, 0x0E float64
byte 3     ndim
4 * ndim   dims, big-endian uint32
rest       payload, row-major, big-endian
```

Files may be gzipped (detected from the gzip magic bytes ``1f 8b``, not from the name).
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

__all__ = ["IDX_DTYPES", "read_idx"]

#: IDX dtype code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: str) -> bytes:
    """Returns the raw (decompressed when gzipped) content of ``path``."""
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise ValueError(
            f"{path}: gzip stream is truncated or corrupt ({e}); expected a complete "
            "gzip-compressed IDX file. Re-download or reinstall the file."
        ) from e


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an IDX file (gzipped or raw) into a numpy array.

    Args:
        path: Path to the ``.idx`` / ``-ubyte`` file, optionally gzip-compressed.

    Returns:
        An array with the file's shape, in native byte order, with the dtype named by
        the file (uint8 for MNIST-style images and labels).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is truncated, has a bad magic number, an unknown
            dtype code, or a payload whose length does not match its dims.
    """
    path = os.fspath(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(
            f"{path}: file is {len(data)} bytes long; expected at least a 4-byte IDX header "
            "(0x00 0x00 <dtype code> <ndim>). The file is truncated or not an IDX file."
        )
    if data[0] != 0 or data[1] != 0:
        raise ValueError(
            f"{path}: bad IDX magic {data[:4].hex(' ')}; expected the file to start with "
            "two zero bytes, then a dtype code and the number of dimensions. "
            "This is not an IDX file (or it is garbled)."
        )
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X} ({d.name})" for c, d in IDX_DTYPES.items())
        raise ValueError(f"{path}: unknown IDX dtype code 0x{code:02X}; expected one of {known}.")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares 0 dimensions; expected ndim >= 1.")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(
            f"{path}: header declares {ndim} dimensions ({header_len} header bytes) but the "
            f"file has only {len(data)} bytes. The file is truncated."
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header_len
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise ValueError(
            f"{path}: payload is {actual} bytes but dims {dims} of {dtype.name} need "
            f"{expected} bytes; the file {what}."
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
    # Native byte order and a writable copy that owns its memory.
    return array.astype(dtype.newbyteorder("="), copy=True)
