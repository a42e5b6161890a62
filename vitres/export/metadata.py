"""What an exported ONNX file says about itself: the export spec and its provenance.

Every file :func:`vitres.export.export_onnx` (and :func:`vitres.export.export_from_spec`)
writes carries string entries in the model's ``metadata_props`` (the ONNX field meant
for this; ONNX Runtime shows them as ``session.get_modelmeta().custom_metadata_map``):

===========================  ==============================================================
``vitres.export_spec``       the :class:`~vitres.export.spec.ExportSpec` as JSON, resolved:
                             the patch size and example size actually used
``vitres.version``           the vitres version that wrote the file
``vitres.patch_size``        the patch size baked into the graph
``vitres.size_policy``       the model's size policy (``pad``, ``crop``, ``resize``, ``error``)
``vitres.in_chans``          input channels
``vitres.size_rule``         the input sizes the graph accepts, in words
``vitres.input_layout``      ``NCHW float32``
``vitres.mean``, ``.std``    per-channel normalisation, JSON lists
``vitres.preprocessing``     the whole input recipe in words (0..1 pixels, then mean/std)
``vitres.native_size``       the model's native ``HxW``
``vitres.num_classes``       outputs per image (``output``: ``logits`` or ``features``)
``vitres.recommended_size``  the ``HxW`` the sweep record measured, when exported from one
``vitres.data``              the data the record was measured on, when known
``vitres.class_names``       JSON list of class names, when the data names them
``vitres.model``             the model reference, when known (a bundled name, a path...)
``vitres.model_digest``      short SHA-256 of the checkpoint file, when known
``vitres.record_key``        the sweep record the file was exported from, if any
``vitres.notes``             how the export differs from what was measured, if it does
===========================  ==============================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from vitres.export.spec import ExportSpec

__all__ = [
    "METADATA_PREFIX",
    "read_export_metadata",
    "read_export_spec",
    "write_export_metadata",
]

METADATA_PREFIX = "vitres."
SPEC_KEY = "vitres.export_spec"


def write_export_metadata(path: str | os.PathLike[str], entries: Mapping[str, object]) -> None:
    """Sets ``entries`` (keys without the ``vitres.`` prefix; ``None`` values skipped) in
    the file's ``metadata_props``, replacing earlier vitres entries of the same names.

    Weights stored beside the graph (external data) stay where they are.
    """
    import onnx

    path = Path(path)
    proto = onnx.load(str(path), load_external_data=False)
    values = {
        f"{METADATA_PREFIX}{key}": str(value) for key, value in entries.items() if value is not None
    }
    keep = [p for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in values.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def read_export_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The file's vitres metadata entries, keys without the ``vitres.`` prefix.

    Raises:
        FileNotFoundError: no such file.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file {path} does not exist")
    proto = onnx.load(str(path), load_external_data=False)
    return {
        p.key[len(METADATA_PREFIX) :]: p.value
        for p in proto.metadata_props
        if p.key.startswith(METADATA_PREFIX)
    }


def read_export_spec(path: str | os.PathLike[str]) -> ExportSpec:
    """The :class:`ExportSpec` a vitres export wrote into ``path``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds no vitres export spec (not written by vitres, or by a
            version before specs were recorded), or an invalid one.
    """
    text = read_export_metadata(path).get(SPEC_KEY[len(METADATA_PREFIX) :])
    if text is None:
        raise ValueError(
            f"{path} holds no vitres export spec (metadata key {SPEC_KEY!r}); it was not "
            "exported by vitres export / vitres.export.export_onnx, or by an older version"
        )
    return ExportSpec.from_json(text)
