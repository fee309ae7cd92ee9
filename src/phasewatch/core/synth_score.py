"""``phasewatch synth score``: FID and KID of a folder of generated micrographs against real ones.

Each image is read and normalised as the runtime reads a field (``imageio``, ``normalise.prepare``
with the bundle's rule), cut into crops on a grid, and each crop becomes one feature vector
from the bundle's encoder (``encoder_features``). The numbers are on that feature space, not
on InceptionV3's, so they are not comparable with published GAN scores on micrographs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from phasewatch.bundle import Bundle, load_bundle
from phasewatch.core.encoder_features import Encoder, FeatureError, encode, open_encoder
from phasewatch.core.gan_scores import fid, fid_over_subsets, kid
from phasewatch.core.normalise import prepare
from phasewatch.imageio.formats import SUPPORTED_SUFFIXES, read_pages

NOT_COMPARABLE = ("features from this bundle's encoder, not InceptionV3: not comparable with FID/KID "
                  "published on Inception features")


def grid_crops(array: np.ndarray, crop: int, stride: int, multiple: int) -> np.ndarray:
    """N x C x crop x crop crops on a grid (``crop`` 0: the whole image, trimmed to ``multiple``)."""
    _, height, width = array.shape
    if crop == 0:
        return array[None, :, : height - height % multiple, : width - width % multiple]
    return np.stack([array[:, y:y + crop, x:x + crop] for y in range(0, height - crop + 1, stride)
                     for x in range(0, width - crop + 1, stride)])


def folder_features(folder: Path, bundle: Bundle, encoder: Encoder, crop: int, stride: int) -> np.ndarray:
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in SUPPORTED_SUFFIXES) \
        if Path(folder).is_dir() else []
    if not paths:
        raise FeatureError(f"{folder}: no images")
    features = []
    for path in tqdm(paths, desc=f"features {Path(folder).name}", unit="image", disable=None):
        image = read_pages(path)[0].image
        if crop and min(image.shape[:2]) < crop:
            raise FeatureError(f"{path}: {image.shape[1]}x{image.shape[0]} is smaller than the {crop} px crop")
        inp = prepare(image, bundle.channels, bundle.normalisation, bundle.scale)
        whole = inp.region(0, inp.height, 0, inp.width)
        features.append(encode(encoder, grid_crops(whole, crop, stride, max(1, bundle.spatial_multiple))))
    return np.concatenate(features)


def score_folders(real: Path, fake: Path, model: str, crop: int = 128, stride: int = 64, subsets: int = 100,
                  subset_size: int = 100, seed: int = 0) -> dict[str, Any]:
    bundle = load_bundle(model)
    if bundle.slices > 1:
        raise FeatureError(f"{bundle.path}: a {bundle.slices}-slice bundle; scoring needs a 2D one")
    multiple = max(1, bundle.spatial_multiple)
    if crop % multiple or crop < 0:
        raise FeatureError(f"--crop {crop}: must be a multiple of {multiple} (the bundle's stride)")
    encoder = open_encoder(bundle)
    real_features = folder_features(real, bundle, encoder, crop, stride)
    fake_features = folder_features(fake, bundle, encoder, crop, stride)
    kid_mean, kid_std = kid(real_features, fake_features, subsets, subset_size, np.random.default_rng(seed))
    fid_mean, fid_std = fid_over_subsets(real_features, fake_features, subsets, subset_size,
                                         np.random.default_rng(seed))
    return {
        "fid": fid(real_features, fake_features), "kid": kid_mean, "kid_std": kid_std,
        "fid_subsets": fid_mean, "fid_std": fid_std,
        "real": str(real), "fake": str(fake), "real_crops": len(real_features), "fake_crops": len(fake_features),
        "crop": crop, "stride": stride, "kid_subsets": subsets,
        "kid_subset_size": min(subset_size, len(real_features), len(fake_features)),
        "features": f"{encoder.description}, {real_features.shape[1]} values per crop",
        "note": NOT_COMPARABLE,
    }


def format_score(result: dict[str, Any]) -> str:
    return "\n".join([
        f"FID {result['fid']:.2f} (all crops; over {result['kid_subsets']} subsets of {result['kid_subset_size']}: "
        f"{result['fid_subsets']:.2f} ± {result['fid_std']:.2f})   KID {result['kid']:.4f} ± {result['kid_std']:.4f} "
        f"({result['kid_subsets']} subsets of {result['kid_subset_size']})",
        f"real: {result['real_crops']} crops of {result['real']}; generated: {result['fake_crops']} crops of "
        f"{result['fake']} ({result['crop'] or 'whole'} px, stride {result['stride']})",
        f"features: {result['features']}",
        f"note: {result['note']}",
    ])
