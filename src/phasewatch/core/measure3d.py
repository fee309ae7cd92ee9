"""3D measurements of a segmented volume (a stack of class maps), streamed slice by slice.

Rules, stated once here and echoed in every result (``rules``):

* **Valid voxels.** Voxels of classes with role ``excluded`` are not specimen: they get no
  entry and leave the denominator of every fraction and density, as in
  :mod:`phasewatch.core.measure`. Every other class is measured.
* **Components.** 3D connected components of one class, reported for both standard
  adjacencies: ``components_6`` (face neighbours) and ``components_26`` (face, edge and
  corner neighbours). ``components`` is the 26-connected count, the convention of the
  2D measurements (8-connected particles) carried to 3D. Every component counts, whatever
  its size; ``components_touching_border`` says how many touch the volume's faces (their
  true size is unknown).
* **Sizes.** Equivalent-sphere diameter ESD = (6 V / pi)^(1/3) of each 26-connected
  component, in voxels and, when the spacing is known, in µm (V in µm³); summarised by
  count, mean, median, p10, p90, min and max over all components.
* **Interconnectivity.** Largest component's share of the class's voxels (26-connected;
  ``interconnectivity_6`` for 6): 1 for one percolating network, 1/n for n equal blobs;
  null when the class has no voxel.
* **Euler number.** The 3D Euler characteristic chi = components - tunnels + cavities,
  ``euler_number`` with 26-connectivity for the class (6 for its complement; scikit-image's
  ``euler_number(connectivity=3)``), ``euler_number_6`` with 6-connectivity (26 for the
  complement; ``connectivity=1``). A ball is 1, a torus 0, a hollow sphere 2.
  ``euler_number_per_mm3`` divides by the valid volume when the spacing is known.

How it is computed, in memory O(one slice + number of components), never O(volume):

* Components: each slice is labelled in 2D by OpenCV (``cv2.connectedComponents``, 8- or
  4-connected in plane), and the labels of consecutive slices are merged where they touch
  (26: a voxel and the 3 x 3 voxels below it; 6: the voxel below only). Only the previous
  slice's labels and the sizes of components still open are kept; a component that does
  not reach the current slice is finished and only its size (and border flag) is stored.
  SciPy's ``ndimage.label`` would do 3D labelling but needs the whole volume in memory
  (and is not a dependency); the slice-wise merge is the same union-find it does.
* Euler number: chi is a sum of local contributions of the 2 x 2 x 2 voxel configurations
  around every lattice vertex (the lookup-table method of Ohser & Mücklich and of
  scikit-image), so it is summed over consecutive slice pairs with one slice of overlap.
  scikit-image is not a dependency, and it too needs the whole volume; the tests check the
  lookup table against an independent cell count (V - E + F - C) on whole volumes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import cv2
import numpy as np

from phasewatch.bundle import ClassInfo
from phasewatch.errors import PhasewatchError

MAX_CLASSES = 256  # class maps are uint8
DEFAULT_SLAB = 16  # slices read at once from an in-memory array (memory is per slice anyway)
RULES = {
    "valid_voxels": "classes with role excluded leave the denominator and get no entry",
    "components": "components = components_26 (face, edge, corner neighbours); components_6 by faces only",
    "esd": "equivalent-sphere diameter (6 V / pi)^(1/3) of each 26-connected component, all components",
    "interconnectivity": "largest 26-connected component's share of the class's voxels",
    "euler_number": "euler_number: 26-connectivity for the class (6 for its complement); "
                    "euler_number_6: 6-connectivity; per_mm3 over the valid volume",
}


class VolumeMeasureError(PhasewatchError):
    """A volume that cannot be measured; the message names the reason in one line."""


# --- Euler number: lookup table over 2 x 2 x 2 configurations ----------------------------


def _euler_lut(connectivity: int) -> np.ndarray:
    """8 x the Euler contribution of each 2 x 2 x 2 configuration around a lattice vertex.

    Bit ``4 dz + 2 dy + dx`` of the index is the voxel at offset (dz, dy, dx) from the
    vertex's lower corner. With 26-connectivity the class is the union of *closed* unit
    cubes, chi = V - E + F - C of that cell complex; a vertex, edge or face is present when
    any voxel around it is. Each cell is shared by the vertices at its corners (an edge by
    2, a face by 4, a cube by 8), so a vertex owns 1/2 of its 6 half-edges, 1/4 of its 12
    quarter-faces and 1/8 of its 8 cubes; times 8 to stay in integers. With 6-connectivity
    the dual complex counts instead (voxels as vertices, face pairs as edges, full 2 x 2
    squares as faces, full 2 x 2 x 2 blocks as cubes): the same cells, "all" for "any",
    with the signs reversed.
    """
    halves = [[bit for bit in range(8) if (bit >> axis) & 1 == side] for axis in range(3) for side in (0, 1)]
    pairs = [(bit, bit | 1 << axis) for axis in range(3) for bit in range(8) if not (bit >> axis) & 1]
    lut = np.zeros(256, np.int64)
    for code in range(256):
        voxel = [(code >> bit) & 1 for bit in range(8)]
        if connectivity == 26:
            value = 8 * any(voxel)
            value -= 4 * sum(any(voxel[b] for b in half) for half in halves)
            value += 2 * sum(voxel[a] or voxel[b] for a, b in pairs)
            value -= sum(voxel)
        else:
            value = -8 * all(voxel)
            value += 4 * sum(all(voxel[b] for b in half) for half in halves)
            value -= 2 * sum(voxel[a] and voxel[b] for a, b in pairs)
            value += sum(voxel)
        lut[code] = value
    return lut


_LUT = {26: _euler_lut(26), 6: _euler_lut(6)}


def _plane_codes(mask: np.ndarray) -> np.ndarray:
    """4-bit code (2 dy + dx) of the 2 x 2 pixels around every lattice point of a slice.

    The slice is padded by one empty pixel, so the (Y + 1) x (X + 1) lattice points
    include the outer boundary.
    """
    padded = np.pad(mask.astype(np.uint8), 1)
    height, width = mask.shape
    codes = np.zeros((height + 1, width + 1), np.uint8)
    for dy, dx in product((0, 1), (0, 1)):
        codes |= padded[dy:dy + height + 1, dx:dx + width + 1] << (2 * dy + dx)
    return codes


def _euler_pair(lower: np.ndarray, upper: np.ndarray) -> tuple[int, int]:
    """8 x Euler contributions (26, 6) of the lattice vertices between two slices' plane codes."""
    counts = _histogram256(lower | (upper << 4))
    return int(counts @ _LUT[26]), int(counts @ _LUT[6])


def _histogram256(codes: np.ndarray) -> np.ndarray:
    """Counts of each uint8 value. OpenCV's histogram needs no int64 copy of the slice (as
    ``np.bincount`` does); its float32 counts are exact for the <= 2^22 pixels of each block."""
    counts = np.zeros(256, np.int64)
    rows = max(1, (1 << 22) // max(codes.shape[1], 1))
    for start in range(0, codes.shape[0], rows):
        block = np.ascontiguousarray(codes[start:start + rows])
        counts += cv2.calcHist([block], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    return counts


# --- connected components: per-slice labels merged across slices -------------------------


def _merge(n_nodes: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Root (smallest member) of every node of the graph with edges a[i]--b[i].

    Hook-and-compress union-find, vectorised: every round, each edge's two roots hook
    onto the smaller one, then pointer jumping flattens the forest; a round removes at
    least one root per edge whose ends still differ, and usually all of them.
    """
    root = np.arange(n_nodes)
    while True:
        ra, rb = root[a], root[b]
        differ = ra != rb
        if not differ.any():
            return root
        ra, rb = ra[differ], rb[differ]
        low = np.minimum(ra, rb)
        np.minimum.at(root, ra, low)
        np.minimum.at(root, rb, low)
        while True:  # pointer jumping: root[i] <= i always, so this ends
            jumped = root[root]
            if np.array_equal(jumped, root):
                break
            root = jumped


def _touching_pairs(previous: np.ndarray, current: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique (previous label, current label) pairs of voxels adjacent across the two slices."""
    here = current > 0
    if connectivity == 6:
        both = here & (previous > 0)
        keys = _unique_keys(previous[both], current[both])
    else:
        keys = _pairs_26(previous, current, here)
    return keys >> 32, keys & 0xFFFFFFFF


_KERNEL_3X3 = np.ones((3, 3), np.uint8)
_EXACT_FLOAT32 = 1 << 24  # ids below this survive a float32 round trip (OpenCV morphology has no int32)


def _pairs_26(previous: np.ndarray, current: np.ndarray, here: np.ndarray) -> np.ndarray:
    """Keys of (previous, current) label pairs within a 3 x 3 neighbourhood across two slices.

    Nine shifted comparisons of whole slices would cost nine passes and many temporaries;
    instead a 3 x 3 max and min (over labelled voxels) of the previous slice say, for every
    voxel, which one label is below it. Only where two or more labels are within reach
    (rare: components of one class two voxels apart) are the nine neighbours looked up.
    """
    top = int(previous.max(initial=0))
    if top >= _EXACT_FLOAT32:
        return _pairs_by_shifts(previous, current, *np.nonzero(here))
    # OpenCV's morphology takes uint8, uint16 or float32; the smallest that also holds a
    # sentinel above every id for "no label" (ignored by the minimum)
    dtype: type[np.uint8 | np.uint16 | np.float32] = next(
        t for t in (np.uint8, np.uint16, np.float32) if top < _sentinel(t))
    labels: np.ndarray[Any, np.dtype[np.uint8 | np.uint16 | np.float32]] = previous.astype(dtype)
    highest = cv2.dilate(labels, _KERNEL_3X3)  # out-of-slice neighbours do not count (OpenCV's default border)
    labels[labels == 0] = _sentinel(dtype)
    lowest = cv2.erode(labels, _KERNEL_3X3)
    del labels
    reach = here & (highest > 0)
    single = reach & (lowest == highest)
    keys = [_unique_keys(highest[single], current[single])]
    mixed = np.nonzero(reach & ~single)
    if len(mixed[0]):
        keys.append(_pairs_by_shifts(previous, current, *mixed))
    return np.unique(np.concatenate(keys))


def _sentinel(dtype: Any) -> float:
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else _EXACT_FLOAT32


def _pairs_by_shifts(previous: np.ndarray, current: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Keys of the pairs at the voxels (ys, xs) of ``current`` with their 9 neighbours below."""
    padded = np.pad(previous, 1)
    keys = []
    for dy, dx in product((-1, 0, 1), (-1, 0, 1)):
        below = padded[ys + 1 + dy, xs + 1 + dx]
        touching = below > 0
        keys.append(_unique_keys(below[touching], current[ys[touching], xs[touching]]))
    return np.unique(np.concatenate(keys))


def _unique_keys(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Unique ``high << 32 | low`` keys, built in place and thinned before sorting.

    A big component gives one pair per voxel: runs of equal keys (neighbouring voxels of
    the same two labels) are dropped first, so the sort and its copies stay small.
    """
    keys = high.astype(np.int64)
    keys <<= 32
    keys |= low
    if len(keys) > 1:
        keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
    return np.unique(keys)


def _on_edge(stats: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Which 2D components (rows of OpenCV's stats) touch the slice's edge, from their boxes."""
    left, top = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    right, bottom = left + stats[:, cv2.CC_STAT_WIDTH], top + stats[:, cv2.CC_STAT_HEIGHT]
    return (left == 0) | (top == 0) | (right == shape[1]) | (bottom == shape[0])


@dataclass
class _Components:
    """Open components of one class at one connectivity, and the sizes of finished ones."""

    connectivity: int
    previous: np.ndarray | None = None  # last slice's labels as open-component ids (1..n), 0 = none
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # open component i+1's voxels
    border: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    finished_sizes: list[np.ndarray] = field(default_factory=list)
    finished_border: list[np.ndarray] = field(default_factory=list)

    def add(self, mask: np.ndarray, first: bool) -> None:
        """Label one slice in 2D, join its labels to the open components, retire the rest."""
        in_plane = 8 if self.connectivity == 26 else 4
        n_labels, labels, stats, _ = cv2.connectedComponentsWithStats(
            mask.view(np.uint8), connectivity=in_plane, ltype=cv2.CV_32S)
        new_sizes = stats[1:, cv2.CC_STAT_AREA].astype(np.int64)
        new_border = _on_edge(stats[1:], labels.shape) | first
        root = self._join(labels, n_labels)
        self._advance(root, labels, new_sizes, new_border)

    def _join(self, labels: np.ndarray, n_labels: int) -> np.ndarray:
        """Root of every node: open components 0..n_open-1, then this slice's labels 1.. as n_open.."""
        n_open = len(self.sizes)
        if self.previous is None or n_open == 0:
            a = b = np.zeros(0, np.int64)
        else:
            a, b = _touching_pairs(self.previous, labels, self.connectivity)
            a, b = a - 1, b - 1 + n_open
        return _merge(n_open + n_labels - 1, a, b)

    def _advance(self, root: np.ndarray, labels: np.ndarray, new_sizes: np.ndarray, new_border: np.ndarray) -> None:
        """Finish the components this slice does not reach; the others, renumbered, stay open."""
        n_open = len(self.sizes)
        sizes = np.bincount(root, weights=np.concatenate([self.sizes, new_sizes]), minlength=len(root))
        border = np.bincount(root, weights=np.concatenate([self.border, new_border]), minlength=len(root)) > 0
        reaches = np.zeros(len(root), bool)
        reaches[root[n_open:]] = True
        is_root = root == np.arange(len(root))
        done = is_root & ~reaches  # no voxel in this slice: can never grow again
        if done.any():  # only then: an empty array per slice would make memory grow with Z
            self.finished_sizes.append(np.rint(sizes[done]).astype(np.int64))
            self.finished_border.append(border[done])
        still_open = is_root & reaches
        renumber = np.cumsum(still_open)  # root -> new open id (1..)
        # the smallest integer type that holds the open ids: this array lives between slices
        n_labels = len(root) - n_open + 1
        lookup = np.zeros(n_labels, np.min_scalar_type(max(int(renumber[-1]) if len(renumber) else 0, 1)))
        lookup[1:] = renumber[root[n_open:]]
        self.previous = lookup[labels]
        self.sizes = np.rint(sizes[still_open]).astype(np.int64)
        self.border = border[still_open]

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Sizes and border flags of every component; the open ones touch the last slice."""
        sizes = np.concatenate([*self.finished_sizes, self.sizes])
        border = np.concatenate([*self.finished_border, np.ones(len(self.sizes), bool)])
        return sizes, border


@dataclass
class _ClassState:
    """Everything streamed for one class: voxel count, components, Euler sums, last plane codes."""

    voxels: int = 0
    euler8: dict[int, int] = field(default_factory=lambda: {26: 0, 6: 0})
    codes: np.ndarray | None = None  # previous slice's plane codes (None: empty so far)
    components: dict[int, _Components] = field(
        default_factory=lambda: {26: _Components(26), 6: _Components(6)})

    def add(self, mask: np.ndarray, first: bool) -> None:
        self.voxels += int(np.count_nonzero(mask))
        codes = _plane_codes(mask)
        lower = self.codes if self.codes is not None else np.zeros_like(codes)
        self._add_euler(lower, codes)
        self.codes = codes
        for components in self.components.values():
            components.add(mask, first)

    def close(self) -> None:
        """The vertices above the last slice (against an empty slice)."""
        if self.codes is not None:
            self._add_euler(self.codes, np.zeros_like(self.codes))
            self.codes = None

    def _add_euler(self, lower: np.ndarray, upper: np.ndarray) -> None:
        e26, e6 = _euler_pair(lower, upper)
        self.euler8[26] += e26
        self.euler8[6] += e6


# --- the measurer ------------------------------------------------------------------------


def _check_spacing(spacing_um: Sequence[float] | None) -> tuple[float, float, float] | None:
    if spacing_um is None:
        return None
    if len(spacing_um) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing_um):
        raise VolumeMeasureError(f"spacing must be three positive numbers (z, y, x) in µm, not {list(spacing_um)}")
    z, y, x = (float(s) for s in spacing_um)
    return z, y, x


class VolumeMeasurer:
    """Feed slices (or slabs of slices) in order with :meth:`add`, then read :meth:`result`.

    ``classes``: the class list (ids 0..n-1 with names and roles); without it every id that
    occurs is a phase named ``class N``. ``spacing_um``: voxel size (z, y, x) in µm.
    """

    def __init__(self, classes: Sequence[ClassInfo] | None = None,
                 spacing_um: Sequence[float] | None = None) -> None:
        self.classes = list(classes) if classes is not None else None
        self.spacing_um = _check_spacing(spacing_um)
        self.shape: tuple[int, int] | None = None
        self.n_slices = 0
        self.counts = np.zeros(MAX_CLASSES, np.int64)
        self.states: dict[int, _ClassState] = {}
        self._closed = False
        if self.classes is not None:
            for info in self.classes:
                if info.role != "excluded":
                    self.states[info.id] = _ClassState()

    def add(self, slab: np.ndarray) -> None:
        """Add one slice (Y x X) or a slab of consecutive slices (k x Y x X) of class ids."""
        if self._closed:
            raise VolumeMeasureError("slices added after the result was taken")
        slab = np.asarray(slab)
        if slab.ndim == 2:
            slab = slab[np.newaxis]
        if slab.ndim != 3:
            raise VolumeMeasureError(f"a slice must be 2D (Y x X) or a slab 3D (k x Y x X), not {slab.ndim}D")
        for plane in slab:
            self._add_slice(plane)

    def _add_slice(self, plane: np.ndarray) -> None:
        plane = self._checked(plane)
        counts = np.bincount(plane.ravel(), minlength=MAX_CLASSES)
        self.counts += counts
        if self.classes is None:  # a class first seen here had empty slices before: start it now
            for seen in np.flatnonzero(counts):
                self.states.setdefault(int(seen), _ClassState())
        first = self.n_slices == 0
        for class_id, state in self.states.items():
            state.add(plane == class_id, first)
        self.n_slices += 1

    def _checked(self, plane: np.ndarray) -> np.ndarray:
        if plane.dtype == bool:  # a binary mask: background 0, phase 1
            plane = plane.view(np.uint8)
        if not np.issubdtype(plane.dtype, np.integer):
            raise VolumeMeasureError(f"class ids must be integers, not {plane.dtype}")
        if self.shape is None:
            self.shape = (int(plane.shape[0]), int(plane.shape[1]))
        elif plane.shape != self.shape:
            raise VolumeMeasureError(f"slice {self.n_slices} is {plane.shape[0]} x {plane.shape[1]}, "
                                     f"the first was {self.shape[0]} x {self.shape[1]}")
        if plane.size and (int(plane.min()) < 0 or int(plane.max()) >= self._n_ids()):
            bad = int(plane.max()) if int(plane.min()) >= 0 else int(plane.min())
            raise VolumeMeasureError(f"slice {self.n_slices} has class id {bad}; "
                                     f"the classes are ids 0..{self._n_ids() - 1}")
        return plane.astype(np.uint8, copy=False)

    def _n_ids(self) -> int:
        return len(self.classes) if self.classes is not None else MAX_CLASSES

    def result(self) -> dict[str, Any]:
        """The measurements (see the module's rules); the measurer takes no slice after this."""
        if self.n_slices == 0 or self.shape is None:
            raise VolumeMeasureError("the volume has no slice")
        if not self._closed:
            for state in self.states.values():
                state.close()
            self._closed = True
        shape = (self.n_slices, *self.shape)
        excluded = {c.id for c in self.classes or [] if c.role == "excluded"}
        valid = int(self.counts.sum() - sum(int(self.counts[i]) for i in excluded))
        voxel_um3 = math.prod(self.spacing_um) if self.spacing_um else None
        valid_mm3 = valid * voxel_um3 * 1e-9 if voxel_um3 else None
        return {
            "shape": list(shape),
            "spacing_um": list(self.spacing_um) if self.spacing_um else None,
            "valid_voxels": valid,
            "valid_volume_mm3": valid_mm3,
            "valid_volume_empty": valid == 0,
            "classes": {self._name(i): self._class_result(i, s, valid, voxel_um3, valid_mm3)
                        for i, s in sorted(self.states.items())},
            "rules": RULES,
        }

    def _name(self, class_id: int) -> str:
        if self.classes is not None:
            return self.classes[class_id].name
        return f"class {class_id}"

    def _class_result(self, class_id: int, state: _ClassState, valid: int, voxel_um3: float | None,
                      valid_mm3: float | None) -> dict[str, Any]:
        sizes26, border26 = state.components[26].finish()
        sizes6, _ = state.components[6].finish()
        euler26, euler6 = state.euler8[26] // 8, state.euler8[6] // 8
        role = self.classes[class_id].role if self.classes is not None else "phase"
        return {
            "id": class_id,
            "role": role,
            "voxels": state.voxels,
            "volume_fraction": state.voxels / valid if valid else 0.0,
            "components": len(sizes26),
            "components_26": len(sizes26),
            "components_6": len(sizes6),
            "components_touching_border": int(border26.sum()),
            "interconnectivity": _share_of_largest(sizes26, state.voxels),
            "interconnectivity_6": _share_of_largest(sizes6, state.voxels),
            "euler_number": euler26,
            "euler_number_6": euler6,
            "euler_number_per_mm3": euler26 / valid_mm3 if valid_mm3 else None,
            "esd_voxels": _summary(_esd(sizes26.astype(np.float64))),
            "esd_um": _summary(_esd(sizes26 * voxel_um3)) if voxel_um3 else None,
        }


def _share_of_largest(sizes: np.ndarray, voxels: int) -> float | None:
    return float(sizes.max()) / voxels if voxels and len(sizes) else None


def _esd(volume: np.ndarray) -> np.ndarray:
    """Equivalent-sphere diameter of a volume (element-wise)."""
    return np.cbrt(6.0 * np.asarray(volume, np.float64) / np.pi)


def _summary(values: np.ndarray) -> dict[str, float | int | None]:
    if not len(values):
        return {"count": 0, "mean": None, "median": None, "p10": None, "p90": None, "min": None, "max": None}
    p10, median, p90 = np.percentile(values, [10, 50, 90])
    return {"count": len(values), "mean": float(values.mean()), "median": float(median),
            "p10": float(p10), "p90": float(p90), "min": float(values.min()), "max": float(values.max())}


def measure_volume(volume: np.ndarray | Iterable[np.ndarray], classes: Sequence[ClassInfo] | None = None,
                   spacing_um: Sequence[float] | None = None, slab: int = DEFAULT_SLAB) -> dict[str, Any]:
    """Measure a class-id volume: a Z x Y x X array (read ``slab`` slices at a time) or an
    iterable of slices / slabs in order (streamed: only one is held at a time)."""
    measurer = VolumeMeasurer(classes, spacing_um)
    if isinstance(volume, np.ndarray) and volume.ndim == 3:
        for start in range(0, volume.shape[0], max(1, slab)):
            measurer.add(volume[start:start + slab])
    else:
        for part in volume:
            measurer.add(part)
    return measurer.result()
