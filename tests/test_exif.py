"""A phone photo's EXIF orientation is applied in every decode path: the server's, image
folders (training, evaluation, sweeps), `vitres run` folders and `vitres explain`."""

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from vitres.data.decode import decode_image
from vitres.data.folder import ImageFolderDataset
from vitres.explain.image import load_image


def phone_jpeg(orientation: int = 6) -> bytes:
    """A 40x20 (w x h) stored photo whose EXIF says: show it rotated (orientation 6:
    displayed 20 wide, 40 tall)."""
    rng = np.random.default_rng(0)
    pixels = (rng.random((20, 40, 3)) * 255).astype(np.uint8)
    pixels[:5, :10] = 255  # a bright corner, to see where it goes
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", exif=exif, quality=95)
    return buffer.getvalue()


def upright(data: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as image:
        shown = ImageOps.exif_transpose(image).convert("RGB")
        return torch.from_numpy(np.asarray(shown).copy()).permute(2, 0, 1)


@pytest.mark.parametrize("orientation,shape", [(6, (40, 20)), (3, (20, 40)), (1, (20, 40))])
def test_every_decode_path_applies_the_orientation(tmp_path, orientation, shape):
    data = phone_jpeg(orientation)
    expected = upright(data)
    assert tuple(expected.shape[1:]) == shape
    served = decode_image(data, 3)
    assert torch.equal(served, expected)
    folder = tmp_path / "photos" / "cat"
    folder.mkdir(parents=True)
    (folder / "a.jpg").write_bytes(data)
    image, label = ImageFolderDataset(tmp_path / "photos", in_chans=3)[0]
    assert label == 0 and torch.equal(image, expected)
    assert torch.equal(load_image(folder / "a.jpg", 3), expected)
    from vitres.runtime.sources import open_source

    source = open_source(str(folder), in_chans=3)
    frame = next(iter(source))
    assert torch.equal(frame.image, expected)
