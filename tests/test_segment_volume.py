"""`phasewatch segment` on a volume: a Z stack (or, with --volume, any multi-page TIFF or a folder
of numbered slices) in, one multi-page class-id TIFF and one volume JSON out."""

from __future__ import annotations

import json
import tracemalloc

import cv2
import numpy as np
import pytest
import tifffile
from onnx_graphs import make_bundle

from phasewatch.app.cli import main
from phasewatch.bundle import bundled_model_names, load_bundle
from phasewatch.core.measure3d import measure_volume
from phasewatch.core.pipeline import open_model
from phasewatch.core.volume import Volume, numbered_slices, open_volume, segment_volume
from phasewatch.imageio.formats import ImageReadError, read_pages

SPACING = (2.0, 0.5, 0.5)  # z, y, x in µm


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("bundle") / "tiny", in_channels=1, num_classes=2, tile=64)


def ball_volume(slices: int = 7, side: int = 48, seed: int = 0) -> np.ndarray:
    """A bright ball in a noisy dark box, uint8 (Z, Y, X)."""
    z, y, x = np.ogrid[:slices, :side, :side]
    inside = ((z - slices / 2) * 3) ** 2 + (y - side / 2) ** 2 + (x - side / 2) ** 2 <= (side / 3) ** 2
    noise = np.random.default_rng(seed).normal(0, 12, (slices, side, side))
    return np.clip(60 + 130 * inside + noise, 0, 255).astype(np.uint8)


def write_imagej_stack(path, volume: np.ndarray, spacing=SPACING) -> None:
    tifffile.imwrite(path, volume, imagej=True, resolution=(1 / spacing[2], 1 / spacing[1]),
                     metadata={"axes": "ZYX", "spacing": spacing[0], "unit": "um"})


def segment(*argv) -> int:
    return main(["segment", *map(str, argv), "--backend", "cpu"])


def test_an_imagej_stack_is_one_volume_with_classes_tiff_and_volume_json(tmp_path, bundle, capsys):
    volume = ball_volume()
    stack = tmp_path / "ball.tif"
    write_imagej_stack(stack, volume)
    out = tmp_path / "out"

    assert segment(stack, "--model", bundle, "--out", out) == 0

    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0].startswith("ball.tif: volume % class0 ")  # its fractions, then its speed
    assert "ball.tif" in lines[1] and "s per slice" in lines[1] and "slices/s" in lines[1]
    assert sorted(p.name for p in out.iterdir()) == ["ball.classes.tif", "ball.volume.json"]
    with tifffile.TiffFile(out / "ball.classes.tif") as tif:
        assert len(tif.pages) == len(volume)  # one page per slice
        classes = tif.asarray()
    assert classes.shape == volume.shape and classes.dtype == np.uint8
    record = json.loads((out / "ball.volume.json").read_text())
    assert record["slices"] == len(volume) and record["shape"] == list(volume.shape)
    assert record["spacing_um"] == pytest.approx(SPACING) and record["spacing_source"] == "imagej"
    assert [s["slice"] for s in record["per_slice"]] == list(range(len(volume)))
    for entry, plane in zip(record["per_slice"], classes, strict=True):
        assert entry["fractions"]["class1"] == pytest.approx(np.mean(plane == 1))
        assert entry["trust"].keys() >= {"ok", "score", "reasons"}
    timing = record["timing"]
    assert timing["seconds_per_slice"] == pytest.approx(timing["seconds"] / len(volume), rel=1e-2, abs=1e-4)
    assert timing["slices_per_second"] > 0

    # The 3D numbers are measure3d's on the stack as written, and measure-volume reads it back calibrated.
    classes_info = load_bundle(bundle).classes
    assert record["measurements_3d"] == measure_volume(classes, classes_info, SPACING)
    assert main(["measure-volume", str(out / "ball.classes.tif"), "--classes", "class0,class1", "--json"]) == 0
    read_back = json.loads(capsys.readouterr().out)
    assert read_back["spacing_um"] == pytest.approx(SPACING)
    assert read_back["classes"]["class1"]["volume_fraction"] == pytest.approx(
        record["measurements_3d"]["classes"]["class1"]["volume_fraction"])
    assert read_back["classes"]["class1"]["euler_number"] == record["measurements_3d"]["classes"]["class1"][
        "euler_number"]


def test_measure_volume_names_the_classes_segment_wrote_into_the_stack(tmp_path, capsys):
    """Issue 24: NAME.classes.tif carries its model's classes (ImageJ properties, colours as its
    lookup table), so measure-volume on it names them; --classes takes NAME.volume.json too."""
    bundle = make_bundle(tmp_path / "b", in_channels=1, num_classes=3, tile=64)
    manifest = json.loads((bundle / "manifest.json").read_text())
    names = ["gamma matrix", "secondary gamma prime", "pores"]
    manifest["classes"] = [{**c, "name": n, "role": r} for c, n, r in
                           zip(manifest["classes"], names, ("background", "phase", "excluded"), strict=True)]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    stack = tmp_path / "ball.tif"
    write_imagej_stack(stack, ball_volume())
    out = tmp_path / "out"
    assert segment(stack, "--model", bundle, "--out", out) == 0
    capsys.readouterr()
    with tifffile.TiffFile(out / "ball.classes.tif") as tif:
        lut = np.reshape(tif.imagej_metadata["LUTs"], (3, 256))  # tifffile gives a single LUT unlisted
    for c in manifest["classes"]:
        assert list(lut[:, c["id"]]) == c["colour"]
    record = json.loads((out / "ball.volume.json").read_text())
    assert [(c["name"], c["role"]) for c in record["classes"]] == [(c["name"], c["role"]) for c in manifest["classes"]]

    assert main(["measure-volume", str(out / "ball.classes.tif"), "--json"]) == 0
    named = json.loads(capsys.readouterr().out)
    assert list(named["classes"]) == ["gamma matrix", "secondary gamma prime"]  # pores: excluded
    assert named["classes"] == record["measurements_3d"]["classes"]
    assert main(["measure-volume", str(out / "ball.classes.tif"), "--classes", str(out / "ball.volume.json"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["classes"] == named["classes"]
    assert main(["measure-volume", str(out / "ball.classes.tif")]) == 0
    assert "secondary gamma prime" in capsys.readouterr().out


def test_per_slice_fractions_are_those_of_the_slices_as_fields(tmp_path, bundle):
    """The same pages as a plain multi-page TIFF stay separate fields; their fractions are
    the volume's per-slice fractions."""
    volume = ball_volume(slices=6, seed=1)
    write_imagej_stack(tmp_path / "vol.tif", volume)
    tifffile.imwrite(tmp_path / "plain.tif", volume)  # no ImageJ or OME metadata: fields
    out = tmp_path / "out"

    assert segment(tmp_path / "vol.tif", tmp_path / "plain.tif", "--model", bundle, "--out", out) == 0

    assert not (out / "plain.volume.json").exists() and not (out / "plain.classes.tif").exists()
    record = json.loads((out / "vol.volume.json").read_text())
    for index, entry in enumerate(record["per_slice"]):
        field = json.loads((out / f"plain.p{index:04d}.json").read_text())
        assert entry["fractions"] == pytest.approx(field["fractions"])
        assert entry["trust"]["ok"] == field["trust"]["ok"]
        assert (record["model"], record["backend"]) == (field["model"], field["backend"])  # the same identity


def test_volume_option_makes_a_plain_stack_one_volume_with_given_spacing(tmp_path, bundle):
    volume = ball_volume(slices=6, seed=2)
    tifffile.imwrite(tmp_path / "plain.tif", volume)
    out = tmp_path / "out"
    assert segment(tmp_path / "plain.tif", "--volume", "--spacing", "3,1,1", "--model", bundle, "--out", out) == 0
    record = json.loads((out / "plain.volume.json").read_text())
    assert record["slices"] == 6
    assert (record["spacing_um"], record["spacing_source"]) == ([3.0, 1.0, 1.0], "user")


def test_an_ome_tiff_with_size_z_is_a_volume_with_its_physical_sizes(tmp_path, bundle):
    volume = ball_volume(slices=6, seed=4)
    stack = tmp_path / "ball.ome.tif"
    tifffile.imwrite(stack, volume, metadata={"axes": "ZYX", "PhysicalSizeZ": 3.0, "PhysicalSizeY": 0.25,
                                              "PhysicalSizeX": 0.25})
    out = tmp_path / "out"
    assert segment(stack, "--model", bundle, "--out", out) == 0
    record = json.loads((out / "ball.ome.volume.json").read_text())
    assert record["slices"] == 6
    assert (record["spacing_um"], record["spacing_source"]) == ([3.0, 0.25, 0.25], "ome")


def test_an_imagej_stack_with_one_page_for_all_slices_is_read_slice_by_slice(tmp_path, bundle):
    """ImageJ writes stacks over 4 GB as one page and contiguous slices after it."""
    volume = ball_volume(slices=6, seed=5)
    stack = tmp_path / "big.tif"
    tifffile.imwrite(stack, volume, imagej=True, truncate=True, metadata={"axes": "ZYX"})
    write_imagej_stack(tmp_path / "pages.tif", volume)
    out = tmp_path / "out"
    assert segment(stack, tmp_path / "pages.tif", "--model", bundle, "--out", out) == 0
    np.testing.assert_array_equal(tifffile.imread(out / "big.classes.tif"), tifffile.imread(out / "pages.classes.tif"))


def test_segmenting_a_volume_holds_a_few_slices_not_the_volume(tmp_path):
    """Memory is O(slice + components + per-slice records): a model that thresholds (a 1 x 1
    conv) keeps the components few, so what is left to see is whether slices pile up."""
    bundle = make_bundle(tmp_path / "threshold", in_channels=1, num_classes=2, tile=64, layers=())
    volume = ball_volume(slices=256, side=128, seed=6)
    stack = tmp_path / "deep.tif"
    write_imagej_stack(stack, volume)
    model = open_model(bundle, "cpu")
    try:
        segment_volume(open_volume(stack), model, tmp_path / "warm")  # lazy imports and first-call caches
        tracemalloc.start()
        try:
            record = segment_volume(open_volume(stack), model, tmp_path / "out")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        model.close()
    assert record["slices"] == 256
    assert peak < volume.nbytes / 2, f"peak {peak / 1e6:.2f} MB for a {volume.nbytes / 1e6:.2f} MB volume"


def test_a_folder_with_volume_is_its_numbered_slices_in_natural_order(tmp_path, bundle, capsys):
    volume = ball_volume(slices=3, seed=3)
    folder = tmp_path / "slices"
    folder.mkdir()
    for number, plane in zip((1, 2, 10), volume, strict=True):
        cv2.imwrite(str(folder / f"slice_{number}.png"), plane)
    assert [p.name for p in numbered_slices(folder)] == ["slice_1.png", "slice_2.png", "slice_10.png"]
    out = tmp_path / "out"

    assert segment(folder, "--volume", "--model", bundle, "--out", out) == 0
    assert segment(folder, "--model", bundle, "--out", tmp_path / "fields") == 0  # without: fields

    with tifffile.TiffFile(out / "slices.classes.tif") as tif:
        pages = [page.asarray() for page in tif.pages]
    for number, page in zip((1, 2, 10), pages, strict=True):
        field = cv2.imread(str(tmp_path / "fields" / f"slice_{number}.classes.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(page, field)
    record = json.loads((out / "slices.volume.json").read_text())
    assert record["slices"] == 3 and record["spacing_um"] is None and record["spacing_source"] == "none"


def test_a_volume_of_slices_of_different_sizes_fails_with_one_line_naming_it(tmp_path, bundle, capsys):
    bad = tmp_path / "bad.tif"
    with tifffile.TiffWriter(bad) as tif:
        tif.write(ball_volume(1, 48)[0])
        tif.write(ball_volume(1, 40)[0])
    assert segment(bad, "--volume", "--model", bundle, "--out", tmp_path / "out") == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0] and "slice 1" in errors[0]
    assert not list((tmp_path / "out").glob("*.classes.tif"))  # no half-written stack left





def test_a_volume_in_a_colour_model_fields_refuse_is_refused_too(tmp_path, bundle, capsys):
    cmyk = tmp_path / "cmyk.tif"
    tifffile.imwrite(cmyk, np.zeros((3, 16, 16, 4), np.uint8), photometric="separated")
    assert segment(cmyk, "--volume", "--model", bundle, "--out", tmp_path / "out") == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(cmyk) in errors[0] and "unsupported colour model SEPARATED" in errors[0]

@pytest.mark.parametrize("promised", [5, 2])
def test_a_volume_of_other_than_its_promised_slices_fails_and_leaves_no_stack(tmp_path, bundle, promised):
    planes = ball_volume(slices=3)
    volume = Volume(tmp_path / "odd.tif", promised, None, "none", lambda: iter(planes))
    model = open_model(bundle, "cpu")
    try:
        with pytest.raises(ImageReadError, match=f"odd.tif: .*{promised}"):
            segment_volume(volume, model, tmp_path / "out")
    finally:
        model.close()
    assert not list((tmp_path / "out").iterdir())

def test_a_volume_whose_ifd_chain_loops_is_refused_like_a_field(tmp_path, bundle, capsys):
    from test_imageio import tiff_with_ifd_chain

    path = tmp_path / "loop.tif"
    data, ifds = tiff_with_ifd_chain("II", False, pages=3, last_next=1)
    path.write_bytes(data)
    assert segment(path, "--volume", "--model", bundle, "--out", tmp_path / "out") == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {path}: IFD chain loops back to offset {ifds[1]}"]

VALIDATE = 5  # slices of the shared tomography validate set stacked into one volume


def tomography_stack(shared_data, stack, count: int) -> np.ndarray:
    """The first ``count`` slices of the shared tomography validate set written as an ImageJ Z
    stack at ``stack``; their labels (skips where the model or the slices are absent)."""
    if "tomography" not in bundled_model_names():
        pytest.skip("no bundled 'tomography' model installed (src/phasewatch/models/tomography)")
    images = shared_data / "tomography" / "validate" / "images"
    if not images.is_dir():
        pytest.skip(f"tomography validate slices not found in {images}")
    paths = sorted(images.glob("*.png"))[:count]
    planes = [read_pages(path)[0].image for path in paths]
    # the PNGs are gray stored as RGB: one channel of each makes the stack (the same image to the model)
    planes = [p[..., 0] if p.ndim == 3 and (p == p[..., :1]).all() else p for p in planes]
    tifffile.imwrite(stack, np.stack(planes), imagej=True, metadata={"axes": "ZYX"})
    return np.stack([np.load(images.parent / "labels" / f"{path.stem}.npy") for path in paths])


def test_tomography_model_on_a_stack_of_real_slices(shared_data, tmp_path):
    stack = tmp_path / "tomography.tif"
    labels = tomography_stack(shared_data, stack, VALIDATE)

    assert segment(stack, "--model", "tomography", "--out", tmp_path / "out") == 0

    record = json.loads((tmp_path / "out" / "tomography.volume.json").read_text())
    second = next(c.name for c in load_bundle("tomography").classes if c.id == 1)
    fraction = record["measurements_3d"]["classes"][second]["volume_fraction"]
    assert abs(fraction - float(np.mean(labels == 1))) < 0.03, (fraction, float(np.mean(labels == 1)))
    assert record["slices"] == VALIDATE and len(record["per_slice"]) == VALIDATE
