"""``phasewatch audit verify --data DIR`` over a data folder the web API wrote (limits, an
exclusion, a signed close and reopen through the real waitress server): exit 0 as written,
exit 1 naming the row after any one column of one audit row is edited with the sqlite3
module (its triggers dropped first, as someone editing the file would)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from test_webui_history import Service

from phasewatch.app.cli import main
from phasewatch.store.audit import FIELDS
from phasewatch.webui.app import create_app
from phasewatch.webui.server import serve_in_thread

GP = "secondary gamma prime"


def send(url: str, method: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"},
                                     method=method)
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    service = Service(tmp_path_factory.mktemp("audit"))
    sid = service.store.current_specimen()["id"]
    first = service.finish("a.tif", 0.3)
    handle = serve_in_thread(create_app(service.ctx), "127.0.0.1", 0)
    try:
        send(f"{handle.url}/api/specimens/{sid}/limits", "PUT",
             {"limits": [{"class": GP, "lower": 20, "upper": 40}], "who": "Ana"})
        send(f"{handle.url}/api/images/{first}/exclude", "POST", {"reason": "scratch", "who": "Ana"})
        send(f"{handle.url}/api/specimens/{sid}/close", "POST", {"who": "Q. Lead", "meaning": "rejected"})
        send(f"{handle.url}/api/specimens/{sid}/reopen", "POST", {"who": "Q. Lead", "reason": "recount"})
    finally:
        handle.stop()
        service.events.close()
        service.store.close()
    return service.data


def test_an_untouched_record_verifies(data):
    done = subprocess.run([str(Path(sys.executable).with_name("phasewatch")), "audit", "verify", "--data", str(data)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "audit record intact: 5 row(s)" in done.stdout  # limits, exclude, close, next specimen, reopen


# A value each column can be changed to; seq is moved past the end.
EDITS = {"seq": 99, "at": 1.5, "actor": "mallory", "action": "field.include", "subject": "image:2",
         "before": '{"excluded":1}', "after": "null", "reason": "nothing happened", "prev_hash": "0" * 64,
         "hash": "f" * 64}


@pytest.mark.parametrize("column", [*FIELDS, "hash"])
def test_editing_any_column_of_a_row_is_found_and_named(data, column, capsys):
    assert set(EDITS) == {*FIELDS, "hash"}
    path = data / "phasewatch.sqlite3"
    raw = sqlite3.connect(path)
    raw.execute("DROP TRIGGER IF EXISTS audit_no_update")
    original = raw.execute(f"SELECT {column} FROM audit WHERE seq = 2").fetchone()[0]
    raw.execute(f"UPDATE audit SET {column} = ? WHERE seq = 2", (EDITS[column],))
    raw.commit()
    try:
        capsys.readouterr()
        assert main(["audit", "verify", "--data", str(data)]) == 1
        err = capsys.readouterr().err
        named = "audit row 3: row 2 is missing" if column == "seq" else "audit row 2:"
        assert named in err, err
    finally:
        raw.execute(f"UPDATE audit SET {column} = ? WHERE seq = ?", (original, 99 if column == "seq" else 2))
        raw.commit()
        raw.close()
    assert main(["audit", "verify", "--data", str(data)]) == 0
