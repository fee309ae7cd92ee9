"""The work around the network, cut for issue 25, gives the numbers it gave before, bit for bit:
the percentile statistics, the trust record's input measures (the bundles' calibration
references were measured the old way) and the network's input, hence every class map."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_bundled_models_real import HELD_OUT

from phasewatch.bundle import Bundle, load_bundle
from phasewatch.core.normalise import ModelInput, percentiles, prepare
from phasewatch.core.pipeline import open_model, segment_images, tile_plan
from phasewatch.core.tiling import default_overlap, segment_many
from phasewatch.core.trust import EDGE_SCALES, FEATURE_CROP, HISTOGRAM_BINS, input_features, unit_histogram
from phasewatch.imageio.formats import images_in, read_pages

# every data set, with the bundled model that reads it
DATA_SETS = {
    "superalloy": ["superalloy/train/images", "superalloy/val/images", "superalloy/test/images"],
    "ebc": ["ebc/train/images", "ebc/val/images", "ebc/test/images"],
    "uhcs-microconstituent": ["uhcs/train/images", "uhcs/validate/images"],
    "uhcs-carbide": ["uhcs/validate/images"],  # the same images as above, at scale 1
    "tomography": ["tomography/train/images", "tomography/validate/images"],
}


def old_input_features(inp: ModelInput) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``trust.input_features`` as the bundles' calibration references were measured (before
    issue 25), kept here as the reference: (cdf, edges)."""
    height, width = min(inp.height, FEATURE_CROP), min(inp.width, FEATURE_CROP)
    y0, x0 = (inp.height - height) // 2, (inp.width - width) // 2
    values = inp.region(y0, y0 + height, x0, x0 + width)
    mean = np.asarray(inp.mean, np.float32)[:, None, None]
    std = np.asarray(inp.std, np.float32)[:, None, None]
    unit = np.ascontiguousarray((values * std + mean).mean(axis=0))
    counts, _ = np.histogram(np.clip(unit, 0.0, 1.0), bins=HISTOGRAM_BINS, range=(0.0, 1.0))
    cdf = np.cumsum(counts) / max(1, unit.size)
    edges = []
    for scale in EDGE_SCALES:
        size = (max(1, unit.shape[1] // scale), max(1, unit.shape[0] // scale))
        level = unit if scale == 1 else cv2.resize(unit, size, interpolation=cv2.INTER_AREA)
        gx = cv2.Sobel(level, cv2.CV_32F, 1, 0, ksize=3) / 8
        gy = cv2.Sobel(level, cv2.CV_32F, 0, 1, ksize=3) / 8
        edges.append(float(np.log(max(float(np.mean(np.hypot(gx, gy))), 1e-6))))
    return tuple(float(v) for v in cdf), tuple(edges)


def unkept(inp: ModelInput) -> ModelInput:
    """The same prepared image converting every region on its own, as before the kept plane."""
    return dataclasses.replace(inp, plane=None)


class Recorder:
    """A backend of any size that keeps every batch it is given (the network's input) and
    answers with zero maps: the input alone decides what a real backend returns."""

    name, max_batch, any_size, has_head = "recorder", 8, True, True

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(np.array(batch))
        return np.zeros((len(batch), 2, *batch.shape[2:]), np.float32)

    def run_head(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.batches.append(np.array(batch))
        maps = np.zeros((len(batch), *batch.shape[2:]), np.uint8)
        return maps, maps

    def close(self) -> None:
        pass


def network_inputs(inp: ModelInput, bundle: Bundle, planned: bool) -> list[np.ndarray]:
    recorder = Recorder()
    plan = tile_plan(bundle, recorder, 2.0) if planned else None
    list(segment_many([inp], recorder, bundle.tile, default_overlap(bundle.tile, bundle.halo), halo=bundle.halo,
                      plan=plan))
    return recorder.batches


def fields(shared_data: Path) -> Iterator[tuple[Bundle, int, Path, np.ndarray]]:
    """(bundle, index in its folder, path, image) of every field of every data set."""
    for name, folders in DATA_SETS.items():
        bundle = load_bundle(name)
        for folder in folders:
            for index, path in enumerate(images_in(shared_data / folder)):
                yield bundle, index, path, read_pages(path)[0].image


def test_percentiles_are_numpys_bit_for_bit():
    rng = np.random.default_rng(7)
    cases = 0
    for dtype in (np.uint8, np.uint16):
        top = int(np.iinfo(dtype).max)
        for shape in ((1, 1), (1, 7), (37, 53), (64, 64, 3), (5, 300, 3)):
            for high in (0, 1, 3, 300, top):  # flat, two-valued, few-valued and full-range images
                image = rng.integers(0, min(high, top) + 1, shape).astype(dtype)
                for values, whole in ((image.astype(np.float32), True),
                                      (np.tensordot(image, np.float32([0.299, 0.587, 0.114]), ([2], [0]))
                                       if image.ndim == 3 else image.astype(np.float32), image.ndim == 2)):
                    for q in ((0.5, 99.5), (0.0, 100.0), (10.0, 90.0), (33.3, 66.7)):
                        want = [float(v) for v in np.percentile(values, q)]
                        assert percentiles(values, q, top + 1, whole) == want, (dtype, shape, high, q)
                        cases += 1
    assert cases == 2 * 5 * 5 * 2 * 4


def test_percentiles_refuse_values_beyond_the_levels():
    with pytest.raises(ValueError, match="outside"):
        percentiles(np.float32([0, 300]), (1, 99), 256, True)


def test_the_histogram_is_numpys_at_the_bin_edges():
    edges = np.arange(HISTOGRAM_BINS + 1, dtype=np.float32) / HISTOGRAM_BINS
    values = np.concatenate([edges, np.nextafter(edges, np.float32(-1)), np.nextafter(edges, np.float32(2)),
                             np.float32([-3.0, -1e-30, 1.5, 7.0]),
                             np.random.default_rng(1).random(10_000, dtype=np.float32)])
    want, _ = np.histogram(np.clip(values, 0.0, 1.0), bins=HISTOGRAM_BINS, range=(0.0, 1.0))
    np.testing.assert_array_equal(unit_histogram(values.reshape(1, -1)), want)


def test_a_kept_plane_gives_every_region_its_own_conversion():
    """The plane is sliced for crops of a gray image and of a 3-channel model; for RGB into
    luminance (BLAS's sums depend on the call's shape) it serves the whole image only."""
    rng = np.random.default_rng(3)
    for image, channels in ((rng.integers(0, 255, (300, 300), np.uint8), 1),
                            (rng.integers(0, 255, (300, 300, 3), np.uint8), 1),
                            (rng.integers(0, 65535, (300, 300, 3), np.uint16), 3)):
        norm = load_bundle("superalloy").normalisation
        if channels == 3:
            norm = dataclasses.replace(norm, mean=(0.5,) * 3, std=(0.25,) * 3)
        inp = prepare(image, channels, norm)
        assert inp.plane is not None and not inp.plane.flags.writeable
        # (3, 41, 5, 69): a crop whose luminance differs from the whole image's in a few pixels
        # on this machine's OpenBLAS; whole rows, as the tiler's bands, and the whole image
        for crop in ((0, 300, 0, 300), (3, 41, 5, 69), (100, 177, 0, 300), (299, 300, 0, 1)):
            np.testing.assert_array_equal(inp.region(*crop), unkept(inp).region(*crop))


def test_a_large_image_keeps_no_plane():
    image = np.zeros((1001, 1000), np.uint8)  # its percentiles come from every other pixel
    assert prepare(image, 1, load_bundle("superalloy").normalisation).plane is None


def test_the_trust_features_and_network_input_of_every_real_field_are_as_before(shared_data):
    seen = 0
    for bundle, index, path, image in fields(shared_data):
        inp = prepare(image, bundle.channels, bundle.normalisation, bundle.scale)
        before = unkept(inp)
        assert dataclasses.astuple(input_features(inp)) == old_input_features(before), f"{bundle.name}: {path.name}"
        # one pass (planned tiles) for every field; a backend of one tile size (fixed, overlapping
        # tiles: crops of the plane) for the first of each folder, as its many tiles take time
        for planned in (True, False) if index == 0 else (True,):
            got, want = network_inputs(inp, bundle, planned), network_inputs(before, bundle, planned)
            assert len(got) == len(want) and all(np.array_equal(g, w) for g, w in zip(got, want, strict=True)), \
                f"{bundle.name}: {path.name}"
        seen += 1
    assert seen == (10 + 4 + 4) + (12 + 2 + 2) + (16 + 4) + 4 + (30 + 10)


@pytest.mark.parametrize("name", list(HELD_OUT))
def test_the_class_map_of_a_held_out_field_is_as_before(shared_data, name):
    """End to end through the bundled model's head: the maps of a field are those the same
    field gives when every region converts its own pixels (the path before the kept plane)."""
    model = open_model(name, "cpu", threads=2)
    image = read_pages(images_in(shared_data / HELD_OUT[name])[0])[0].image
    (now,) = segment_images([image], model.bundle, model.backend, plan=model.plan)
    before = unkept(prepare(image, model.bundle.channels, model.bundle.normalisation, model.bundle.scale))
    ((classes, margin),) = segment_many([before], model.backend, model.bundle.tile, halo=model.bundle.halo,
                                        plan=model.plan)
    model.close()
    if classes.shape != now.classes.shape:  # a bundle at scale != 1: back to the field, as segment_images does
        size = (image.shape[1], image.shape[0])
        classes, margin = (cv2.resize(m, size, interpolation=cv2.INTER_NEAREST) for m in (classes, margin))
    np.testing.assert_array_equal(now.classes, classes)
    np.testing.assert_array_equal(now.margin, margin)
