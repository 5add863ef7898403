"""The keyed audit trail with the real operator and Postgres: an operator given a key directory
hashes rows with HMAC and signs each finished Run's head; `nofx audit verify` names an edited
row, a deleted newest row, re-ordered rows, a forged checkpoint and a deleted one; after a key
rotation old rows verify with their key id. The keys reach neither the log nor Postgres."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from nofx.mirror import chain
from nofx.mirror.keys import AuditKey
from nofx_dev.controlplane import ControlPlane

from ..conftest import Kubectl, new_postgres
from .conftest import OperatorProcess, wait_for_phase
from .objects import agent, apply, run, step
from .test_mirror import REGION, Mirrored, fresh_namespace, wait_mirrored

NAMESPACE = "keyed"


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("audit-keys")
    (folder / "k1").write_bytes(secrets.token_bytes(32))
    return folder


@pytest.fixture(scope="module")
def keyed(
    start_plane: Callable[..., ControlPlane],
    tmp_path_factory: pytest.TempPathFactory,
    key_dir: Path,
) -> Iterator[Mirrored]:
    plane = start_plane("keyed-plane")
    postgres = new_postgres()
    postgres.start()
    operator = OperatorProcess(
        plane, tmp_path_factory.mktemp("keyed-operator"), "--standalone",
        "--database-url", postgres.dsn, "--region", REGION, "--audit-key-dir", str(key_dir),
    )  # fmt: skip
    try:
        setup = Mirrored(plane, Kubectl(plane.kubeconfig), postgres, operator)
        setup.nofx("db", "migrate")
        operator.start()
        fresh_namespace(setup.kubectl, NAMESPACE)
        apply(setup.kubectl, NAMESPACE, agent("echo"))
        yield setup
    finally:
        operator.stop()
        postgres.stop()
        shutil.rmtree(postgres.directory.parent, ignore_errors=True)


def finish(keyed: Mirrored, *names: str) -> dict[str, str]:
    """Two-step Runs, finished and mirrored; their streams by name."""
    for name in names:
        apply(keyed.kubectl, NAMESPACE, run(name, steps=[step("a"), step("b", dependsOn=["a"])]))
    streams = {}
    for name in names:
        body = wait_for_phase(keyed.kubectl, NAMESPACE, name, {"Succeeded", "Failed"})
        streams[name] = f"run/{body['metadata']['uid']}"
    wait_mirrored(keyed, NAMESPACE, list(names))
    return streams


def verify(keyed: Mirrored, key_dir: Path | None, *target: str) -> tuple[int, str]:
    keys = ["--audit-key-dir", str(key_dir)] if key_dir else []
    result = keyed.nofx("audit", "verify", *target, "-n", NAMESPACE, *keys, check=False)
    return result.returncode, result.stdout


def superuser(keyed: Mirrored, statement: str, *params: object) -> None:
    """Past the append-only triggers, as a superuser can."""
    with psycopg.connect(keyed.postgres.dsn, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(statement, params)


def last_seq(keyed: Mirrored, stream: str) -> int:
    [(seq,)] = keyed.sql("SELECT max(seq) FROM audit_events WHERE stream = %s", stream)
    return int(seq)


def test_rows_are_keyed_and_each_finished_run_has_a_signed_head(
    keyed: Mirrored, key_dir: Path
) -> None:
    streams = finish(keyed, "intact")
    stream = streams["intact"]
    rows = keyed.sql("SELECT DISTINCT key_id FROM audit_events WHERE stream = %s", stream)
    assert rows == [("k1",)]
    [(seq, digest, key_id)] = keyed.sql(
        "SELECT seq, hash, key_id FROM audit_checkpoints WHERE stream = %s", stream
    )
    [(head,)] = keyed.sql(
        "SELECT hash FROM audit_events WHERE stream = %s AND seq = %s", stream, seq
    )
    assert (seq, digest, key_id) == (last_seq(keyed, stream), head, "k1")

    code, out = verify(keyed, key_dir, "intact")
    assert code == 0, out
    assert f"{stream} verifies: 1 streams" in out and "(keys k1)" in out
    code, out = verify(keyed, None, "intact")
    assert code == 0, out
    assert "note: not checked: the MACs of" in out


def test_verify_names_each_kind_of_tampering(keyed: Mirrored, key_dir: Path) -> None:
    streams = finish(keyed, "edited", "truncated", "reordered", "forged", "unsigned")
    prefix = {name: f"region {REGION} stream {stream}" for name, stream in streams.items()}

    superuser(keyed, "UPDATE audit_events SET message = 'nothing to see'"
              " WHERE stream = %s AND seq = 2", streams["edited"])  # fmt: skip
    code, out = verify(keyed, key_dir, "edited")
    assert code == 1
    assert (
        f"{prefix['edited']} seq 2: MAC mismatch (key k1), the row was changed after it was written"
    ) in out

    # The newest row of a finished Run: its end.
    end = last_seq(keyed, streams["truncated"])
    superuser(keyed, "DELETE FROM audit_events WHERE stream = %s AND seq = %s",
              streams["truncated"], end)  # fmt: skip
    code, out = verify(keyed, key_dir, "truncated")
    assert code == 1
    assert f"{prefix['truncated']} seq {end}: deleted, the checkpoint of " in out
    assert f"signed it as the head; the stream now ends at seq {end - 1}" in out

    # Swap seq 2 and 3 (through free numbers: the primary key holds at every statement).
    superuser(keyed, "UPDATE audit_events SET seq = seq + 1000 WHERE stream = %s"
              " AND seq IN (2, 3)", streams["reordered"])  # fmt: skip
    superuser(keyed, "UPDATE audit_events SET seq = CASE seq WHEN 1002 THEN 3 ELSE 2 END"
              " WHERE stream = %s AND seq > 1000", streams["reordered"])  # fmt: skip
    code, out = verify(keyed, key_dir, "reordered")
    assert code == 1
    assert f"{prefix['reordered']} seq 2: re-ordered, it follows seq 3, not seq 1" in out

    # Hide a deleted end behind a checkpoint of the shortened stream, made without the key.
    stream = streams["forged"]
    end = last_seq(keyed, stream)
    superuser(keyed, "DELETE FROM audit_events WHERE stream = %s AND seq = %s", stream, end)
    superuser(keyed, "DELETE FROM audit_checkpoints WHERE stream = %s", stream)
    [(head, region)] = keyed.sql(
        "SELECT hash, region FROM audit_events WHERE stream = %s AND seq = %s", stream, end - 1
    )
    [(at,)] = keyed.sql("SELECT now()")
    forged = chain.sign_checkpoint(
        AuditKey("k1", b"a guess, not the key" * 2), region, stream, end - 1, head, at
    )
    superuser(keyed, "INSERT INTO audit_checkpoints VALUES (%s, %s, %s, %s, %s, %s, %s)",
              region, stream, end - 1, head, at, "k1", forged.mac)  # fmt: skip
    code, out = verify(keyed, key_dir, "forged")
    assert code == 1
    assert (
        f"{prefix['forged']} checkpoint seq {end - 1}: its MAC does not verify with key k1:"
        " forged or changed"
    ) in out
    # Without the key the forgery passes for a head: what the note warns about.
    code, out = verify(keyed, None, "forged")
    assert code == 0 and "note: not checked" in out

    superuser(keyed, "DELETE FROM audit_checkpoints WHERE stream = %s", streams["unsigned"])
    code, out = verify(keyed, None, "unsigned")  # no key needed to see it
    assert code == 1
    end = last_seq(keyed, streams["unsigned"])
    assert (
        f"{prefix['unsigned']} finished (RunSucceeded at seq {end}) but no checkpoint signs its"
        " head: a checkpoint was deleted"
    ) in out

    code, out = verify(keyed, key_dir)
    assert code == 1
    assert sum(line.startswith(f"region {REGION} ") for line in out.splitlines()) == 5, out
    assert "5 problems:" in out


def test_after_rotation_old_rows_verify_with_their_key_id(keyed: Mirrored, key_dir: Path) -> None:
    old = finish(keyed, "before-rotation")["before-rotation"]
    (key_dir / "k2").write_bytes(secrets.token_bytes(32))
    (key_dir / "current").write_text("k2\n")
    keyed.operator.stop()
    keyed.operator.start()
    new = finish(keyed, "after-rotation")["after-rotation"]
    assert keyed.sql("SELECT DISTINCT key_id FROM audit_events WHERE stream = %s", new) == [("k2",)]
    assert keyed.sql("SELECT key_id FROM audit_checkpoints WHERE stream = %s", new) == [("k2",)]
    assert keyed.sql("SELECT DISTINCT key_id FROM audit_events WHERE stream = %s", old) == [("k1",)]
    for name, stream in (("before-rotation", old), ("after-rotation", new)):
        code, out = verify(keyed, key_dir, name)
        assert code == 0 and f"{stream} verifies" in out, out

    # An auditor given only the new key cannot vouch for the old rows, and says so.
    only_new = key_dir.parent / "only-k2"
    only_new.mkdir()
    shutil.copy(key_dir / "k2", only_new / "k2")
    code, out = verify(keyed, only_new, "before-rotation")
    assert code == 1
    assert "signed with key k1, which is not in the key directory" in out


def test_the_keys_reach_neither_the_log_nor_postgres(keyed: Mirrored, key_dir: Path) -> None:
    finish(keyed, "quiet")
    log = keyed.operator.log_path.read_bytes()
    assert b'"audit_signing_key"' in log  # the startup line names key ids only
    tables = ["audit_events", "audit_checkpoints", "runs", "spec_versions", "usage_records"]
    dump = "\n".join(
        str(row) for table in tables for row in keyed.sql(f"SELECT t::text FROM {table} t")
    )
    assert "k1" in dump  # key ids are stored
    for key in key_dir.iterdir():
        if key.name == "current":
            continue
        secret = key.read_bytes()
        for form in (secret, secret.hex().encode()):
            assert form not in log, key.name
            assert form.decode("latin-1") not in dump, key.name
