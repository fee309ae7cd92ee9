"""Sliding window: tiled == whole-image pass, mixed batches, bounded memory, geometry."""

from __future__ import annotations

import tracemalloc

import numpy as np
import onnxruntime as ort
import pytest
from onnx_graphs import conv_net_halo, make_conv_net

from phasewatch.backends.base import call_pixels
from phasewatch.backends.onnxruntime import CPU_CALL_PIXELS, OrtBackend
from phasewatch.backends.tta import TtaBackend
from phasewatch.core.tiling import (
    STAGES,
    Geometry,
    Plan,
    default_overlap,
    gaussian_window,
    mirror_indices,
    segment,
    segment_many,
    softmax_margin,
    tile_starts,
)

TILE = 64
LAYERS = (1, 2, 3)  # halo 6
HALO = conv_net_halo(LAYERS)
OVERLAP = default_overlap(TILE, HALO)


class ArrayInput:
    """The ModelInput protocol over an in-memory C x H x W float32 array."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.channels, self.height, self.width = array.shape

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        assert 0 <= y0 < y1 <= self.height and 0 <= x0 < x1 <= self.width, "out of bounds"
        return self.array[:, y0:y1, x0:x1]


def random_image(height: int, width: int, channels: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(channels, height, width)).astype(np.float32)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return make_conv_net(
        tmp_path_factory.mktemp("net") / "net.onnx", in_channels=2, num_classes=4, layers=LAYERS
    )


@pytest.fixture(scope="module")
def backend(net):
    return OrtBackend(net, "cpu", max_batch=4)


def whole_image_classes(net, image: np.ndarray) -> np.ndarray:
    """The same network on the whole image, mirror padded by more than its halo."""
    pad = HALO + 2
    padded = np.pad(image, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    session = ort.InferenceSession(str(net), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": padded[None]})[0][0]
    return np.argmax(logits[:, pad:-pad, pad:-pad], axis=0).astype(np.uint8)


@pytest.mark.parametrize(
    "height, width",
    [(40, 50), (257, 131), (1, 300), (300, 1), (128, 192), (64, 64), (1, 1)],
)
def test_tiled_equals_whole_image_pass(net, backend, height, width):
    image = random_image(height, width, seed=height * 1000 + width)
    tiled = segment(ArrayInput(image), backend, TILE, OVERLAP, halo=HALO).classes
    whole = whole_image_classes(net, image)
    assert tiled.shape == (height, width) and tiled.dtype == np.uint8
    agreement = np.mean(tiled == whole)
    assert agreement >= 0.999, f"{agreement:.5f} of pixels agree"


def plain_pass_classes(net, image: np.ndarray) -> np.ndarray:
    """The network once over the image itself: what a field that fits the budget gets."""
    session = ort.InferenceSession(str(net), providers=["CPUExecutionProvider"])
    return np.argmax(session.run(None, {"input": image[None]})[0][0], axis=0).astype(np.uint8)


def test_plan_geometry_by_hand():
    plan = Plan(multiple=16, max_pixels=4_000_000, halo=80)
    assert plan.geometry(512, 512) == Geometry(512, 512, 0, 0, 16)  # the whole field
    assert plan.geometry(484, 645) == Geometry(496, 656, 0, 0, 16)  # up to multiples of the stride
    # A band across 20000 px holds 4 budgets (16 MP): 800 rows; the tiles as wide as the budget allows.
    assert plan.geometry(20000, 20000) == Geometry(800, 4992, 160, 160, 16)
    assert plan.geometry(20000, 1000) == Geometry(3968, 1008, 160, 0, 16)  # a strip: as tall as fits
    assert plan.geometry(1000, 20000) == Geometry(800, 4992, 160, 160, 16)
    assert plan.geometry(3000, 3000) == Geometry(2000, 2000, 160, 160, 16)  # isqrt(4e6) = 2000
    assert plan.batch(Geometry(512, 512, 0, 0, 16), 8) == 8  # 15 would fit: the backend's batch wins
    assert plan.batch(Geometry(1024, 1024, 0, 0, 16), 8) == 3
    assert plan.batch(Geometry(2000, 2000, 160, 160, 16), 8) == 1
    with pytest.raises(ValueError, match="too small for the model's halo"):
        Plan(16, 100 * 100, 80).geometry(1000, 1000)
    # A CPU's per-call cap: the whole field still in one tile, but one field per call.
    cpu = Plan(multiple=16, max_pixels=4_000_000, halo=80, call_pixels=1 << 17)
    assert cpu.geometry(512, 512) == Geometry(512, 512, 0, 0, 16)
    assert cpu.batch(Geometry(512, 512, 0, 0, 16), 8) == 1
    assert cpu.batch(Geometry(256, 256, 0, 0, 16), 8) == 2
    assert cpu.batch(Geometry(128, 128, 0, 0, 16), 16) == 8


def test_the_cpu_backend_asks_for_few_pixels_per_call(tmp_path):
    path = tmp_path / "net.onnx"
    make_conv_net(path, 1, 2)
    backend = OrtBackend(path, "cpu", 8)
    assert call_pixels(backend) == CPU_CALL_PIXELS
    assert call_pixels(TtaBackend(backend, "flips")) == CPU_CALL_PIXELS  # asked through the wrapper


@pytest.mark.parametrize("height, width, budget", [
    (70, 90, 10**6), (257, 131, 40 * 40), (300, 1, 50), (1, 300, 50), (150, 600, 64 * 64), (1, 1, 10**6),
])
def test_planned_tiles_equal_one_pass_over_the_image(net, backend, height, width, budget):
    image = random_image(height, width, seed=height * 7 + width)
    plan = Plan(multiple=1, max_pixels=budget, halo=HALO)
    planned = segment(ArrayInput(image), backend, TILE, halo=HALO, plan=plan).classes
    agreement = np.mean(planned == plain_pass_classes(net, image))
    assert agreement >= 0.999, f"{agreement:.5f} of pixels agree ({plan.geometry(height, width)})"


def test_planned_tiles_need_their_edges_trimmed(net, backend):
    # Guards the test above: the same tiles with every edge kept (halo 0) let
    # context-starved logits into the seams.
    image = random_image(257, 131, seed=11)
    plan = Plan(multiple=1, max_pixels=40 * 40, halo=0)
    planned = segment(ArrayInput(image), backend, TILE, halo=HALO, plan=Plan(1, 40 * 40, HALO)).classes
    untrimmed = segment(ArrayInput(image), backend, TILE, halo=0, plan=plan).classes
    whole = plain_pass_classes(net, image)
    assert np.mean(planned == whole) >= 0.999 > np.mean(untrimmed == whole)


def test_a_batch_holds_tiles_of_one_size_within_the_budget(backend):
    shapes = []

    class Recording:
        name, max_batch, any_size = "recording", 8, True

        def run(self, batch):
            shapes.append(batch.shape)
            return backend.run(batch)

        def close(self):
            pass

    images = [random_image(h, w, seed=i) for i, (h, w) in enumerate([(30, 40), (30, 40), (30, 40), (50, 20)])]
    plan = Plan(multiple=8, max_pixels=2 * 32 * 40, halo=HALO)  # two whole 32 x 40 fields per call
    maps = list(segment_many((ArrayInput(im) for im in images), Recording(), TILE, halo=HALO, plan=plan))
    assert [m.classes.shape for m in maps] == [(30, 40), (30, 40), (30, 40), (50, 20)]
    assert shapes == [(2, 2, 32, 40), (1, 2, 32, 40), (1, 2, 56, 24)]


@pytest.mark.parametrize("overlap, halo", [(0, 0), (OVERLAP, 0)])
def test_context_starved_tile_edges_break_agreement(net, backend, overlap, halo):
    # Guards the test above: without overlap, or with the tile edges' logits kept in
    # the blend, zero-padded context leaks into the result.
    image = random_image(257, 131, seed=5)
    tiled = segment(ArrayInput(image), backend, TILE, overlap, halo=halo).classes
    assert np.mean(tiled == whole_image_classes(net, image)) < 0.999


def test_mixed_batches_equal_one_by_one(backend):
    images = [random_image(h, w, seed=i) for i, (h, w) in enumerate([(70, 90), (30, 20), (150, 61)])]
    one_by_one = [segment(ArrayInput(im), backend, TILE, OVERLAP, batch=5, halo=HALO) for im in images]

    sizes = []

    class Recording:
        name, max_batch = "recording", 5

        def run(self, batch):
            sizes.append(len(batch))
            return backend.run(batch)

        def close(self):
            pass

    mixed = list(
        segment_many((ArrayInput(im) for im in images), Recording(), TILE, OVERLAP, halo=HALO)
    )

    assert len(mixed) == 3
    for got, want in zip(mixed, one_by_one, strict=True):
        np.testing.assert_array_equal(got.classes, want.classes)
        np.testing.assert_array_equal(got.margin, want.margin)
    # Hand-computed: 2x2 + 1 + 4x2 = 13 tiles (stride 48, margin 8) in batches of 5:
    # every batch but the last is full, so batches mix images.
    assert sizes == [5, 5, 3]


class NearestCentre:
    """A pointwise fake model: class k scores -(x - k)^2, so argmax = nearest integer."""

    name, max_batch = "nearest-centre", 16

    def __init__(self, classes: int) -> None:
        self.centres = np.arange(classes, dtype=np.float32)[None, :, None, None]

    def run(self, batch: np.ndarray) -> np.ndarray:
        return -((batch[:, :1] - self.centres) ** 2)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("height, width", [(4000, 300), (1000, 3000)])
@pytest.mark.parametrize("plan", [None, Plan(multiple=8, max_pixels=64 * 64, halo=4)])
def test_memory_is_bounded_by_a_band(height, width, plan):
    classes = 4
    image = np.random.default_rng(3).uniform(-0.5, classes - 0.5, (1, height, width))
    image = image.astype(np.float32)
    inp = ArrayInput(image)

    tracemalloc.start()
    result = segment(inp, NearestCentre(classes), TILE, overlap=16, plan=plan).classes
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    np.testing.assert_array_equal(result, np.rint(image[0]).astype(np.uint8))
    full_accumulator = height * width * classes * 4
    outputs = 2 * height * width  # the uint8 class and margin maps are the result itself
    assert peak - outputs < full_accumulator / 4, f"peak {peak} bytes vs full accumulator {full_accumulator}"


def test_timings_accumulate_per_stage(backend):
    timings: dict[str, float] = {}
    segment(ArrayInput(random_image(100, 100)), backend, TILE, OVERLAP, timings=timings)
    assert set(timings) == set(STAGES) and all(v > 0 for v in timings.values())


def test_wrong_backend_output_is_one_line_error():
    class Broken(NearestCentre):
        def run(self, batch):
            return super().run(batch)[:, :, :-1]

    with pytest.raises(ValueError, match="returned logits of shape") as err:
        segment(ArrayInput(random_image(20, 20, channels=1)), Broken(3), TILE)
    assert "\n" not in str(err.value)


def test_mirror_indices_match_numpy_reflect():
    for length in (1, 2, 5, 17):
        values = np.arange(length)
        padded = np.pad(values, (40, 40), mode="reflect")
        np.testing.assert_array_equal(mirror_indices(-40, length + 40, length), padded)


def test_tile_starts_cover_the_image_with_margin():
    # Hand-computed: 2048 px, tile 256, overlap 64 -> stride 192, margin 32, padded 2112:
    # ceil((2112 - 256) / 192) + 1 = 11 tiles, the last pulled back to end at 2048 + 32.
    starts = tile_starts(2048, 256, 64)
    assert len(starts) == 11 and starts[0] == -32 and starts[-1] + 256 == 2080
    assert list(tile_starts(10, 64, 16)) == [-8]


def test_gaussian_window_shape():
    window = gaussian_window(64)
    centre, edge = window[31, 31], window[0, 31]
    # sigma = 8; row 0 is 31.5 px from the centre, row 31 is 0.5 px from it.
    assert edge / centre == pytest.approx(np.exp(-0.5 * (31.5 / 8) ** 2 + 0.5 * (0.5 / 8) ** 2))
    np.testing.assert_allclose(window, window.T)
    trimmed = gaussian_window(64, 3)
    assert not trimmed[:3].any() and not trimmed[:, -3:].any()
    np.testing.assert_array_equal(trimmed[3:-3, 3:-3], window[3:-3, 3:-3])


def test_default_overlap_covers_twice_the_halo():
    assert default_overlap(256, 10) == 64
    assert default_overlap(256, 45) == 90
    assert default_overlap(64, 7) == 16
    with pytest.raises(ValueError):
        default_overlap(32, 20)


def test_margin_is_the_softmax_gap_of_the_window_weighted_mean_logits():
    logits = np.array([2.0, 0.5, -1.0], np.float32)
    p = np.exp(logits) / np.exp(logits).sum()
    weight = np.full((1, 1), 3.0, np.float32)  # three overlapping tiles summed these logits
    margin = softmax_margin(3 * logits[:, None, None], weight)
    assert margin[0, 0] == round(255 * (p[0] - p[1]))
    tie = softmax_margin(np.zeros((3, 1, 1), np.float32), weight)
    assert tie[0, 0] == 0
