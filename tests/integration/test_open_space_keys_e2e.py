"""An open space shared between two independent nodes: real ``loomdb start``
processes, each with a fresh home and so a default key of its own.

B syncs A's document before it has A's key: the entries are stored, nothing is
refused, and the sync report, ``doc get`` and ``doc history`` (HTTP API and CLI)
say they wait for A's key. B is then given A's key (stopped, the key imported
into its keyring with :meth:`Keyring.import_key`, restarted) and reads the
document. Every wait is bounded; every node is killed at teardown.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from loomdb.identity.keyring import Keyring
from tests.integration.nodes import Node, Nodes, client_sync, loomdb, nodes

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster() -> Iterator[Nodes]:
    with nodes() as group:
        yield group


def default_key_id(home: Path) -> str:
    keys = json.loads((home / "keyring.json").read_text())["keys"]
    key_id: str = keys["default_key"]
    return key_id


def history(node: Node, collection: str, doc: str) -> list[dict[str, object]]:
    with node.http() as http:
        r = http.get(f"/collections/{collection}/docs/{doc}/history")
        assert r.status_code == 200, r.text
        items: list[dict[str, object]] = r.json()["history"]
        return items


def test_a_document_synced_before_its_key_waits_and_is_read_once_the_key_arrives(
    cluster: Nodes, tmp_path: Path
) -> None:
    a = cluster.launch(tmp_path / "a")
    b = cluster.launch(tmp_path / "b")
    cluster.wait_ready()
    a_key = default_key_id(a.home)
    assert a_key != default_key_id(b.home)  # independent homes: keys of their own
    with a.http() as http:
        r = http.post("/collections/notes/docs", json={"id": "n1", "value": {"t": "hi"}})
        assert r.status_code == 201, r.text
        r = http.patch("/collections/notes/docs/n1", json={"set": {"t": "hi!", "n": 2}})
        assert r.status_code == 200, r.text

    report = client_sync(a.url, "--pull", url=b.url)
    assert (report["pulled"], report["rejected"]) == (2, [])
    assert (report["waiting_for_key"], report["keys_wanted"]) == (2, [a_key])
    text = loomdb("client", "--url", b.url, "sync", a.url, "--pull")  # the words a user reads
    assert text.returncode == 0, text.stderr
    assert f"2 entries held here wait for a key: {a_key}" in text.stdout

    with b.http() as http:
        r = http.get("/collections/notes/docs/n1")
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error["code"] == "key.missing"
    assert f"2 entries wait for key '{a_key}'" in error["message"]
    items = history(b, "notes", "n1")
    assert [(i["state"], i["key_id"], i["waits_for_key"]) for i in items] == [
        ("pending", a_key, a_key),
        ("pending", a_key, a_key),
    ]
    shown = loomdb("client", "--url", b.url, "doc", "history", "notes", "n1")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count(f"[waits for key {a_key}]") == 2
    got = loomdb("client", "--url", b.url, "doc", "get", "notes", "n1")
    assert got.returncode == 6, (got.stdout, got.stderr)  # a key error, no traceback
    assert a_key in got.stderr and "Traceback" not in got.stderr

    # B is given A's key: stopped, the key imported into its keyring, restarted.
    assert b.stop() == 0
    a_ring = Keyring.open(a.home / "keyring.json", None)
    key = a_ring.get_named_key(a_key)
    assert key is not None
    b_ring = Keyring.open(b.home / "keyring.json", None)
    assert b_ring.import_key(key)
    b_ring.save()
    b = cluster.start(b.home)

    with b.http() as http:
        r = http.get("/collections/notes/docs/n1")
    assert r.status_code == 200, r.text
    assert r.json()["value"] == {"t": "hi!", "n": 2}
    items = history(b, "notes", "n1")
    assert [(i["state"], i["waits_for_key"]) for i in items] == [("applied", None)] * 2
    again = client_sync(a.url, url=b.url)
    assert (again["waiting_for_key"], again["keys_wanted"], again["rejected"]) == (0, [], [])
