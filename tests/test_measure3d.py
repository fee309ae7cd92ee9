"""3D measurements (src/phasewatch/core/measure3d.py) and ``phasewatch measure-volume`` on volumes of known topology."""

from __future__ import annotations

import json
import tracemalloc
from collections import deque
from collections.abc import Iterator
from itertools import product

import numpy as np
import pytest
import tifffile

from phasewatch.app.cli import main
from phasewatch.bundle import ClassInfo
from phasewatch.core.measure3d import VolumeMeasureError, VolumeMeasurer, measure_volume
from phasewatch.imageio.stacks import StackReadError, open_label_stack

# --- synthetic volumes ---------------------------------------------------------------------


def _grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    return z.astype(float), y.astype(float), x.astype(float)


def ball(shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float) -> np.ndarray:
    z, y, x = _grid(shape)
    return ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) <= radius**2


def torus(shape: tuple[int, int, int], major: float, minor: float) -> np.ndarray:
    z, y, x = _grid(shape)
    cz, cy, cx = ((s - 1) / 2 for s in shape)
    ring = np.sqrt((y - cy) ** 2 + (x - cx) ** 2) - major
    return ring**2 + (z - cz) ** 2 <= minor**2


def hollow_sphere(shape: tuple[int, int, int], inner: float, outer: float) -> np.ndarray:
    centre = tuple((s - 1) / 2 for s in shape)
    return ball(shape, centre, outer) & ~ball(shape, centre, inner)


def random_volume(seed: int, shape: tuple[int, int, int] = (12, 14, 13), classes: int = 3) -> np.ndarray:
    """Noise with many components, tunnels and cavities: a hard case for every rule."""
    return np.random.default_rng(seed).integers(0, classes, shape).astype(np.uint8)


def phase(volume: np.ndarray, class_id: int = 1, **kwargs) -> dict:
    return measure_volume(volume.astype(np.uint8), **kwargs)["classes"][f"class {class_id}"]


# --- independent references: cell counting and breadth-first labelling -------------------


def euler_by_cells(mask: np.ndarray, connectivity: int) -> int:
    """chi = sum over the cells of the voxel lattice of (-1)^dim, counted cell type by cell type.

    A cell spans, along each axis, either one voxel or the plane between two voxels; with
    26-connectivity it is present when any voxel it touches is set (closed cubes), with 6
    when all are (the dual complex, signs reversed). Independent of the lookup table.
    """
    padded = np.pad(mask.astype(bool), 1)
    n = mask.shape
    total = 0
    for voxel_like in product((False, True), repeat=3):
        pieces = []
        for offsets in product(*[(1,) if v else (0, 1) for v in voxel_like]):
            index = tuple(slice(o, o + (n[a] if voxel_like[a] else n[a] + 1)) for a, o in enumerate(offsets))
            pieces.append(padded[index])
        present = np.logical_or.reduce(pieces) if connectivity == 26 else np.logical_and.reduce(pieces)
        dim = sum(voxel_like)
        sign = (-1) ** dim if connectivity == 26 else (-1) ** (3 - dim)
        total += sign * int(present.sum())
    return total


def components_by_bfs(mask: np.ndarray, connectivity: int) -> list[int]:
    """Sizes of the connected components, by breadth-first search voxel by voxel."""
    steps = [d for d in product((-1, 0, 1), repeat=3) if any(d)]
    if connectivity == 6:
        steps = [d for d in steps if sum(map(abs, d)) == 1]
    seen = np.zeros(mask.shape, bool)
    sizes = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        queue, size = deque([start]), 0
        while queue:
            voxel = queue.popleft()
            size += 1
            for step in steps:
                near = tuple(int(v + d) for v, d in zip(voxel, step, strict=True))
                if all(0 <= c < s for c, s in zip(near, mask.shape, strict=True)) and mask[near] and not seen[near]:
                    seen[near] = True
                    queue.append(near)
        sizes.append(size)
    return sorted(sizes)


# --- known topology --------------------------------------------------------------------------


def test_solid_ball_is_one_component_with_euler_number_one():
    volume = ball((31, 31, 31), (15, 15, 15), 11)
    m = phase(volume)
    assert (m["components"], m["components_6"], m["components_26"]) == (1, 1, 1)
    assert m["euler_number"] == 1 and m["euler_number_6"] == 1
    assert m["interconnectivity"] == 1.0
    assert m["volume_fraction"] == pytest.approx(volume.mean())
    assert m["esd_voxels"]["median"] == pytest.approx((6 * volume.sum() / np.pi) ** (1 / 3))
    assert m["components_touching_border"] == 0


def test_torus_has_euler_number_zero():
    m = phase(torus((17, 40, 40), major=12, minor=4))
    assert m["components"] == 1
    assert m["euler_number"] == 0 and m["euler_number_6"] == 0


def test_hollow_sphere_has_euler_number_two_and_its_cavity_is_a_component_of_the_matrix():
    volume = hollow_sphere((33, 33, 33), inner=9, outer=14)
    m = phase(volume)
    assert m["components"] == 1
    assert m["euler_number"] == 2 and m["euler_number_6"] == 2
    matrix = phase(volume, class_id=0)
    assert matrix["components"] == 2  # outside and the cavity
    assert matrix["euler_number"] == 3  # a box with a cavity (2) plus a ball (1)


def test_two_equal_balls_are_two_components_half_each():
    shape = (24, 24, 50)
    volume = ball(shape, (12, 12, 12), 8) | ball(shape, (12, 12, 37), 8)
    m = phase(volume, spacing_um=(0.5, 0.5, 0.5))
    assert m["components"] == 2 and m["components_6"] == 2
    assert m["interconnectivity"] == pytest.approx(0.5)
    assert m["euler_number"] == 2
    assert m["esd_voxels"]["count"] == 2
    assert m["esd_voxels"]["min"] == m["esd_voxels"]["max"]
    assert m["esd_um"]["median"] == pytest.approx(0.5 * m["esd_voxels"]["median"])
    valid_mm3 = volume.size * 0.125e-9
    assert m["euler_number_per_mm3"] == pytest.approx(2 / valid_mm3)


def test_diagonal_chain_is_one_component_with_26_and_separate_voxels_with_6():
    volume = np.zeros((6, 6, 6), np.uint8)
    for i in range(5):
        volume[i, i, i] = 1
    m = phase(volume)
    assert m["components_26"] == 1 and m["components"] == 1
    assert m["components_6"] == 5
    assert m["euler_number"] == 1 and m["euler_number_6"] == 5
    assert m["interconnectivity"] == 1.0 and m["interconnectivity_6"] == pytest.approx(0.2)


# --- against independent references -------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_euler_numbers_match_an_independent_cell_count(seed):
    volume = random_volume(seed)
    result = measure_volume(volume)["classes"]
    for class_id in range(3):
        mask = volume == class_id
        assert result[f"class {class_id}"]["euler_number"] == euler_by_cells(mask, 26)
        assert result[f"class {class_id}"]["euler_number_6"] == euler_by_cells(mask, 6)


def test_cell_count_reference_knows_the_shapes():
    """The reference itself on the known shapes, so that agreeing with it means something."""
    assert euler_by_cells(ball((15, 15, 15), (7, 7, 7), 5), 26) == 1
    assert euler_by_cells(torus((11, 30, 30), 9, 3), 6) == 0
    assert euler_by_cells(hollow_sphere((25, 25, 25), 6, 10), 26) == 2


@pytest.mark.parametrize("seed", range(3))
def test_components_match_breadth_first_search(seed):
    volume = random_volume(seed, shape=(9, 10, 11), classes=2)
    result = measure_volume(volume)["classes"]["class 1"]
    mask = volume == 1
    sizes26, sizes6 = components_by_bfs(mask, 26), components_by_bfs(mask, 6)
    assert result["components_26"] == len(sizes26)
    assert result["components_6"] == len(sizes6)
    assert result["interconnectivity"] == pytest.approx(max(sizes26) / mask.sum())
    assert result["interconnectivity_6"] == pytest.approx(max(sizes6) / mask.sum())
    expected_esd = np.cbrt(6 * np.array(sizes26) / np.pi)
    assert result["esd_voxels"]["mean"] == pytest.approx(expected_esd.mean())
    assert result["esd_voxels"]["median"] == pytest.approx(np.median(expected_esd))


def test_pairs_across_slices_by_neighbourhood_extremes_match_the_nine_shifts():
    """The fast path (3 x 3 max and min of the labels below) against looking up all 9 neighbours."""
    from phasewatch.core.measure3d import _pairs_26, _pairs_by_shifts

    rng = np.random.default_rng(5)
    for base in (0, 250, 300, 70_000, 1 << 24):  # uint8, uint16, float32 and exact-lookup paths
        ids = rng.integers(0, 6, (30, 31)) * (rng.random((30, 31)) < 0.4)
        previous = np.where(ids > 0, ids + base, 0).astype(np.uint32)
        current = (rng.integers(0, 6, (30, 31)) * (rng.random((30, 31)) < 0.5)).astype(np.int32)
        fast = _pairs_26(previous, current, current > 0)
        assert np.array_equal(fast, _pairs_by_shifts(previous, current, *np.nonzero(current > 0)))
        assert len(fast) > 10


# --- invariances and streaming -------------------------------------------------------------

TOPOLOGY_KEYS = ("voxels", "volume_fraction", "components", "components_6", "interconnectivity",
                 "interconnectivity_6", "euler_number", "euler_number_6", "esd_voxels", "components_touching_border")


def _topology(result: dict) -> dict:
    return {name: {k: m[k] for k in TOPOLOGY_KEYS} for name, m in result["classes"].items()}


@pytest.mark.parametrize("axes", [(0, 1), (0, 2), (1, 2)])
@pytest.mark.parametrize("turns", [1, 2, 3])
def test_invariant_under_90_degree_rotations(axes, turns):
    volume = random_volume(7, shape=(10, 12, 14))
    volume[2:8, 3:9, 4:11] = 1  # a big block too, so that the largest component is not a speck
    expected = _topology(measure_volume(volume))
    rotated = np.ascontiguousarray(np.rot90(volume, turns, axes))
    assert _topology(measure_volume(rotated)) == expected


def _whole_volume_reference() -> np.ndarray:
    volume = random_volume(3, shape=(23, 18, 16))
    shape = volume.shape
    volume[ball(shape, (11, 9, 8), 6)] = 1  # a ball that every slab boundary cuts
    volume[torus(shape, 6, 2)] = 2
    return volume


@pytest.mark.parametrize("slab", [1, 2, 5, 7, 22, 23, 100])
def test_streamed_slabs_give_the_whole_volume_result(slab):
    volume = _whole_volume_reference()
    whole = VolumeMeasurer()
    whole.add(volume)  # all slices in one call
    assert measure_volume(volume, slab=slab) == whole.result()


def test_an_iterator_of_slices_gives_the_array_result():
    volume = _whole_volume_reference()

    def slices() -> Iterator[np.ndarray]:
        for plane in volume:
            yield plane.copy()

    assert measure_volume(slices()) == measure_volume(volume)


def test_a_class_absent_from_the_first_slices_is_measured_from_where_it_starts():
    volume = np.zeros((20, 20, 20), np.uint8)
    volume[ball(volume.shape, (14, 10, 10), 4)] = 1  # class 1 first appears at slice 10
    m = phase(volume)
    assert (m["components"], m["euler_number"], m["components_touching_border"]) == (1, 1, 0)
    named = measure_volume(volume, classes=[ClassInfo(0, "matrix", (0, 0, 0), "background"),
                                            ClassInfo(1, "pore", (0, 0, 0), "phase")])
    assert named["classes"]["pore"]["euler_number"] == 1


def test_components_touching_the_volume_faces_are_flagged():
    volume = np.zeros((10, 10, 10), np.uint8)
    volume[0:2, 4:6, 4:6] = 1  # first slice
    volume[4:6, 0:2, 4:6] = 1  # y edge
    volume[8:10, 4:6, 4:6] = 1  # last slice
    volume[4:6, 4:6, 4:6] = 1  # inside: two voxels from the y-edge block
    m = phase(volume)
    assert m["components"] == 4
    assert m["components_touching_border"] == 3


def test_excluded_classes_leave_the_valid_volume():
    volume = np.zeros((4, 10, 10), np.uint8)
    volume[:, :, :5] = 2  # half of it is a data bar
    volume[:, 2:4, 6:8] = 1
    classes = [ClassInfo(0, "matrix", (0, 0, 0), "background"), ClassInfo(1, "si", (0, 0, 0), "phase"),
               ClassInfo(2, "bar", (0, 0, 0), "excluded")]
    result = measure_volume(volume, classes=classes)
    assert result["valid_voxels"] == 200
    assert set(result["classes"]) == {"matrix", "si"}
    assert result["classes"]["si"]["volume_fraction"] == pytest.approx(16 / 200)


def test_a_boolean_mask_is_classes_0_and_1():
    mask = ball((15, 15, 15), (7, 7, 7), 5)
    assert measure_volume(mask) == measure_volume(mask.astype(np.uint8))


def test_bad_input_is_refused_with_one_line():
    with pytest.raises(VolumeMeasureError, match="class id 3"):
        measure_volume(np.full((2, 4, 4), 3, np.uint8), classes=[ClassInfo(i, str(i), (0, 0, 0), "phase")
                                                              for i in range(3)])
    measurer = VolumeMeasurer()
    measurer.add(np.zeros((4, 4), np.uint8))
    with pytest.raises(VolumeMeasureError, match="slice 1 is 5 x 4"):
        measurer.add(np.zeros((5, 4), np.uint8))
    with pytest.raises(VolumeMeasureError, match="spacing"):
        VolumeMeasurer(spacing_um=(1.0, 0.0, 1.0))
    with pytest.raises(VolumeMeasureError, match="no slice"):
        VolumeMeasurer().result()
    with pytest.raises(VolumeMeasureError, match="integers"):
        measure_volume(np.zeros((2, 3, 3), np.float32))


# --- bounded memory ------------------------------------------------------------------------


def _write_stack(path, slices: Iterator[np.ndarray], spacing: tuple[float, float, float] | None = None) -> None:
    """A multi-page ImageJ TIFF written page by page (the test never holds the volume either)."""
    kwargs: dict = {}
    if spacing is not None:
        kwargs = {"resolution": (1 / spacing[2], 1 / spacing[1]), "metadata": {"spacing": spacing[0], "unit": "um"}}
    planes = list(slices) if spacing is not None else None
    if planes is not None:  # ImageJ metadata needs the stack in one write; these volumes are small
        tifffile.imwrite(path, np.stack(planes), imagej=True, **kwargs)
        return
    with tifffile.TiffWriter(path) as tif:
        for plane in slices:
            tif.write(plane, contiguous=True)


def _rods_and_pores(shape: tuple[int, int, int]) -> Iterator[np.ndarray]:
    """Slices of a rod through the whole volume (class 1) and a ball (class 2), made one at a time."""
    depth, height, width = shape
    y, x = np.mgrid[:height, :width]
    for z in range(depth):
        plane = np.zeros((height, width), np.uint8)
        plane[(y - 64) ** 2 + (x - 64) ** 2 <= 20**2] = 1
        plane[(y - 180) ** 2 + (x - 180) ** 2 + (z - 150) ** 2 <= 40**2] = 2
        yield plane


def test_a_256_x_256_x_300_stack_is_measured_in_memory_far_below_its_size(tmp_path):
    shape = (300, 256, 256)
    path = tmp_path / "big.tif"
    _write_stack(path, _rods_and_pores(shape))
    volume_bytes = int(np.prod(shape))
    from phasewatch.imageio.stacks import open_label_stack

    measure_volume(np.zeros((2, 3, 3), np.uint8))  # lazy imports (OpenCV's, numpy's) are not the volume's
    tracemalloc.start()
    try:
        stack = open_label_stack(path)
        measurer = VolumeMeasurer()
        for plane in stack.slices():
            measurer.add(plane)
        result = measurer.result()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result["shape"] == list(shape)
    assert peak < volume_bytes / 4, f"peak {peak / 1e6:.1f} MB for a {volume_bytes / 1e6:.1f} MB volume"
    rod, pore = result["classes"]["class 1"], result["classes"]["class 2"]
    assert (rod["components"], rod["euler_number"], rod["components_touching_border"]) == (1, 1, 1)
    assert (pore["components"], pore["euler_number"], pore["components_touching_border"]) == (1, 1, 0)
    matrix = result["classes"]["class 0"]
    assert matrix["euler_number"] == 1  # a box (1) pierced by the rod (a tunnel: -1) around the pore (a cavity: +1)


# --- the command -----------------------------------------------------------------------------


def _two_balls_stack(tmp_path, spacing: tuple[float, float, float] | None):
    shape = (16, 16, 34)
    volume = (ball(shape, (8, 8, 8), 5) | ball(shape, (8, 8, 25), 5)).astype(np.uint8)
    path = tmp_path / "labels.tif"
    _write_stack(path, iter(volume), spacing)
    return path, volume


def test_measure_volume_command_prints_one_json_object(tmp_path, capsys):
    path, volume = _two_balls_stack(tmp_path, spacing=(2.0, 0.5, 0.5))
    assert main(["measure-volume", str(path), "--classes", "matrix,si", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["spacing_um"] == pytest.approx([2.0, 0.5, 0.5])
    si = result["classes"]["si"]
    assert si["volume_fraction"] == pytest.approx(volume.mean())
    assert (si["components"], si["interconnectivity"], si["euler_number"]) == (2, 0.5, 2)
    assert si["euler_number_per_mm3"] == pytest.approx(2 / (volume.size * 0.5e-9))
    assert si["esd_um"]["count"] == 2


def test_measure_volume_spacing_option_and_table(tmp_path, capsys):
    path, _ = _two_balls_stack(tmp_path, spacing=None)
    assert main(["measure-volume", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["spacing_um"] is None  # no metadata: voxels
    assert main(["measure-volume", str(path), "--spacing", "1,1,1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["classes"]["class 1"]["esd_um"]["count"] == 2
    assert main(["measure-volume", str(path), "--classes", '[{"name": "matrix"}, {"name": "si"}]']) == 0
    table = capsys.readouterr().out
    assert "si" in table and "Euler 26" in table


@pytest.mark.parametrize("argv, reason", [
    (["--spacing", "1,1"], "--spacing"),
    (["--classes", "matrix"], "class id 1; the classes are ids 0..0"),
    (["--classes", "[oops"], "not valid JSON"),
])
def test_measure_volume_errors_are_one_line(tmp_path, capsys, argv, reason):
    path, _ = _two_balls_stack(tmp_path, spacing=None)
    assert main(["measure-volume", str(path), *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and reason in err


def test_measure_volume_names_a_missing_or_bad_file(tmp_path, capsys):
    missing = tmp_path / "missing.tif"
    assert main(["measure-volume", str(missing)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"not a tiff at all")
    assert main(["measure-volume", str(garbage)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(garbage) in err


def test_measure_volume_reads_ome_spacing(tmp_path, capsys):
    _, volume = _two_balls_stack(tmp_path, spacing=None)
    path = tmp_path / "labels.ome.tif"
    tifffile.imwrite(path, volume, metadata={"axes": "ZYX", "PhysicalSizeZ": 3.0, "PhysicalSizeY": 0.25,
                                             "PhysicalSizeX": 0.25})
    assert main(["measure-volume", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["spacing_um"] == pytest.approx([3.0, 0.25, 0.25])


def test_measure_volume_reads_an_imagej_stack_with_one_page_for_all_slices(tmp_path, capsys):
    """ImageJ writes stacks over 4 GB as one page and contiguous slices after it."""
    _, volume = _two_balls_stack(tmp_path, spacing=None)
    path = tmp_path / "truncated.tif"
    tifffile.imwrite(path, volume, imagej=True, truncate=True, resolution=(2.0, 2.0),
                     metadata={"axes": "ZYX", "spacing": 1.5, "unit": "um"})
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 1  # really the case under test
    assert main(["measure-volume", str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["shape"] == list(volume.shape)
    assert result["spacing_um"] == pytest.approx([1.5, 0.5, 0.5])
    assert result == {**measure_volume(volume, spacing_um=(1.5, 0.5, 0.5)), "file": str(path)}


@pytest.mark.parametrize("truncate", [False, True], ids=["page per slice", "one page, contiguous slices"])
def test_one_slice_is_read_alone_from_either_imagej_layout(tmp_path, truncate):
    volume = random_volume(3, shape=(6, 9, 11))
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, volume, imagej=True, truncate=truncate, metadata={"axes": "ZYX"})
    stack = open_label_stack(path)
    for index in (0, 3, 5):
        assert np.array_equal(stack.plane(index), volume[index])
    for index in (-1, 6):
        with pytest.raises(StackReadError, match=f"no slice {index}; the stack has 6"):
            stack.plane(index)


def test_measure_volume_refuses_a_multichannel_imagej_stack(tmp_path, capsys):
    path = tmp_path / "channels.tif"
    tifffile.imwrite(path, np.zeros((3, 2, 8, 8), np.uint8), imagej=True, metadata={"axes": "ZCYX"})
    assert main(["measure-volume", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "2 channels x 3 slices" in err
