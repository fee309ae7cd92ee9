"""Output names of fields (``pipeline.field_stem``): whatever name a file in the watch
folder has, its outputs can be written (a file name has at most 255 bytes) and served
(the name is text)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from phasewatch.core.outputs import write_outputs, write_png_atomic
from phasewatch.core.pipeline import field_stem
from phasewatch.imageio.formats import Page

PAGE = Page(np.zeros((8, 8), np.uint8), 3, None, "none")
OUTPUT_SUFFIXES = (".classes.png", ".overlay.jpg", ".json", ".unsure.png")
NAME_MAX = 255


def write_every_output(out_dir: Path, stem: str) -> None:
    """What the pipeline writes per field, through the same atomic writers."""
    image = np.zeros((8, 8), np.uint8)
    write_outputs(out_dir, stem, image, image, [(0, 0, 0)], {"image": stem})
    write_png_atomic(out_dir / f"{stem}.unsure.png", image)


def test_a_name_that_fits_is_kept() -> None:
    assert field_stem(Path("/in/a b.tif"), PAGE, 1) == "a b"
    assert field_stem(Path("/in/a b.tif"), PAGE, 2) == "a b.p0003"
    assert field_stem(Path("/in/café.tif"), PAGE, 1) == "café"


@pytest.mark.parametrize("stem", ["a" * 251, "é" * 125, os.fsdecode(b"caf\xe9" * 62)],
                         ids=["ascii", "utf8", "latin1"])
@pytest.mark.parametrize("fields", [1, 2])
def test_the_longest_file_names_give_outputs_that_can_be_written(tmp_path: Path, stem: str, fields: int) -> None:
    path = Path("/in") / f"{stem}.tif"
    assert len(os.fsencode(path.name)) <= NAME_MAX
    short = field_stem(path, PAGE, fields)
    write_every_output(tmp_path, short)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(short + s for s in OUTPUT_SUFFIXES)
    assert short.startswith(os.fsencode(stem).decode("utf-8", "replace")[:50])  # still recognisable
    assert short.endswith(".p0003") == (fields == 2)


def test_long_names_that_differ_only_in_their_tails_stay_apart() -> None:
    head = "x" * 240
    first, second = (field_stem(Path(f"/in/{head}{tail}.tif"), PAGE, 1) for tail in "ab")
    assert first != second
    assert field_stem(Path(f"/in/{head}a.tif"), PAGE, 1) == first  # the same name, the same outputs


def test_a_name_that_is_not_utf8_gives_a_text_stem() -> None:
    stem = field_stem(Path(os.fsdecode(b"/in/caf\xe9.tif")), PAGE, 1)
    assert stem.startswith("caf\ufffd")
    stem.encode("utf-8")  # servable: the picture's name goes into a header, the record into JSON
    assert stem != field_stem(Path(os.fsdecode(b"/in/caf\xe8.tif")), PAGE, 1)
