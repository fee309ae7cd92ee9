"""The teach routes over the real job runner, store and Flask app (no torch needed).

The runner (``service/teach_jobs.py``) starts a process per job and follows its JSON lines; here
the process is a small script that speaks the ``phasewatch teach --json`` protocol (progress
lines, then the result, or one line on stderr and status 1), so that queueing, progress,
cancelling and failure reasons are tested in seconds; the real command runs in
``tests/test_teach_e2e.py``. Models, activation, rollback and the audit record are real.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
import time

import cv2
import numpy as np
import pytest

from phasewatch.app.cli import main
from phasewatch.bundle import BUNDLED_MODELS_DIR, load_bundle, write_manifest
from phasewatch.service.teach_jobs import TeachJobs
from phasewatch.store import UNLABELLED, Store
from phasewatch.webui.access import Access
from phasewatch.webui.app import AppContext, create_app
from phasewatch.webui.events import EventBroker

TWO = [{"name": "matrix", "colour": "#6e6e6e", "role": "phase"},
       {"name": "second phase", "colour": "#ff7800", "role": "phase"}]

FAKE_TEACH = textwrap.dedent("""
    import json, os, sys, time
    args = sys.argv[1:]
    if os.environ.get("FAKE_TEACH_FAIL"):
        print("some library noise", file=sys.stderr)
        print("phasewatch teach: too few labels: 1 field(s) labelled", file=sys.stderr)
        sys.exit(1)
    with open(os.environ["FAKE_TEACH_ARGS"], "w") as fh:
        json.dump(args, fh)
    for i in range(1, 5):
        print(json.dumps({"stage": "train", "progress": i / 5, "message": f"step {i}"}), flush=True)
        time.sleep(float(os.environ.get("FAKE_TEACH_PAUSE", "0.05")))
    print("not json from a library", flush=True)
    gate = {"passed": True, "rule": "r", "reasons": [], "held_out": {"candidate": {"mean_iou": 0.9}}, "reference": {}}
    print(json.dumps({"result": {"model": "al-si@1", "gate": gate}}), flush=True)
""")


def png(array: np.ndarray) -> bytes:
    return cv2.imencode(".png", array)[1].tobytes()


class Reloads:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


@pytest.fixture
def setup(tmp_path, monkeypatch):
    data = tmp_path / "data"
    store = Store(data / "phasewatch.sqlite3")
    script = tmp_path / "fake_teach.py"
    script.write_text(FAKE_TEACH)
    monkeypatch.setenv("FAKE_TEACH_ARGS", str(tmp_path / "args.json"))
    events = EventBroker(keepalive_s=0.05)
    published: list[dict] = []
    reloads = Reloads()
    jobs = TeachJobs(data, store, threads=1, on_change=published.append, command=[sys.executable, str(script)],
                     reload_model=reloads)
    app = create_app(AppContext(store=store, events=events, status=lambda: {}, health=lambda: (True, {}),
                                metrics=lambda: (b"", "text/plain"), target_ra=0.1, data_dir=data, teach=jobs))
    ids = []
    for i in range(3):
        row = store.enqueue(f"/watch/f{i}.png", 10, 1, f"sha{i}")
        store.claim_next(1)
        store.mark_done(row["id"], {"fractions": {}, "width": 8, "height": 6})
        ids.append(row["id"])
    store.create_material("al-si", TWO, who="ana")
    labels = np.full((6, 8), UNLABELLED, np.uint8)
    labels[:2] = 1
    for i in ids[:2]:
        store.save_labels(i, "al-si", png(labels), who="ana")
    yield {"client": app.test_client(), "store": store, "jobs": jobs, "ids": ids, "published": published,
           "reloads": reloads, "data": data, "args": tmp_path / "args.json"}
    jobs.close()
    store.close()


def wait_for(client, job: str, states=("done", "failed", "cancelled"), timeout: float = 20) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        answer = client.get(f"/api/teach/{job}").get_json()
        if answer["state"] in states:
            return answer
        time.sleep(0.05)
    raise AssertionError(f"job {job} still {answer['state']}")


def teach_body(**changes) -> dict:
    return {"material": "al-si", "base": "superalloy", "budget_min": 2, "who": "ana", **changes}


def test_a_teach_job_runs_the_command_and_reports_progress_model_and_gate(setup):
    client = setup["client"]
    answer = client.post("/api/teach", json=teach_body(fields=setup["ids"][:2], name="lab"))
    assert answer.status_code == 202
    job = answer.get_json()["job"]
    done = wait_for(client, job)
    assert done["state"] == "done" and done["progress"] == 1.0 and done["error"] is None
    assert done["model"] == "al-si@1" and done["gate"]["passed"] is True
    args = json.loads(setup["args"].read_text())
    flags = {a: (b if not b.startswith("--") else None) for a, b in zip(args, [*args[1:], "--"], strict=True)
             if a.startswith("--")}
    assert flags["--material"] == "al-si" and flags["--base"] == "superalloy" and flags["--name"] == "lab"
    assert flags["--fields"] == f"{setup['ids'][0]},{setup['ids'][1]}" and flags["--nice"] == "19"
    assert "--json" in args and "--idle" in args and flags["--threads"] == "1"
    states = [e["state"] for e in setup["published"]]
    assert states[0] == "queued" and "running" in states and states[-1] == "done"
    assert any(0 < e["progress"] < 1 for e in setup["published"])
    assert client.get("/api/teach").get_json()["jobs"][0]["job"] == job


def test_a_failing_job_gives_the_commands_one_line_reason(setup, monkeypatch):
    monkeypatch.setenv("FAKE_TEACH_FAIL", "1")
    job = setup["client"].post("/api/teach", json=teach_body()).get_json()["job"]
    failed = wait_for(setup["client"], job)
    assert failed["state"] == "failed" and failed["error"] == "too few labels: 1 field(s) labelled"


def test_cancel_stops_the_process_and_is_audited(setup, monkeypatch):
    monkeypatch.setenv("FAKE_TEACH_PAUSE", "30")
    client = setup["client"]
    job = client.post("/api/teach", json=teach_body()).get_json()["job"]
    wait_for(client, job, states=("running",))
    started = time.time()
    answer = client.delete(f"/api/teach/{job}", json={"who": "ben"})
    assert answer.status_code == 200
    assert wait_for(client, job)["state"] == "cancelled" and time.time() - started < 10
    assert [r["action"] for r in setup["store"].audit.rows()][-1] == "teach.cancel"
    assert client.delete("/api/teach/nope", json={}).status_code == 404


def test_teach_requests_are_checked_before_a_job_starts(setup):
    client = setup["client"]
    assert client.post("/api/teach", json=teach_body(who="")).status_code == 400
    assert client.post("/api/teach", json=teach_body(budget_min=0)).status_code == 400
    assert client.post("/api/teach", json=teach_body(budget_min=True)).status_code == 400
    assert client.post("/api/teach", json=teach_body(fields=["1"])).status_code == 400
    assert client.post("/api/teach", json=teach_body(material="nothing")).status_code == 404
    assert client.post("/api/teach", json=teach_body(base="no-such-model")).status_code == 404
    unlabelled = client.post("/api/teach", json=teach_body(fields=[setup["ids"][2]]))
    assert unlabelled.status_code == 400 and "has no labels" in unlabelled.get_json()["error"]
    setup["store"].create_material("empty", TWO, who="ana")
    none = client.post("/api/teach", json=teach_body(material="empty"))
    assert none.status_code == 409 and "too few labels" in none.get_json()["error"]
    assert client.post("/api/teach", data="{}", content_type="text/plain").status_code == 415
    assert client.post("/api/teach", json=teach_body(), headers={"Origin": "http://evil.example"}).status_code == 403
    assert setup["jobs"].jobs() == []


def taught_copy(data, name: str, passed: bool):
    """A taught model on disk: the bundled tomography bundle under DATA/models/NAME with a gate."""
    folder = data / "models" / name
    shutil.copytree(BUNDLED_MODELS_DIR / "tomography", folder)
    manifest = {**load_bundle(folder).manifest, "name": name, "material": "al-si",
                "parent": {"name": "superalloy", "onnx_sha256": "x"},
                "gate": {"passed": passed, "reasons": [] if passed else ["held-out mIoU 50.0 % is below the target"]}}
    write_manifest(folder, manifest)


def test_models_list_activate_and_roll_back(setup):
    client, store, data = setup["client"], setup["store"], setup["data"]
    taught_copy(data, "al-si@1", passed=True)
    taught_copy(data, "al-si@2", passed=False)
    listed = client.get("/api/models").get_json()
    by_name = {m["name"]: m for m in listed["models"]}
    assert listed["active"] is None
    assert by_name["superalloy"]["source"] == "bundled" and by_name["superalloy"]["gate"] is None
    assert by_name["al-si@1"]["source"] == "taught" and by_name["al-si@1"]["parent"] == "superalloy"
    assert by_name["al-si@1"]["material"] == "al-si" and by_name["al-si@1"]["gate"]["passed"] is True
    assert client.get("/api/models/al-si@1").get_json()["source"] == "taught"
    assert client.get("/api/models/none@3").status_code == 404

    refused = client.post("/api/models/al-si@2/activate", json={"who": "ana"})
    assert refused.status_code == 409 and "gate failed" in refused.get_json()["error"]
    assert client.post("/api/models/al-si@1/activate", json={}).status_code == 400  # who is required
    assert client.post("/api/models/al-si@1/activate", json={"who": "ana", "reason": "new alloy"}).status_code == 200
    assert store.active_model()["name"] == "al-si@1" and setup["reloads"].count == 1
    assert client.get("/api/models").get_json()["active"] == "al-si@1"
    assert client.post("/api/models/superalloy/activate", json={"who": "ana"}).status_code == 200
    assert client.post("/api/models/rollback", json={"who": "ben"}).get_json() == {"active": "al-si@1"}
    assert client.post("/api/models/rollback", json={"who": "ben"}).get_json() == {"active": None}
    assert client.post("/api/models/rollback", json={"who": "ben"}).status_code == 409
    assert setup["reloads"].count == 4
    actions = [(r["actor"], r["action"], r["after"]) for r in store.audit.rows() if r["action"].startswith("model.")]
    assert actions == [("ana", "model.activate", {"model": "al-si@1"}),
                       ("ana", "model.activate", {"model": "superalloy"}),
                       ("ben", "model.rollback", {"model": "al-si@1"}), ("ben", "model.rollback", {"model": None})]
    assert store.audit.verify().ok


def test_a_changed_taught_model_is_not_activated(setup):
    taught_copy(setup["data"], "al-si@1", passed=True)
    onnx = setup["data"] / "models" / "al-si@1" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-10] + b"0123456789")
    answer = setup["client"].post("/api/models/al-si@1/activate", json={"who": "ana"})
    assert answer.status_code == 409 and "sha256 differs" in answer.get_json()["error"]
    assert setup["store"].active_model() is None


def test_without_the_service_the_teach_routes_answer_503(tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    app = create_app(AppContext(store=store, events=EventBroker(), status=lambda: {}, health=lambda: (True, {}),
                                metrics=lambda: (b"", "text/plain"), target_ra=0.1, data_dir=tmp_path))
    client = app.test_client()
    assert client.get("/api/teach/x").status_code == 503
    assert client.get("/api/models").status_code == 200  # listing needs no service
    store.close()


def test_the_teach_routes_need_the_token(setup, tmp_path):
    store = setup["store"]
    app = create_app(AppContext(store=store, events=EventBroker(), status=lambda: {}, health=lambda: (True, {}),
                                metrics=lambda: (b"", "text/plain"), target_ra=0.1, data_dir=setup["data"],
                                access=Access(token="s3cret-token-of-some-length"), teach=setup["jobs"]))
    client = app.test_client()
    for method, path in (("post", "/api/teach"), ("get", "/api/teach/x"), ("delete", "/api/teach/x"),
                         ("get", "/api/models"), ("post", "/api/models/superalloy/activate"),
                         ("post", "/api/models/rollback")):
        assert getattr(client, method)(path, json={}).status_code == 401, (method, path)
    assert client.get("/api/models", headers={"Authorization": "Bearer s3cret-token-of-some-length"}).status_code == 200


def test_audit_verify_and_dataset_export_commands(setup, tmp_path, capsys):
    data, store = setup["data"], setup["store"]
    for i in setup["ids"][:2]:
        path = tmp_path / f"f{i}.png"
        cv2.imwrite(str(path), np.zeros((6, 8), np.uint8))
        store._conn().execute("UPDATE files SET path = ? WHERE id = ?", (str(path), i))
    assert main(["audit", "verify", "--data", str(data)]) == 0
    assert "audit record intact: 3 row(s)" in capsys.readouterr().out
    out = tmp_path / "set"
    assert main(["dataset", "export", str(out), "--material", "al-si", "--data", str(data)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [f["labelled_by"] for f in manifest["fields"]] == ["ana", "ana"]
    from phasewatch.export.datasets import find_pairs, read_label

    pairs = find_pairs(out / "images", out / "labels")
    assert len(pairs) == 2 and read_label(pairs[0][1])[0, 0] == 1 and read_label(pairs[0][1])[5, 0] == UNLABELLED
    assert main(["dataset", "export", str(out), "--material", "al-si", "--data", str(data)]) == 1  # not empty
    raw = __import__("sqlite3").connect(data / "phasewatch.sqlite3")
    raw.execute("DROP TRIGGER audit_no_update")
    raw.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 2")
    raw.commit()
    raw.close()
    capsys.readouterr()
    assert main(["audit", "verify", "--data", str(data)]) == 1
    assert "audit row 2" in capsys.readouterr().err


def test_teach_without_torch_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # what an appliance without the export extra has
    code = main(["teach", "--data", str(tmp_path), "--material", "m", "--base", "superalloy", "--threads", "1"])
    assert code == 1
    assert capsys.readouterr().err.strip() == "phasewatch teach: teaching needs PyTorch, which is not installed: " \
                                              "pip install 'phasewatch[export]'"
