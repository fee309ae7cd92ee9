"""The bundled models on real micrographs: the same field gives the same classes however it
was imaged, and a field from another material is flagged, never silently measured."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from phasewatch.core.pipeline import Model, open_model, process_file, segment_images
from phasewatch.core.tiling import Plan
from phasewatch.imageio.formats import images_in, read_pages

# model -> the shared data it is judged on (held out from its training)
HELD_OUT = {
    "superalloy": "superalloy/test/images",
    "ebc": "ebc/test/images",
    "uhcs-microconstituent": "uhcs/validate/images",
    "uhcs-carbide": "uhcs/validate/images",
    "tomography": "tomography/validate/images",
}
# model -> images of other materials it must refuse to vouch for
FOREIGN = {
    "superalloy": ["ebc/test/images", "tomography/validate/images"],
    "ebc": ["uhcs/validate/images"],
    "uhcs-microconstituent": ["superalloy/test/images"],
    "uhcs-carbide": ["superalloy/test/images"],
    "tomography": ["superalloy/test/images", "ebc/test/images", "uhcs/validate/images"],
}


@pytest.fixture(scope="module", params=list(HELD_OUT))
def model(request: pytest.FixtureRequest) -> Iterator[Model]:
    model = open_model(request.param, "cpu")
    yield model
    model.close()


def imaged_otherwise(image: np.ndarray) -> dict[str, np.ndarray]:
    """One 8-bit field as a microscope or an operator might also have saved it."""
    x = image.astype(np.float64)
    return {
        "16-bit (x257)": image.astype(np.uint16) * 257,
        "12-bit in 16 bits (x16)": image.astype(np.uint16) * 16,
        "contrast 0.8x + 25": np.clip(np.rint(0.8 * x + 25), 0, 255).astype(np.uint8),
        "gamma 0.8": np.clip(np.rint(255 * (x / 255) ** 0.8), 0, 255).astype(np.uint8),
    }


def fractions(classes: np.ndarray, count: int) -> np.ndarray:
    return np.bincount(classes.ravel(), minlength=count) / classes.size


def test_the_same_field_imaged_otherwise_gives_the_same_classes(model: Model, shared_data: Path) -> None:
    path = images_in(shared_data / HELD_OUT[model.bundle.name])[0]
    image = read_pages(path)[0].image
    assert image.dtype == np.uint8
    variants = imaged_otherwise(image)
    base, *others = segment_images([image, *variants.values()], model.bundle, model.backend)
    k = model.bundle.num_classes
    for name, other in zip(variants, others, strict=True):
        agreement = float(np.mean(other.classes == base.classes))
        shift = float(np.max(np.abs(fractions(other.classes, k) - fractions(base.classes, k))))
        assert agreement >= 0.97, f"{path.name} as {name}: {agreement:.3f} of pixels agree"
        assert shift <= 0.02, f"{path.name} as {name}: a class fraction moved {100 * shift:.1f} points"


def test_fields_of_other_materials_are_flagged(model: Model, shared_data: Path) -> None:
    for folder in FOREIGN[model.bundle.name]:
        for path in images_in(shared_data / folder):
            trust = process_file(path, model).record["trust"]
            assert not trust["ok"], f"{model.bundle.name} vouched for {folder}/{path.name}: {trust}"


def test_few_held_out_fields_of_the_right_material_are_flagged(model: Model, shared_data: Path) -> None:
    paths = images_in(shared_data / HELD_OUT[model.bundle.name])
    flagged = [p.name for p in paths if not process_file(p, model).record["trust"]["ok"]]
    assert len(flagged) <= 0.1 * len(paths), f"{model.bundle.name} flagged {flagged} of {len(paths)} held-out fields"


@pytest.mark.parametrize("size", [(1100, 900), (700, 1500), (333, 2000)])
def test_tiles_planned_per_field_equal_a_whole_field_pass(model: Model, shared_data: Path,
                                                          size: tuple[int, int]) -> None:
    """A field too large for the memory budget is cut into large tiles; they must agree with
    the whole field in one pass (the geometry a field that fits gets)."""
    assert model.plan is not None, f"{model.bundle.name} should take any size on the CPU backend"
    field = read_pages(images_in(shared_data / HELD_OUT[model.bundle.name])[0])[0].image
    reps = (-(-size[0] // field.shape[0]), -(-size[1] // field.shape[1])) + (1,) * (field.ndim - 2)
    large = np.ascontiguousarray(np.tile(field, reps)[: size[0], : size[1]])
    whole_plan = Plan(model.plan.multiple, 10**8, model.plan.halo)
    scaled = (round(size[0] * model.bundle.scale), round(size[1] * model.bundle.scale))
    whole_tile = whole_plan.geometry(*scaled)
    tiled_plan = Plan(model.plan.multiple, whole_tile.tile_h * whole_tile.tile_w // 3, model.plan.halo)
    assert tiled_plan.geometry(*scaled)[:2] != whole_tile[:2]  # a third of the field per tile
    (whole,) = segment_images([large], model.bundle, model.backend, plan=whole_plan)
    (tiled,) = segment_images([large], model.bundle, model.backend, plan=tiled_plan)
    agreement = float(np.mean(whole.classes == tiled.classes))
    assert agreement >= 0.999, f"{model.bundle.name} at {size}: {agreement:.5f} of pixels agree"
