"""A Z stack in the watch folder is one volume (src/phasewatch/service/daemon.py, src/phasewatch/core/volume_views.py):
segmented slice by slice, measured in 3D, recorded as one result, and its slices served one by one.

The daemon runs in process with test_daemon's threshold backend (class 1 where the normalised
input is above 0), so every class map is known from the stack the daemon writes back.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import test_daemon
import tifffile
from test_daemon import drop, finished, wait_for, web_app
from test_segment_volume import SPACING, ball_volume, write_imagej_stack

from phasewatch.core.measure3d import measure_volume
from phasewatch.service.daemon import Daemon

make_daemon = test_daemon.make_daemon  # the in-process daemon fixture, shared
VOLUME = ball_volume(slices=9, side=40)


def results_of(daemon: Daemon, image: dict) -> Path:
    return daemon.config.data.results_dir / f"{image['id']:06d}"


def test_a_z_stack_is_one_result_with_3d_measurements_and_its_slices(make_daemon) -> None:
    daemon = make_daemon()
    drop(daemon, "ball.tif", lambda p: write_imagej_stack(p, VOLUME))
    (image,) = wait_for(lambda: finished(daemon, 1), "the volume's result")
    assert image["state"] == "done", image["error"]

    out = results_of(daemon, image)
    with tifffile.TiffFile(out / "ball.classes.tif") as tif:
        classes = tif.asarray()
    assert classes.shape == VOLUME.shape
    bright = np.mean(classes == 1)
    assert 0.05 < bright < 0.6  # the ball, not nothing and not everything
    # one field of its specimen: fractions over all voxels, valid area = voxels, calibrated area = slices' areas
    assert image["fractions"]["class1"] == pytest.approx(bright)
    assert image["valid_area_px"] == classes.size
    assert image["pixel_size_um"] == pytest.approx(SPACING[2])
    assert image["valid_area_um2"] == pytest.approx(classes.size * SPACING[1] * SPACING[2])
    assert image["particles"] == {}

    volume = image["measurement"]["volume"]
    assert volume["slices"] == len(VOLUME) and volume["spacing_source"] == "imagej"
    assert volume["measurements_3d"] == json.loads(json.dumps(measure_volume(classes, daemon.model.bundle.classes,
                                                                             SPACING)))
    assert volume["measurements_3d"]["classes"]["class1"]["components"] == 1
    assert volume["timing"]["seconds_per_slice"] > 0
    assert json.loads((out / "ball.volume.json").read_text())["per_slice"] == volume["per_slice"]

    middle = len(VOLUME) // 2
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["ball.classes.tif", "ball.volume.json", "ball.preview.tif", "ball.preview.jpg",
                            f"ball.z{middle:04d}.classes.png", f"ball.z{middle:04d}.overlay.jpg",
                            f"ball.z{middle:04d}.json"])
    assert daemon.health() == (True, {})

    client = web_app(daemon).test_client()
    shown = client.get(f"/api/images/{image['id']}").get_json()
    assert shown["slices"] == len(VOLUME) and shown["provenance"]["slices"] == len(VOLUME)
    assert set(shown["pictures"]) == {"classes", "overlay", "preview"}  # the middle slice, as a field's
    for index in (0, middle, len(VOLUME) - 1):
        response = client.get(f"/api/images/{image['id']}/slices/{index}/classes.png")
        assert response.status_code == 200 and response.mimetype == "image/png"
        served = cv2.imdecode(np.frombuffer(response.data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(served, classes[index])
        preview = client.get(f"/api/images/{image['id']}/slices/{index}/preview.png")
        assert preview.status_code == 200
        assert cv2.imdecode(np.frombuffer(preview.data, np.uint8), cv2.IMREAD_UNCHANGED).shape == VOLUME.shape[1:]
    for url in (f"/api/images/{image['id']}/slices/{len(VOLUME)}/classes.png",
                f"/api/images/{image['id']}/slices/0/overlay.png"):
        response = client.get(url)
        assert response.status_code == 404 and response.get_json()["error"], url


def test_a_field_has_no_slices_and_the_slice_route_is_described(make_daemon) -> None:
    daemon = make_daemon()
    drop(daemon, "field.tif", lambda p: tifffile.imwrite(p, VOLUME[4]))
    (image,) = wait_for(lambda: finished(daemon, 1), "the field's result")
    client = web_app(daemon).test_client()
    assert client.get(f"/api/images/{image['id']}").get_json()["slices"] is None
    response = client.get(f"/api/images/{image['id']}/slices/0/classes.png")
    assert response.status_code == 404 and "not a volume" in response.get_json()["error"]
    assert "/api/images/{file_id}/slices/{index}/{kind}.png" in client.get("/api/openapi.json").get_json()["paths"]


def test_with_volumes_off_a_z_stack_is_one_field_of_pages(make_daemon) -> None:
    daemon = make_daemon(config_text="volumes = false\n")
    drop(daemon, "ball.tif", lambda p: write_imagej_stack(p, VOLUME))
    (image,) = wait_for(lambda: finished(daemon, 1), "the stack's result")
    assert image["state"] == "done"
    assert "volume" not in image["measurement"] and len(image["measurement"]["pages"]) == len(VOLUME)


def test_a_damaged_slice_fails_the_volume_with_its_reason_and_the_service_goes_on(make_daemon) -> None:
    daemon = make_daemon()

    def write_damaged(path: Path) -> None:
        tifffile.imwrite(path, VOLUME, imagej=True, compression="zlib", metadata={"axes": "ZYX"})
        with tifffile.TiffFile(path) as tif:
            offset, count = tif.pages[5].dataoffsets[0], tif.pages[5].databytecounts[0]
        data = bytearray(path.read_bytes())
        data[offset:offset + count] = b"\xff" * count  # slice 5's compressed bytes are garbage
        path.write_bytes(bytes(data))

    bad = drop(daemon, "damaged.tif", write_damaged)
    (image,) = wait_for(lambda: finished(daemon, 1), "the damaged volume's result")
    assert image["state"] == "failed"
    assert image["error"].startswith(f"{bad}: slice 5 cannot be read: ") and "\n" not in image["error"]
    assert not list(results_of(daemon, image).glob("*.partial")) and not list(
        results_of(daemon, image).glob(".*.partial"))
    drop(daemon, "next.tif", lambda p: write_imagej_stack(p, VOLUME))
    assert wait_for(lambda: finished(daemon, 2), "the next volume")[0]["state"] == "done"
    assert daemon.health() == (True, {})


def test_a_stack_whose_slice_declares_40000_square_fails_with_one_line_and_the_next_is_done(make_daemon) -> None:
    # Issue 21, defect 2: only slice 0 was checked and the slices were decoded in the service.
    # Now every page's header is checked in the decoder process before that page is decoded.
    from test_imageio_isolated import declares, imagej_stack

    daemon = make_daemon()
    bad = drop(daemon, "bomb-stack.tif",
               lambda p: declares(imagej_stack(p, [np.zeros((256, 256), np.uint8)] * 2), 1, 40000))
    (image,) = wait_for(lambda: finished(daemon, 1), "the bomb stack's result")
    assert (image["state"], image["attempts"]) == ("failed", 1)
    assert image["error"] == (f"{bad}: slice 1 is 40000 x 40000 = 1600000000 pixels by its header, "
                              "more than the limit of 50000000 (max_pixels)")
    drop(daemon, "next.tif", lambda p: write_imagej_stack(p, VOLUME))
    assert wait_for(lambda: finished(daemon, 2), "the next volume")[0]["state"] == "done"
    assert daemon.health() == (True, {})
