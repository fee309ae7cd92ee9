"""A failed file's reason reads as words (issue 24's rough edges): a file that is no image
says what it starts with as text or as hexadecimal bytes, never as Python's ``b'...'``;
the same line reaches the command line, the store (page, report, CSV) and the log.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from phasewatch.imageio.formats import ImageReadError, read_pages
from phasewatch.store import Store
from phasewatch.webui.csv_export import store_csv


def reason_for(path) -> str:
    with pytest.raises(ImageReadError) as caught:
        read_pages(path)
    return str(caught.value)


def test_a_text_file_named_tif_says_its_first_words(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("this is not an image\n")
    assert reason_for(path) == f'{path}: not a TIFF, PNG, JPEG or BMP image (starts with the text "this is ")'


def test_a_binary_file_says_its_first_bytes_in_hexadecimal(tmp_path):
    path = tmp_path / "odd.png"
    path.write_bytes(b"\x00\x01\xfeGIF89a" + bytes(64))
    assert reason_for(path) == (f"{path}: not a TIFF, PNG, JPEG or BMP image "
                                "(starts with the bytes 00 01 fe 47 49 46 38 39)")


def test_the_command_line_and_the_csv_show_the_same_words(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("this is not an image\n")
    done = subprocess.run([sys.executable, "-m", "phasewatch.app.cli", "segment", str(path), "--model", "superalloy",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert 'starts with the text "this is "' in done.stderr and "b'" not in done.stderr
    store = Store(tmp_path / "db.sqlite3")
    try:
        file_id = store.enqueue(str(path), 21, 1, "sha")["id"]
        store.claim_next()
        store.mark_failed(file_id, reason_for(path))
        csv_text = store_csv(store)
    finally:
        store.close()
    assert 'starts with the text ""this is "")' in csv_text and "b'" not in csv_text  # CSV doubles quotes
