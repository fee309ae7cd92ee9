"""Who measured a field: the identity of the model and software, kept with each result.

:func:`model_identity` is what the daemon hands ``Store.mark_done`` for every field, so a
field's page can say which model (name, ONNX sha256, classes with their colours and
roles), which backend, which tiling and which phasewatch produced its numbers, even
after the service has moved on to another model; ``name`` and ``onnx_sha256`` also keep
each specimen to one model (``src/phasewatch/store/``).
"""

from __future__ import annotations

from collections.abc import Sequence

import phasewatch
from phasewatch.bundle import ClassInfo
from phasewatch.core.pipeline import Model
from phasewatch.core.records import ModelClass, ModelIdentity, ModelTiling


def software_version() -> str:
    """This phasewatch's version (one place: ``phasewatch.__version__``, which the package's
    metadata is built from, so a stale install record cannot disagree with the code)."""
    return phasewatch.__version__


def model_classes(classes: Sequence[ClassInfo]) -> list[ModelClass]:
    """A bundle's classes as JSON: id, name, colour (RGB) and role."""
    return [{"id": c.id, "name": c.name, "colour": list(c.colour), "role": c.role} for c in classes]


def model_identity(model: Model) -> ModelIdentity:
    """The JSON-able identity of ``model`` as it segments fields now."""
    bundle = model.bundle
    tiling: ModelTiling = {"tile": bundle.tile, "halo": bundle.halo, "scale": bundle.scale}
    if model.plan is not None:  # tiles planned per field instead of the fixed tile
        tiling |= {"planned": True, "multiple": model.plan.multiple, "max_pixels": model.plan.max_pixels}
    return {
        "name": bundle.name,
        "onnx_sha256": bundle.onnx_sha256,
        "architecture": bundle.architecture,
        "exported_at": bundle.manifest.get("exported_at"),
        "classes": model_classes(bundle.classes),
        "backend": model.backend.name,
        "tiling": tiling,
        "software": software_version(),
    }
