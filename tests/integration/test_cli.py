"""The loomdb command as a user runs it: a real subprocess, real files."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from loomdb.cli.main import EXIT_CODES, build_parser
from loomdb.identity.peer_id import public_key_from_peer_id
from tests.support import run_python

pytestmark = pytest.mark.integration


def loomdb(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "LOOMDB_KEYRING_SECRET"}
    full_env.update(env or {})
    return run_python("-m", "loomdb", *args, env=full_env)


def test_init_then_id_keeps_the_peer_id_across_runs(tmp_path: Path) -> None:
    home = str(tmp_path / "node")
    first = loomdb("init", "--home", home, "--json")
    assert first.returncode == 0, first.stderr
    info = json.loads(first.stdout)
    assert info["peer_id"].startswith("12D3KooW")
    assert len(public_key_from_peer_id(info["peer_id"])) == 32
    assert info["multiaddr"] == f"/ip4/0.0.0.0/tcp/9171/p2p/{info['peer_id']}"
    assert info["user_id"].startswith("z6Mk")
    assert "NOT encrypted" in first.stderr  # the plaintext keyring warning
    again = loomdb("id", "--home", home, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == info
    assert (Path(home) / "keyring.json").stat().st_mode & 0o777 == 0o600


def test_encrypted_keyring_and_a_wrong_passphrase(tmp_path: Path) -> None:
    home = str(tmp_path / "node")
    made = loomdb("init", "--home", home, "--json", env={"LOOMDB_KEYRING_SECRET": "correct horse"})
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["keyring_encrypted"] is True
    wrong = loomdb("id", "--home", home, env={"LOOMDB_KEYRING_SECRET": "battery staple"})
    assert wrong.returncode == 3
    assert "passphrase does not open" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    locked = loomdb("id", "--home", home)
    assert locked.returncode == 3
    assert "LOOMDB_KEYRING_SECRET" in locked.stderr
    right = loomdb("id", "--home", home, "--json", env={"LOOMDB_KEYRING_SECRET": "correct horse"})
    assert json.loads(right.stdout)["peer_id"] == json.loads(made.stdout)["peer_id"]


def test_demo_runs_on_the_real_store(tmp_path: Path) -> None:
    home = str(tmp_path / "node")
    run = loomdb("demo", "--home", home, "--entries", "1500")
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "blind relay    verified and kept 1500/1500 entries without any key" in out
    assert "9 kept, refused: entry." in out
    assert re.search(r"no key 'default-[a-z2-7]{26}@1'", out)  # the home's own default key
    assert "'edit 1490 of note-0'" in out
    again = loomdb("demo", "--home", home, "--entries", "10")
    assert "after restart  1510 entries (1500 from earlier runs)" in again.stdout
    assert "head of note-0: bafyrei" in again.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["demo", "--entries", "0"],
        ["demo", "--entries", "many"],
        ["no-such-command"],
        [],
        ["id", "--home"],
    ],
)
def test_bad_arguments_exit_2_without_a_traceback(args: list[str]) -> None:
    run = loomdb(*args)
    assert run.returncode == 2
    assert "usage:" in run.stderr or "error:" in run.stderr
    assert "Traceback" not in run.stderr


def test_missing_home_and_a_home_that_is_a_file(tmp_path: Path) -> None:
    missing = loomdb("id", "--home", str(tmp_path / "nothing"))
    assert missing.returncode == 2
    assert "loomdb init" in missing.stderr
    afile = tmp_path / "file"
    afile.write_text("x")
    clash = loomdb("init", "--home", str(afile))
    assert clash.returncode == 2
    assert "not a directory" in clash.stderr
    assert "Traceback" not in clash.stderr


def test_every_command_has_help() -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(commands) == {"init", "id", "demo", "start", "client"}
    for name, sub in commands.items():
        assert sub.description, name
        run = loomdb(name, "--help")
        assert run.returncode == 0
        # client subcommands take --url; tests/unit/test_client_cli.py checks each one
        if name != "client":
            assert "--home" in run.stdout


def test_exit_code_table_covers_the_error_tree() -> None:
    codes = dict(EXIT_CODES)
    assert len(set(codes.values())) == len(codes)  # one code per family
