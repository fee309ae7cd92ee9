"""Label readers and image/label pairing for every data set format in use."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile

from phasewatch.bundle import Normalisation
from phasewatch.export.datasets import DatasetError, find_pairs, load_samples, parse_palette, read_label
from phasewatch.imageio.formats import read_pages

SUPERALLOY_PALETTE = {(0, 0, 255): 1, (255, 0, 0): 2}


def test_palette_mask_maps_colours_and_everything_else_to_default(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[0, 0, :3] = (0, 0, 255)  # secondary
    rgba[0, 1, :3] = (255, 0, 0)  # tertiary
    rgba[0, 2, :3] = (197, 197, 197)  # grey image showing through: matrix
    rgba[1, 0, :3] = (0, 0, 254)  # almost blue is still not blue
    path = tmp_path / "a_mask.tif"
    tifffile.imwrite(path, rgba)
    assert read_label(path, SUPERALLOY_PALETTE).tolist() == [[1, 2, 0], [0, 0, 0]]


def test_colour_png_is_read_in_rgb_order(tmp_path):
    rgb = np.zeros((1, 2, 3), np.uint8)
    rgb[0, 0] = (0, 0, 255)
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), rgb[..., ::-1])  # cv2 writes BGR
    assert read_label(path, SUPERALLOY_PALETTE).tolist() == [[1, 0]]


def test_index_masks_and_npy_labels(tmp_path):
    labels = np.array([[0, 1], [2, 3]], np.uint8)
    tifffile.imwrite(tmp_path / "i.tif", labels)
    np.save(tmp_path / "n.npy", labels.astype(np.int8))
    assert read_label(tmp_path / "i.tif").tolist() == labels.tolist()
    assert read_label(tmp_path / "n.npy").dtype == np.uint8
    assert read_label(tmp_path / "n.npy").tolist() == labels.tolist()


def test_bad_labels_are_one_line_errors(tmp_path):
    tifffile.imwrite(tmp_path / "c.tif", np.zeros((2, 2, 3), np.uint8))
    np.save(tmp_path / "neg.npy", np.array([[-1, 0]], np.int8))
    (tmp_path / "junk.png").write_text("no")
    for name, reason in [("c.tif", "needs a palette"), ("neg.npy", "class ids must be 0..255"),
                         ("junk.png", "cannot read label")]:
        with pytest.raises(DatasetError, match=reason) as info:
            read_label(tmp_path / name)
        assert "\n" not in str(info.value) and name in str(info.value)


def test_pairs_by_stem_ignoring_mask_suffix_and_unpaired_files(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for stem in ("b", "a"):
        cv2.imwrite(str(images / f"{stem}.png"), np.zeros((8, 8), np.uint8))
    np.save(labels / "a.npy", np.zeros((8, 8), np.int8))
    tifffile.imwrite(labels / "b_mask.tif", np.zeros((8, 8), np.uint8))
    assert [(i.name, lbl.name) for i, lbl in find_pairs(images, labels)] == [("a.png", "a.npy"),
                                                                           ("b.png", "b_mask.tif")]
    cv2.imwrite(str(images / "c.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(DatasetError, match="c.png: no label"):
        find_pairs(images, labels)


def test_parse_palette_from_config_keys():
    assert parse_palette({"0,0,255": 1, "255, 0, 0": 2}) == SUPERALLOY_PALETTE
    with pytest.raises(DatasetError, match="R,G,B"):
        parse_palette({"1,2": 1})


def test_load_samples_normalises_like_the_runtime_and_checks_shapes(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    image = np.full((16, 20), 255, np.uint8)
    image[:, :10] = 0
    cv2.imwrite(str(images / "x.png"), image)
    np.save(labels / "x.npy", (image > 0).astype(np.int8))
    norm = Normalisation(mean=(0.5,), std=(0.25,))
    (sample,) = load_samples(images, labels, 1, norm)
    # 0 -> (0 - 0.5) / 0.25 = -2 and 255 -> (1 - 0.5) / 0.25 = 2
    assert sample.image.shape == (1, 16, 20)
    assert set(np.unique(sample.image).tolist()) == {-2.0, 2.0}
    (half,) = load_samples(images, labels, 1, norm, scale=0.5)
    assert half.image.shape == (1, 8, 10) and half.label.shape == (8, 10)
    with pytest.raises(DatasetError, match="class id 1 but the config has 1 classes"):
        load_samples(images, labels, 1, norm, num_classes=1)
    np.save(labels / "x.npy", np.zeros((4, 4), np.int8))
    with pytest.raises(DatasetError, match="does not match image"):
        load_samples(images, labels, 1, norm)


@pytest.mark.parametrize("images,labels,palette", [
    ("superalloy/train/images", "superalloy/train/masks", SUPERALLOY_PALETTE),
    ("ebc/train/images", "ebc/train/masks", None),
    ("uhcs/train/images", "uhcs/train/labels_microconstituent", None),
    ("tomography/train/images", "tomography/train/labels", None),
])
def test_every_real_data_set_pairs_and_reads(shared_data, images, labels, palette):
    pairs = find_pairs(shared_data / images, shared_data / labels)
    assert len(pairs) >= 10
    image_path, label_path = pairs[0]
    label = read_label(label_path, palette)
    assert label.shape == read_pages(image_path)[0].image.shape[:2]
    assert 0 < label.max() <= 3
