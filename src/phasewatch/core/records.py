"""The records a field is kept as, typed in one place.

What ``measure.measure`` measures (:class:`Measurement`), what ``trust.assess`` says
(:class:`TrustRecord`), what ``pipeline`` records per field (:class:`FieldRecord`: a page, a
multi-page file combined, or a volume shown as one field) and the identity of the model kept
beside it (:class:`ModelIdentity`). The same keys go into ``STEM.json``, the store's
``results.measurement`` (``src/phasewatch/store/rows.py``) and the API's ``measurement``;
``tests/test_record_schema.py`` holds ``webui/openapi.py`` to them.

Keys every record of a kind has are required; a key is optional (in a ``total=False``
class) only where some records of that kind truly lack it, and the class says which. The
package still runs on Python 3.10 without ``typing_extensions`` (only a test tool brings it),
so optional keys live in ``total=False`` sub-classes rather than ``NotRequired``.
"""

from __future__ import annotations

from typing import Any, TypedDict


class EcdHistogram(TypedDict):
    """ECD bins: geometric edges (ratio sqrt 2), one count fewer than edges; both empty
    without a whole particle."""

    edges: list[float]
    counts: list[int]


class EcdPercentiles(TypedDict):
    p10: float
    p50: float
    p90: float


class SizeStatistics(TypedDict):
    """ECD statistics of a phase's whole particles; all None without one (std: below two)."""

    mean_ecd: float | None
    median_ecd: float | None
    std_ecd: float | None
    ecd_percentiles: EcdPercentiles | None


class PhaseParticles(SizeStatistics):
    """One phase class's particles (``measure`` module doc: border rule, densities)."""

    count: int
    border_count: int
    number_per_mm2: float | None  # None without a pixel size
    number_per_mpx: float
    ecd_histogram: EcdHistogram
    unit: str  # "um" with a pixel size, else "px"


class Measurement(TypedDict):
    """What ``measure.measure`` returns for one class map."""

    pixel_size_um: float | None
    valid_area_px: int
    valid_area_um2: float | None
    excluded_area_px: int
    valid_area_empty: bool
    fractions: dict[str, float]  # class name -> fraction of the valid area; no excluded class
    particles: dict[str, PhaseParticles]  # phase class name -> its particles
    connectivity: int
    min_particle_area_px: int
    border_rule: str


class _UnsureMeasure(TypedDict):
    unsure: float


class TrustMeasures(_UnsureMeasure, total=False):
    """A page's trust measures; ``novelty`` and ``nearest`` only with a trust calibration
    in the bundle (without one the model cannot say how novel a field is)."""

    novelty: float
    nearest: str  # the calibration field nearest to this one


class _TrustKeys(TypedDict):
    ok: bool
    score: float | None  # largest measure / limit; None without a trust calibration
    reasons: list[str]  # one line per reason not to trust the field; empty when ok


class TrustRecord(_TrustKeys, total=False):
    """A field's trust record (``trust.assess``; ``measure.combine_trust`` for a stack's pages)."""

    measures: TrustMeasures  # a page's; a stack's pages combined or a volume has none of its own
    slices_not_ok: list[int]  # a volume's only: its slices not trusted


class VolumeTrust(TypedDict):
    """A volume's trust: every slice's, the worst score."""

    ok: bool
    score: float | None
    slices_not_ok: list[int]


class SliceRecord(TypedDict):
    slice: int
    fractions: dict[str, float]
    trust: TrustRecord


class VolumeTiming(TypedDict):
    seconds: float
    seconds_per_slice: float
    slices_per_second: float | None  # None when no time could be measured


class _VolumeKeys(TypedDict):
    volume: str  # the stack's path
    model: str
    backend: str
    slices: int
    shape: list[int]  # z, y, x
    spacing_um: list[float] | None  # z, y, x
    spacing_source: str
    trust: VolumeTrust
    per_slice: list[SliceRecord]
    measurements_3d: dict[str, Any]  # measure3d.VolumeMeasurer.result: its own rules and keys
    timing: VolumeTiming
    classes: list[ModelClass]  # the model's, by id: what the class ids of NAME.classes.tif mean


class VolumeRecord(_VolumeKeys, total=False):
    """A segmented volume's record (``volume.volume_record``, its ``NAME.volume.json``)."""

    outputs: dict[str, str]  # set once its files are written


class Timing(TypedDict):
    """Milliseconds per page for each step."""

    decode: float
    segment: float
    measure: float


class _FieldKeys(TypedDict):
    image: str  # the path of the file (or volume) the field came from
    page: int | None  # None for a multi-page file combined, or a volume
    model: str
    backend: str
    width: int
    height: int
    pixel_size_um: float | None
    pixel_size_source: str  # where the pixel size came from ("none" without one)
    fractions: dict[str, float]
    particles: dict[str, PhaseParticles]  # empty for a volume: its 3D components are under volume
    valid_area_px: int
    valid_area_um2: float | None


class FieldRecord(_FieldKeys, total=False):
    """One field's record (``pipeline.assessed_record``; ``measure.combine_pages`` for a
    multi-page file; ``volume.field_like_record`` for a volume)."""

    # measure's areas and rules: in every page's record, not in a volume's
    excluded_area_px: int
    valid_area_empty: bool
    connectivity: int
    min_particle_area_px: int
    border_rule: str
    trust: TrustRecord  # every record made now; records stored before the trust record lack it
    timing_ms: Timing  # a file's pages (pipeline.measure_and_write); not a volume's slices
    pages: list[FieldRecord]  # a multi-page file's: each page's own record
    volume: VolumeRecord  # a volume's whole record
    pixel_sha256: str  # a file's pixels stretched to 8 bits, hashed (core/pixel_hash.py); not a volume's


class ModelClass(TypedDict):
    id: int
    name: str
    colour: list[int]  # RGB
    role: str  # "phase", "background" or "excluded"


class _TilingKeys(TypedDict):
    tile: int
    halo: int
    scale: float


class ModelTiling(_TilingKeys, total=False):
    """The sliding window a field went through; the plan's keys only when tiles are planned
    per field (a bundle and backend that take any size)."""

    planned: bool
    multiple: int
    max_pixels: int


class ModelIdentity(TypedDict):
    """Who measured a field (``provenance.model_identity``), stored beside its record."""

    name: str
    onnx_sha256: str
    architecture: str
    exported_at: str | None
    classes: list[ModelClass]
    backend: str
    tiling: ModelTiling
    software: str
