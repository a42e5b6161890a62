"""Datasets and resolution transforms.

Datasets keep images at their native size (:class:`ArrayDataset` in memory,
:class:`ImageFolderDataset` decoded lazily from disk); the resolution is chosen by the
loader (:func:`prepare_batch`, :func:`eval_batches`), so one dataset serves every
resolution of a sweep. :func:`naflex_from_pil` makes SigLIP-2's NaFlex batches from
decoded images exactly as Hugging Face's PIL processor does.
"""

from vitres.data.checks import data_problems
from vitres.data.dataset import ArrayDataset
from vitres.data.fashion_mnist import (
    DEFAULT_FMNIST_DIR,
    FASHION_MNIST_CLASSES,
    load_fashion_mnist,
)
from vitres.data.folder import IMAGE_EXTENSIONS, ImageFolderDataset
from vitres.data.idx import read_idx
from vitres.data.loader import (
    FASHION_MNIST_ALIASES,
    FMNIST_MEAN,
    FMNIST_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Dataset,
    epoch_order,
    eval_batches,
    get_dataset,
    iterate_batches,
    native_batches,
    prepare_batch,
    take_batch,
)
from vitres.data.naflex import SIGLIP2_MEAN, SIGLIP2_STD, naflex_from_pil
from vitres.data.transforms import (
    LUMA_WEIGHTS,
    match_channels,
    normalize,
    random_hflip,
    random_resized_crop,
    resize,
    sample_crop_box,
    to_float,
    to_size,
)

__all__ = [
    "data_problems",
    "DEFAULT_FMNIST_DIR",
    "FASHION_MNIST_ALIASES",
    "FASHION_MNIST_CLASSES",
    "FMNIST_MEAN",
    "FMNIST_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "LUMA_WEIGHTS",
    "SIGLIP2_MEAN",
    "SIGLIP2_STD",
    "ArrayDataset",
    "Dataset",
    "ImageFolderDataset",
    "epoch_order",
    "eval_batches",
    "get_dataset",
    "iterate_batches",
    "load_fashion_mnist",
    "native_batches",
    "match_channels",
    "naflex_from_pil",
    "normalize",
    "prepare_batch",
    "take_batch",
    "random_hflip",
    "random_resized_crop",
    "read_idx",
    "resize",
    "sample_crop_box",
    "to_float",
    "to_size",
]
