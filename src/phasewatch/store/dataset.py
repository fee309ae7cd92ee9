"""A material's labelled fields as a data set on disk, in the layout ``phasewatch train`` reads
(``export/datasets.py``): ``images/STEM.EXT`` (the file as the microscope wrote it),
``labels/STEM.png`` (one channel, class ids, 255 = not labelled: the losses ignore it) paired
by stem, and ``manifest.json`` naming the material, its classes, and per field who labelled
it and when (the newest version of its labels), so that the lab's labels are never locked in.
Stems are ``IMAGEID-NAME`` so two files of one name in different folders stay apart.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from phasewatch.store.database import StoreError
from phasewatch.store.labels import Labels


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def export_dataset(store: Labels, material: str, out: Path) -> dict[str, Any]:
    """Write the data set of ``material`` to the folder ``out`` (new or empty); returns its manifest."""
    found = store.material(material)
    if found is None:
        raise StoreError(f"no material {material!r}")
    fields = store.labelled_fields(material)
    if not fields:
        raise StoreError(f"material {material!r}: no field is labelled with it")
    if out.exists() and any(out.iterdir()):
        raise StoreError(f"{out}: exists and is not empty; choose a new folder")
    images, labels = out / "images", out / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(exist_ok=True)
    entries = []
    for row in fields:
        source = Path(row["path"])
        stem = f"{row['file_id']:06d}-{source.stem}"
        stored = store.labels(row["file_id"], material, row["version"])
        assert stored is not None
        try:
            shutil.copy2(source, images / f"{stem}{source.suffix.lower()}")
        except OSError as exc:
            raise StoreError(f"{source}: image {row['file_id']} cannot be copied: {exc.strerror or exc}") from exc
        (labels / f"{stem}.png").write_bytes(stored["png"])
        entries.append({"image": f"images/{stem}{source.suffix.lower()}", "label": f"labels/{stem}.png",
                        "image_id": row["file_id"], "source": str(source), "sha256": row["sha256"],
                        "specimen": row["specimen"], "labels_version": row["version"], "labelled_by": row["who"],
                        "labelled_at": _iso(row["created"]), "labelled_px": row["labelled_px"],
                        "width": row["width"], "height": row["height"]})
    manifest = {"material": material, "classes": [{"id": i, **c} for i, c in enumerate(found["classes"])],
                "label_format": "index", "unlabelled": 255, "exported_at": _iso(datetime.now(timezone.utc).timestamp()),
                "train_config": {"data": {"train": {"images": "images", "labels": "labels"}, "label_format": "index"}},
                "fields": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest
