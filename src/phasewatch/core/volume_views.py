"""What the page shows of a volume the daemon segmented: every slice on demand, and one
slice that stands for the volume.

A volume of 2000 slices cannot become 2000 sets of PNGs. Beside ``NAME.classes.tif`` (the
class ids, one page per slice) the daemon writes ``NAME.preview.tif``: each slice's display
picture (:func:`~phasewatch.core.outputs.preview`: 8-bit, percentile-stretched, at most
1024 px a side), one zlib-compressed page per slice, written as the slices come out of the
sliding window. The page reads slice Z of both stacks on demand (``/api/images/ID/slices/Z/...``),
so its slider costs two page reads a slice and no storage beyond the two stacks.

The middle slice is also written as a field's pictures (``NAME.zNNNN.classes.png``,
``.overlay.jpg``, ``.json`` and ``NAME.preview.jpg``), so that lists, thumbnails, the live
view and the report show a volume as they show a field, without knowing about volumes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from phasewatch.atomic_files import OutputError
from phasewatch.bundle import Bundle
from phasewatch.core.outputs import preview, write_preview
from phasewatch.core.pipeline import FileResult, Model, write_field
from phasewatch.core.records import FieldRecord, VolumeRecord
from phasewatch.core.volume import Volume, field_like_record, segment_volume

SLICE_PICTURES = ("classes", "preview")  # what the page may ask of each slice


@dataclass
class SliceViews:
    """Collects the display stack and the middle slice while a volume is segmented
    (:func:`~phasewatch.core.volume.segment_volume`'s ``on_slice``)."""

    out_dir: Path
    name: str
    n_slices: int
    _writer: tifffile.TiffWriter | None = None
    _middle: tuple[int, np.ndarray, np.ndarray, FieldRecord] | None = None
    _partial: Path = field(init=False)

    def __post_init__(self) -> None:
        self._partial = self.out_dir / f".{self.name}.preview.tif.partial"

    @property
    def stack_path(self) -> Path:
        return self.out_dir / f"{self.name}.preview.tif"

    def add(self, index: int, image: np.ndarray, classes: np.ndarray, record: FieldRecord) -> None:
        """One slice as it comes out: its display picture appended to the stack; the middle
        slice kept (image, class map, record) for :meth:`finish`."""
        with self._writing():
            if self._writer is None:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                self._writer = tifffile.TiffWriter(self._partial)
            picture = preview(image)
            self._writer.write(picture, compression="zlib", photometric="rgb" if picture.ndim == 3 else "minisblack")
        if index == self.n_slices // 2:
            self._middle = (index, image, classes, record)

    def finish(self, bundle: Bundle) -> dict[str, str]:
        """Close the stack under its name and write the middle slice's pictures; the outputs
        by kind: ``preview_stack``, and ``classes``/``overlay``/``preview``/``json`` of the
        middle slice (what a field has)."""
        with self._writing():
            self._close()
            os.replace(self._partial, self.stack_path)
        assert self._middle is not None, "finish() before the middle slice came"
        index, image, classes, record = self._middle
        written = write_field(self.out_dir, f"{self.name}.z{index:04d}", image, classes, record, bundle)
        preview_path = write_preview(self.out_dir, self.name, image)
        return {**{k: str(v) for k, v in written.items()}, "preview": str(preview_path),
                "preview_stack": str(self.stack_path)}

    def discard(self) -> None:
        """After a failure: no half-written stack is left behind (and the failure, not a
        second one while closing, is what the caller sees)."""
        with contextlib.suppress(OSError):
            self._close()
        self._partial.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """The display stack's write errors as an ``OutputError`` naming it (the daemon retries
        a full or read-only disk)."""
        try:
            yield
        except OSError as exc:
            raise OutputError(exc.errno, f"{self.stack_path}: cannot write: {exc.strerror or exc}") from exc


def record_volume(volume: Volume, model: Model, out_dir: Path, overlap: int | None = None,
                  batch: int | None = None) -> tuple[FileResult, VolumeRecord]:
    """Segment ``volume`` into ``out_dir`` as the daemon records it, with the views above: its
    result as one field of its specimen (``volume.field_like_record``; outputs: the middle
    slice's pictures, both stacks and the volume's JSON) and the volume's own record (what
    ``NAME.volume.json`` holds). A failure leaves no partial display stack behind."""
    views = SliceViews(out_dir, volume.name, volume.n_slices)
    try:
        record = segment_volume(volume, model, out_dir, overlap, batch, on_slice=views.add)
        written = record["outputs"]
        outputs = {**views.finish(model.bundle), "classes_stack": written["classes"], "volume_json": written["json"]}
    except BaseException:
        views.discard()
        raise
    return FileResult(volume.path, model, [], field_like_record(record, model.bundle.classes), outputs), record
