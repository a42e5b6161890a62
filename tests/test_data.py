"""Tests for vitres.data: IDX reader, Fashion-MNIST, image folders, transforms, loader."""

from __future__ import annotations

import gzip
import math
import os
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from vitres.data import (
    DEFAULT_FMNIST_DIR,
    FASHION_MNIST_CLASSES,
    FMNIST_MEAN,
    FMNIST_STD,
    ArrayDataset,
    ImageFolderDataset,
    epoch_order,
    eval_batches,
    get_dataset,
    iterate_batches,
    load_fashion_mnist,
    match_channels,
    normalize,
    prepare_batch,
    random_hflip,
    random_resized_crop,
    read_idx,
    resize,
    sample_crop_box,
    to_float,
)

# ---------------------------------------------------------------- helpers

_IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encodes an array as an IDX file, written out by hand from the format description."""
    code = _IDX_CODES[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path, data: bytes, gz: bool = False) -> str:
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if gz else data)
    return str(path)


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_uint8_3d_and_1d(tmp_path, gz):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 7
    labels = np.array([9, 0, 255], dtype=np.uint8)
    # No .gz suffix on purpose: compression is detected from the magic bytes.
    got_images = read_idx(write(tmp_path / "images", idx_bytes(images), gz))
    got_labels = read_idx(write(tmp_path / "labels", idx_bytes(labels), gz))
    assert got_images.dtype == np.uint8 and got_images.shape == (2, 3, 4)
    np.testing.assert_array_equal(got_images, images)
    assert got_labels.shape == (3,)
    np.testing.assert_array_equal(got_labels, labels)


def test_read_idx_big_endian_int32_and_float32(tmp_path):
    ints = np.array([[1, -2, 70000], [-(2**31), 2**31 - 1, 0]], dtype=np.int32)
    got = read_idx(write(tmp_path / "ints.idx", idx_bytes(ints)))
    assert got.dtype == np.int32 and got.dtype.isnative
    np.testing.assert_array_equal(got, ints)
    # Bytes written by hand: 0x00000102 = 258, big-endian.
    raw = bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 1) + bytes([0, 0, 1, 2])
    assert read_idx(write(tmp_path / "one.idx", raw)).tolist() == [258]
    floats = np.array([0.5, -1.25, 3e8], dtype=np.float32)
    np.testing.assert_array_equal(
        read_idx(write(tmp_path / "f.idx.gz", idx_bytes(floats), True)), floats
    )


def test_read_idx_rejects_bad_files(tmp_path):
    good = idx_bytes(np.zeros((2, 3, 3), dtype=np.uint8))
    cases = {
        "truncated payload": (good[:-1], "truncated"),
        "trailing bytes": (good + b"\x00", "trailing"),
        "bad magic": (b"\x01\x00" + good[2:], "magic"),
        "unknown dtype": (good[:2] + b"\x07" + good[3:], "dtype code"),
        "short header": (good[:6], "truncated"),
        "tiny": (b"\x00\x00", "at least"),
    }
    for name, (data, needle) in cases.items():
        path = write(tmp_path / name.replace(" ", "_"), data)
        with pytest.raises(ValueError, match=needle) as info:
            read_idx(path)
        assert path in str(info.value), name
    truncated_gz = gzip.compress(good)[:-6]
    path = write(tmp_path / "cut.gz", truncated_gz)
    with pytest.raises(ValueError, match="gzip"):
        read_idx(path)
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "absent.idx")


# ---------------------------------------------------------------- Fashion-MNIST


def _write_fake_fmnist(folder, images: np.ndarray, labels: np.ndarray) -> None:
    os.makedirs(folder, exist_ok=True)
    for prefix in ("train", "t10k"):
        write(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), idx_bytes(images), True)
        write(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), idx_bytes(labels), True)


def test_fashion_mnist_from_fake_files(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    labels = np.array([3, 0, 9, 3], dtype=np.uint8)
    _write_fake_fmnist(tmp_path, images, labels)
    ds = load_fashion_mnist("test", data_dir=str(tmp_path))
    assert ds.images.shape == (4, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == [3, 0, 9, 3]
    np.testing.assert_array_equal(ds.images[2, 0].numpy(), images[2])
    image, label = ds[3]
    assert label == 3 and torch.equal(image, torch.from_numpy(images[3])[None])
    assert ds.classes == FASHION_MNIST_CLASSES and ds.num_classes == 10
    # In-process cache: the second call shares the decoded tensor.
    assert load_fashion_mnist("test", data_dir=str(tmp_path)).images is ds.images


def test_fashion_mnist_count_mismatch_and_missing(tmp_path):
    _write_fake_fmnist(tmp_path / "bad", np.zeros((3, 28, 28), np.uint8), np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match="3 images .* 2 labels"):
        load_fashion_mnist("train", data_dir=str(tmp_path / "bad"))
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist("train", data_dir=str(tmp_path / "nothing"))
    message = str(info.value)
    assert "sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist" in message
    assert "--data-dir DIR" in message and "train-images-idx3-ubyte.gz" in message
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation", data_dir=str(tmp_path / "bad"))


_HAVE_FMNIST = all(
    os.path.isfile(os.path.join(DEFAULT_FMNIST_DIR, f))
    for f in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    )
)


@pytest.mark.skipif(
    not _HAVE_FMNIST,
    reason=f"Fashion-MNIST not installed in {DEFAULT_FMNIST_DIR} (run scripts/ensure_data.sh)",
)
def test_real_fashion_mnist():
    train = load_fashion_mnist("train")
    test = get_dataset("fmnist", "test")
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28) and test.labels.dtype == torch.int64
    assert torch.bincount(train.labels, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(test.labels, minlength=10).tolist() == [1000] * 10
    assert int(train.labels.min()) == 0 and int(train.labels.max()) == 9
    # The published normalisation constants are the train-set statistics.
    hist = torch.bincount(train.images.flatten(), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    mean = float((hist * values).sum() / hist.sum())
    std = math.sqrt(float((hist * (values - mean) ** 2).sum() / hist.sum()))
    assert round(mean, 4) == FMNIST_MEAN[0] and round(std, 4) == FMNIST_STD[0]


# ---------------------------------------------------------------- image folder

RGB = np.random.default_rng(1).integers(0, 256, (5, 4, 3), dtype=np.uint8)  # (H, W, 3)
GREY = np.random.default_rng(2).integers(0, 256, (3, 6), dtype=np.uint8)  # (H, W)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "data"
    (root / "cat").mkdir(parents=True)
    (root / "dog" / "nested").mkdir(parents=True)
    Image.fromarray(RGB).save(root / "cat" / "a_rgb.png")
    Image.fromarray(GREY).save(root / "cat" / "b_grey.png")
    Image.fromarray(np.full((7, 9, 3), 200, np.uint8)).save(root / "dog" / "c.jpg", quality=95)
    Image.fromarray(np.full((8, 8), 40, np.uint8)).save(root / "dog" / "nested" / "d.JPEG", "JPEG")
    write(root / "dog" / "corrupt.png", np.random.default_rng(3).bytes(300))
    write(root / "dog" / "empty.png", b"")
    write(root / "dog" / "notes.txt", b"not an image, ignored")
    return root


def test_image_folder_classes_and_pixels(folder):
    ds = ImageFolderDataset(folder, in_chans=3)
    assert ds.classes == ("cat", "dog") and ds.class_to_idx == {"cat": 0, "dog": 1}
    names = [os.path.relpath(p, folder) for p, _ in ds.samples]
    assert names == [
        "cat/a_rgb.png",
        "cat/b_grey.png",
        "dog/c.jpg",
        "dog/corrupt.png",
        "dog/empty.png",
        "dog/nested/d.JPEG",
    ]
    assert ds.targets == [0, 0, 1, 1, 1, 1]
    image, label = ds[0]
    assert label == 0 and image.dtype == torch.uint8 and image.shape == (3, 5, 4)
    assert torch.equal(image, torch.from_numpy(RGB).permute(2, 0, 1))
    grey3, _ = ds[1]  # greyscale file -> 3 equal channels
    assert grey3.shape == (3, 3, 6)
    for c in range(3):
        assert torch.equal(grey3[c], torch.from_numpy(GREY))

    ds1 = ImageFolderDataset(folder, in_chans=1)
    luma, _ = ds1[0]  # RGB file -> BT.601 luma
    expected = RGB.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert luma.shape == (1, 5, 4)
    assert np.abs(luma[0].numpy().astype(np.float64) - expected).max() <= 1.0
    grey1, _ = ds1[1]
    assert torch.equal(grey1[0], torch.from_numpy(GREY))
    jpeg, label = ds1[2]
    assert label == 1 and jpeg.shape == (1, 7, 9)
    assert abs(float(jpeg.float().mean()) - 200) < 3
    assert ds1.bad_files == {}


def test_image_folder_bad_files_are_skipped_and_reported(folder):
    ds = ImageFolderDataset(folder, in_chans=3)
    assert ds[3] is None and ds[4] is None
    batches = list(iterate_batches(ds, batch_size=4))
    assert [len(images) for images, _ in batches] == [3, 1]  # 2 bad files dropped
    labels = torch.cat([y for _, y in batches]).tolist()
    assert labels == [0, 0, 1, 1]
    shapes = [tuple(im.shape) for images, _ in batches for im in images]
    assert shapes == [(3, 5, 4), (3, 3, 6), (3, 7, 9), (3, 8, 8)]
    assert len(ds.bad_files) == 2
    report = ds.report()
    assert report.startswith("skipped 2 unreadable files: ")
    assert "dog/corrupt.png (cannot identify image file)" in report
    assert "dog/empty.png (empty file (0 bytes))" in report
    # Variable-size images become one model batch; a constant image stays constant.
    x = prepare_batch(batches[0][0], 8, mean=(0.5,), std=(0.25,), in_chans=1)
    assert x.shape == (3, 1, 8, 8) and x.dtype == torch.float32
    luma_200 = (200 / 255 - 0.5) / 0.25
    assert torch.allclose(x[2], torch.full((1, 8, 8), luma_200), atol=0.05)


def test_image_folder_layout_errors(tmp_path):
    layout = r"root/<class_name>/<image files>"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is empty") as info:
        ImageFolderDataset(tmp_path / "empty")
    assert layout in str(info.value)

    loose = tmp_path / "loose"
    loose.mkdir()
    Image.fromarray(GREY).save(loose / "x.png")
    with pytest.raises(ValueError, match="directly in it") as info:
        ImageFolderDataset(loose)
    assert layout in str(info.value)

    no_dirs = tmp_path / "no_dirs"
    no_dirs.mkdir()
    write(no_dirs / "README.txt", b"hello")
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolderDataset(no_dirs)

    empty_class = tmp_path / "empty_class"
    (empty_class / "a").mkdir(parents=True)
    (empty_class / "b").mkdir()
    Image.fromarray(GREY).save(empty_class / "a" / "x.png")
    with pytest.raises(ValueError, match="holds no image files") as info:
        ImageFolderDataset(empty_class)
    assert "empty_class/b" in str(info.value)

    with pytest.raises(FileNotFoundError):
        ImageFolderDataset(tmp_path / "absent")
    with pytest.raises(ValueError, match="in_chans"):
        ImageFolderDataset(empty_class, in_chans=2)


def test_get_dataset_splits_and_errors(tmp_path):
    for split, value in (("train", 10), ("val", 20)):
        for cls in ("x", "y"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.fromarray(np.full((2, 2), value, np.uint8)).save(tmp_path / split / cls / "i.png")
    train = get_dataset(str(tmp_path), "train", in_chans=1)
    test = get_dataset(str(tmp_path), "test", in_chans=1)
    assert isinstance(train, ImageFolderDataset) and train.classes == ("x", "y")
    assert int(train[0][0][0, 0, 0]) == 10 and int(test[0][0][0, 0, 0]) == 20
    assert get_dataset(str(tmp_path / "train"), "test").root == str(tmp_path / "train")
    with pytest.raises(ValueError, match="fashion-mnist"):
        get_dataset(str(tmp_path / "nope"), "train")


# ---------------------------------------------------------------- transforms


def _triangle_resize_1d(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) weights of an antialiased linear down-resize (triangle of width scale)."""
    scale = n_in / n_out
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        center = (i + 0.5) * scale
        for j in range(n_in):
            weights[i, j] = max(0.0, 1 - abs((j + 0.5 - center) / scale))
    return weights / weights.sum(1, keepdim=True)


def test_resize_values():
    x = torch.rand(2, 3, 5, 7)
    assert resize(x, (5, 7)) is x
    const = torch.full((1, 2, 9, 6), 0.3)
    for size in (3, (4, 11), 17):
        for mode in ("bilinear", "bicubic", "area"):
            assert torch.allclose(
                resize(const, size, mode=mode), torch.full_like(resize(const, size), 0.3), atol=1e-6
            )
    # A 2x2 image down-sized to 1x1 is the mean of its 4 pixels.
    x = torch.rand(3, 2, 2, 2)
    assert torch.allclose(resize(x, 1)[..., 0, 0], x.mean((-2, -1)), atol=1e-6)
    # Area resize of a block image gives the block means exactly.
    blocks = torch.rand(2, 1, 8, 12)
    means = blocks.reshape(2, 1, 2, 4, 3, 4).mean((3, 5))
    assert torch.allclose(resize(blocks, (2, 3), mode="area"), means, atol=1e-6)
    # Antialiased bilinear at factor 4 against a direct triangle-filter computation.
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    reference = _triangle_resize_1d(8, 2) @ x[0, 0] @ _triangle_resize_1d(8, 2).T
    assert torch.allclose(resize(x, 2)[0, 0], reference, atol=1e-6)
    assert not torch.allclose(resize(x, 2, antialias=False)[0, 0], reference, atol=1e-3)
    with pytest.raises(TypeError, match="to_float"):
        resize(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), 2)


def test_random_resized_crop_reproducible():
    x = torch.rand(4, 3, 20, 30)
    a = random_resized_crop(x, 8, generator=torch.Generator().manual_seed(0))
    b = random_resized_crop(x, 8, generator=torch.Generator().manual_seed(0))
    c = random_resized_crop(x, 8, generator=torch.Generator().manual_seed(1))
    assert a.shape == (4, 3, 8, 8) and torch.equal(a, b) and not torch.allclose(a, c)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    # The whole-image crop is a plain resize.
    sq = torch.rand(2, 1, 12, 12)
    full = random_resized_crop(sq, (6, 6), scale=(1, 1), ratio=(1, 1))
    assert torch.allclose(full, resize(sq, 6), atol=1e-6)
    # Variable-size list input.
    out = random_resized_crop([torch.rand(1, 9, 9), torch.rand(1, 30, 14)], (5, 7))
    assert out.shape == (2, 1, 5, 7)


def test_sample_crop_box_bounds_and_fallback():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        top, left, h, w = sample_crop_box(40, 60, scale=(0.3, 0.6), generator=g)
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 60
        assert 0.25 <= h * w / 2400 <= 0.65 and 0.7 <= w / h <= 1.4
    # An impossible aspect ratio falls back to the centred crop.
    assert sample_crop_box(10, 10, ratio=(5.0, 6.0), generator=g) == (4, 0, 2, 10)


def test_hflip_normalize_to_float_match_channels():
    x = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).reshape(2, 1, 2, 3)
    assert torch.equal(random_hflip(x, p=1.0), x.flip(-1))
    assert torch.equal(random_hflip(x, p=0.0), x)
    pairs = torch.tensor([0.0, 1.0]).expand(64, 1, 1, 2)
    y1 = random_hflip(pairs, generator=torch.Generator().manual_seed(5))
    y2 = random_hflip(pairs, generator=torch.Generator().manual_seed(5))
    flipped = y1[:, 0, 0, 0] == 1.0
    assert torch.equal(y1, y2) and 10 < int(flipped.sum()) < 54  # p = 0.5, reproducible

    images = torch.rand(2, 3, 4, 4)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    expected = torch.stack([(images[:, c] - mean[c]) / std[c] for c in range(3)], 1)
    assert torch.allclose(normalize(images, mean, std), expected)
    assert torch.allclose(normalize(images, (0.5,), (0.5,)), images * 2 - 1)
    with pytest.raises(ValueError, match="2 values"):
        normalize(images, (0.1, 0.2), (1.0, 1.0))

    u8 = torch.tensor([[[[0, 51, 255]]]], dtype=torch.uint8)
    assert to_float(u8).dtype == torch.float32
    assert torch.allclose(to_float(u8), torch.tensor([[[[0.0, 0.2, 1.0]]]]))
    with pytest.raises(TypeError):
        to_float(torch.zeros(1))

    rgb = torch.rand(2, 3, 4, 5)
    luma = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    assert torch.allclose(match_channels(rgb, 1)[:, 0], luma, atol=1e-6)
    grey = torch.rand(2, 1, 4, 5)
    assert torch.equal(match_channels(grey, 3), grey.repeat(1, 3, 1, 1))
    assert match_channels(grey, 1) is grey
    u8 = torch.tensor([255, 0, 0], dtype=torch.uint8).reshape(3, 1, 1)
    assert match_channels(u8, 1).item() == 76  # round(0.299 * 255)
    with pytest.raises(ValueError, match="supported"):
        match_channels(torch.rand(1, 2, 4, 4), 3)


# ---------------------------------------------------------------- loader


def _array_dataset(n: int = 10) -> ArrayDataset:
    images = torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1, 1).expand(n, 1, 6, 6).contiguous()
    return ArrayDataset(images=images, labels=torch.arange(n) % 3, classes=("a", "b", "c"))


def test_shuffle_is_deterministic_per_seed_and_epoch():
    ds = _array_dataset(10)

    def order(**kw):
        return torch.cat([y for _, y in iterate_batches(ds, 3, shuffle=True, **kw)]).tolist()

    first = epoch_order(10, shuffle=True, seed=7, epoch=0)
    assert torch.equal(first, epoch_order(10, shuffle=True, seed=7, epoch=0))
    assert not torch.equal(first, epoch_order(10, shuffle=True, seed=7, epoch=1))
    assert not torch.equal(first, epoch_order(10, shuffle=True, seed=8, epoch=0))
    for epoch in range(3):
        assert sorted(epoch_order(10, shuffle=True, seed=7, epoch=epoch).tolist()) == list(
            range(10)
        )
    assert epoch_order(10).tolist() == list(range(10))
    # The batches follow that order exactly (images carry their index as pixel value).
    seen = [
        int(i)
        for images, _ in iterate_batches(ds, 3, shuffle=True, seed=7, epoch=1)
        for i in images[:, 0, 0, 0]
    ]
    assert seen == epoch_order(10, shuffle=True, seed=7, epoch=1).tolist()
    assert order(seed=7, epoch=1) == order(seed=7, epoch=1)
    # limit keeps the first examples; drop_last drops the short batch.
    limited = epoch_order(10, shuffle=True, seed=1, limit=4).tolist()
    assert sorted(limited) == [0, 1, 2, 3]
    sizes = [len(y) for _, y in iterate_batches(ds, 4, drop_last=True)]
    assert sizes == [4, 4]
    images, labels = next(iterate_batches(ds, 4))
    assert images.dtype == torch.uint8 and images.shape == (4, 1, 6, 6)
    assert labels.tolist() == [0, 1, 2, 0]


def test_prepare_batch_and_eval_batches():
    ds = _array_dataset(5)
    images = ds.images[:4]
    x = prepare_batch(images, (3, 2), mean=(0.0,), std=(1.0,), in_chans=3)
    assert x.shape == (4, 3, 3, 2) and x.dtype == torch.float32
    for i in range(4):  # constant images stay constant at value i / 255
        assert torch.allclose(x[i], torch.full((3, 3, 2), i / 255), atol=1e-6)
    kw = {"mean": FMNIST_MEAN, "std": FMNIST_STD, "in_chans": 1}
    rnd = torch.randint(0, 256, (3, 1, 10, 10), dtype=torch.uint8)
    ref = (resize(rnd.float() / 255, 6) - FMNIST_MEAN[0]) / FMNIST_STD[0]
    assert torch.allclose(prepare_batch(rnd, 6, **kw), ref, atol=1e-5)
    t1 = prepare_batch(rnd, 6, train=True, generator=torch.Generator().manual_seed(3), **kw)
    t2 = prepare_batch(rnd, 6, train=True, generator=torch.Generator().manual_seed(3), **kw)
    t3 = prepare_batch(rnd, 6, train=True, generator=torch.Generator().manual_seed(4), **kw)
    assert t1.shape == (3, 1, 6, 6) and torch.equal(t1, t2) and not torch.equal(t1, t3)

    batches = list(eval_batches(ds, 4, 2, limit=3, **kw))
    assert [tuple(xb.shape) for xb, _ in batches] == [(2, 1, 4, 4), (1, 1, 4, 4)]
    assert torch.cat([y for _, y in batches]).tolist() == [0, 1, 2]
    assert torch.allclose(batches[1][0], torch.full((1, 1, 4, 4), (2 / 255 - 0.2860) / 0.3530))


def test_prepare_batch_train_flip_and_16bit_png(tmp_path):
    kw = {"mean": (0.0,), "std": (1.0,), "in_chans": 1}
    ramp = torch.arange(8, dtype=torch.uint8).repeat(16, 1, 8, 1) * 30  # (16, 1, 8, 8)
    plain = prepare_batch(ramp, 8, **kw)
    # crop_scale=(1, 1) on a square image keeps the whole image: only the flip is random.
    noflip = prepare_batch(ramp, 8, train=True, hflip=False, crop_scale=(1.0, 1.0), **kw)
    assert torch.allclose(noflip, plain, atol=1e-6)
    gen = torch.Generator().manual_seed(0)
    flipped = prepare_batch(ramp, 8, train=True, crop_scale=(1.0, 1.0), generator=gen, **kw)
    is_flipped = [torch.allclose(f, plain[0].flip(-1), atol=1e-6) for f in flipped]
    is_plain = [torch.allclose(f, plain[0], atol=1e-6) for f in flipped]
    assert all(a != b for a, b in zip(is_flipped, is_plain)) and 0 < sum(is_flipped) < 16

    # 16-bit greyscale is scaled to 8 bits, not clipped at 255.
    (tmp_path / "k").mkdir()
    wide = np.array([[0, 1000, 65535]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "k" / "w.png")
    image, _ = ImageFolderDataset(tmp_path, in_chans=1)[0]
    assert image.tolist() == [[[0, 3, 255]]]
