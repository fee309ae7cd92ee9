"""2.5D bundles at run time: a manifest's ``input.slices`` = k, each slice normalised on its own
and stacked as k channels, mirrored at the ends of a volume, streamed with k slices held."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from onnx_graphs import make_bundle

from phasewatch.bundle import BundleError, load_bundle, write_manifest
from phasewatch.core.normalise import (
    ModelInput,
    StackInput,
    prepare,
    prepare_stack,
    sliding_stacks,
    window_indices,
)
from phasewatch.core.pipeline import open_model, segment_images
from phasewatch.core.tiling import default_overlap, segment_many
from phasewatch.core.volume import open_volume, segment_volume

K = 3


def make_25d_bundle(directory: Path, slices: int = K, num_classes: int = 2) -> Path:
    """A tiny conv net over ``slices`` input channels whose manifest says: ``slices`` gray slices."""
    path = make_bundle(directory, in_channels=slices, num_classes=num_classes, tile=64)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["input"].update(channels=1, slices=slices)
    manifest["normalisation"].update(mean=[0.5], std=[0.25], rule="per-image-percentile")
    write_manifest(path, manifest)
    return path


def volume_of(slices: int = 6, side: int = 40, seed: int = 0) -> np.ndarray:
    """Slices that differ in content and in brightness range, so every slice's own stretch counts."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[:slices, :side, :side]
    ball = ((z - slices / 2) * 4) ** 2 + (y - side / 2) ** 2 + (x - side / 2) ** 2 <= (side / 3) ** 2
    gain = 1 + np.arange(slices)[:, None, None] / slices
    return np.clip((40 + 100 * ball) * gain + rng.normal(0, 10, ball.shape), 0, 255).astype(np.uint8)


class WatchedWindow(collections.deque):
    """A deque that remembers the most items it ever held."""

    most = 0

    def append(self, item) -> None:
        super().append(item)
        self.most = max(self.most, len(self))


def test_window_indices_mirror_about_the_end_slices():
    assert window_indices(0, 10, 5) == [2, 1, 0, 1, 2]
    assert window_indices(1, 10, 5) == [1, 0, 1, 2, 3]
    assert window_indices(9, 10, 5) == [7, 8, 9, 8, 7]
    assert window_indices(5, 10, 3) == [4, 5, 6]
    assert window_indices(0, 2, 5) == [0, 1, 0, 1, 0]  # shallower than the window: reflected again
    assert window_indices(0, 1, 5) == [0] * 5  # one slice: its own neighbours
    with pytest.raises(ValueError):
        window_indices(0, 3, 4)


def test_prepare_normalises_each_slice_and_mirrors_at_the_ends_exactly(tmp_path):
    bundle = load_bundle(make_25d_bundle(tmp_path / "b25"))
    volume = volume_of(slices=4)

    def one(z: int) -> np.ndarray:  # slice z by itself, as a 2D model would see it
        inp = prepare(volume[z], 1, bundle.normalisation)
        return inp.region(0, inp.height, 0, inp.width)[0]

    inputs = [prepare(s, 1, bundle.normalisation) for s in volume]
    stacks = list(sliding_stacks(inputs, K))
    assert len(stacks) == 4
    full = [s.region(0, s.height, 0, s.width) for s in stacks]
    np.testing.assert_array_equal(full[0], np.stack([one(1), one(0), one(1)]))  # slice -1 = slice 1
    np.testing.assert_array_equal(full[1], np.stack([one(0), one(1), one(2)]))
    np.testing.assert_array_equal(full[3], np.stack([one(2), one(3), one(2)]))  # slice 4 = slice 2
    # each slice by its own percentiles: slice 3 (brighter) is not stretched by slice 0's numbers
    assert full[1][0].max() == pytest.approx(full[1][2].max())
    hand = prepare_stack([volume[2], volume[3], volume[2]], 1, bundle.normalisation)
    np.testing.assert_array_equal(hand.region(5, 30, 3, 33), stacks[3].region(5, 30, 3, 33))


def test_the_sliding_window_holds_k_slices_whatever_the_depth():
    for depth in (1, 2, 3, 7, 40):
        window = WatchedWindow()
        stacks = sliding_stacks((ModelInput(np.full((8, 8), z, np.uint8), 1, 0.0, 255.0, False, (0.0,), (1.0,))
                                 for z in range(depth)), 5, window)
        centres = [int(s.centre.image[0, 0]) for s in stacks]
        assert centres == list(range(depth))
        assert window.most <= 5 and window.most == min(depth, 5)


def test_an_old_manifest_without_slices_loads_and_runs_as_before(tmp_path):
    path = make_bundle(tmp_path / "old", in_channels=1, num_classes=2, tile=64)
    assert "slices" not in json.loads((path / "manifest.json").read_text())["input"]
    bundle = load_bundle(path)
    assert bundle.slices == 1 and bundle.input_channels == 1
    image = volume_of(slices=1)[0]
    inp = prepare(image, bundle.channels, bundle.normalisation, slices=bundle.slices)
    assert isinstance(inp, ModelInput)
    model = open_model(path, "cpu")
    try:
        (got,) = segment_images([image], bundle, model.backend)
        (want,) = segment_many([inp], model.backend, bundle.tile, default_overlap(bundle.tile, bundle.halo),
                               halo=bundle.halo)
    finally:
        model.close()
    np.testing.assert_array_equal(got.classes, want.classes)


@pytest.mark.parametrize("change, reason", [
    ({"slices": 4}, "odd whole number"),
    ({"slices": 0}, "odd whole number"),
    ({"slices": 3, "channels": 3}, "gray slices"),
])
def test_bad_slices_are_refused_in_one_line(tmp_path, change, reason):
    path = make_25d_bundle(tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["input"].update(change)
    if "channels" in change:
        manifest["normalisation"].update(mean=[0.5] * 3, std=[0.25] * 3)
    with pytest.raises(BundleError, match=reason):
        write_manifest(path, manifest)


def test_a_volume_through_a_25d_bundle_is_each_slice_with_its_hand_built_stack(tmp_path):
    path = make_25d_bundle(tmp_path / "b25")
    volume = volume_of(slices=6)
    stack_file = tmp_path / "vol.tif"
    tifffile.imwrite(stack_file, volume, imagej=True, metadata={"axes": "ZYX"})
    model = open_model(path, "cpu")
    bundle = model.bundle
    assert bundle.slices == K and bundle.input_channels == K
    window = WatchedWindow()
    try:
        record = segment_volume(open_volume(stack_file), model, tmp_path / "out", window=window)
        overlap = default_overlap(bundle.tile, bundle.halo)
        hand = [prepare_stack([volume[i] for i in window_indices(z, len(volume), K)], 1, bundle.normalisation)
                for z in range(len(volume))]
        want = [s.classes for s in segment_many(hand, model.backend, bundle.tile, overlap, halo=bundle.halo,
                                                  plan=model.plan)]
        # and what a 2D reading would give differs: the neighbours matter
        flat = [s.classes for s in segment_images(list(volume), bundle, model.backend)]
    finally:
        model.close()
    got = tifffile.imread(record["outputs"]["classes"])
    assert record["slices"] == 6
    np.testing.assert_array_equal(got, np.stack(want))
    assert window.most == K
    assert any((a != b).any() for a, b in zip(flat, want, strict=True))


def test_a_25d_bundle_on_a_plain_2d_field_repeats_the_field_as_its_own_neighbours(tmp_path):
    """Documented choice: a field is a volume of one slice, mirrored into k identical slices."""
    path = make_25d_bundle(tmp_path / "b25")
    image = volume_of(slices=1, seed=3)[0]
    model = open_model(path, "cpu")
    bundle = model.bundle
    try:
        inp = prepare(image, 1, bundle.normalisation, slices=K)
        assert isinstance(inp, StackInput) and inp.channels == K
        region = inp.region(0, inp.height, 0, inp.width)
        np.testing.assert_array_equal(region, np.repeat(region[:1], K, axis=0))
        (got,) = segment_images([image], bundle, model.backend)
        (want,) = segment_many([prepare_stack([image] * K, 1, bundle.normalisation)], model.backend, bundle.tile,
                               default_overlap(bundle.tile, bundle.halo), halo=bundle.halo)
    finally:
        model.close()
    np.testing.assert_array_equal(got.classes, want.classes)
