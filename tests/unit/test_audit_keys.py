"""Audit keys read from a directory laid out as a mounted Secret: ids, the signing key, and
the key bytes kept out of every repr."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nofx.mirror.keys import AuditKeyError, KeyRing

SECRET_A = b"a" * 32
SECRET_B = b"b" * 40


def secret_mount(folder: Path, files: dict[str, bytes]) -> Path:
    """What the kubelet makes of a Secret: files in a timestamped folder, ..data pointing at
    it, and one symlink per key."""
    data = folder / "..2026_01_01_00_00_00.000000001"
    data.mkdir(parents=True)
    for name, content in files.items():
        (data / name).write_bytes(content)
    os.symlink(data.name, folder / "..data")
    for name in files:
        os.symlink(f"..data/{name}", folder / name)
    return folder


def test_each_file_is_a_key_named_by_its_id_and_the_greatest_id_signs(tmp_path: Path) -> None:
    ring = KeyRing.from_dir(secret_mount(tmp_path, {"2026-01": SECRET_A, "2026-07": SECRET_B}))
    assert ring.ids == ["2026-01", "2026-07"]
    assert ring.current.id == "2026-07"
    assert ring.get("2026-01") is not None and ring.get("2026-01").secret == SECRET_A  # type: ignore[union-attr]
    assert ring.get("2025-01") is None


def test_a_current_file_names_the_signing_key(tmp_path: Path) -> None:
    files = {"old": SECRET_A, "new": SECRET_B, "current": b"old\n"}
    ring = KeyRing.from_dir(secret_mount(tmp_path, files))
    assert (ring.ids, ring.current.id) == (["new", "old"], "old")


def test_key_bytes_never_show_in_a_repr(tmp_path: Path) -> None:
    ring = KeyRing.from_dir(secret_mount(tmp_path, {"k1": SECRET_A}))
    for shown in (repr(ring), repr(ring.current), str(ring.current)):
        assert "aaaa" not in shown and "k1" in shown


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "no audit keys"),
        ({"k1": b"short"}, "'k1' is shorter than 32 bytes"),
        ({"k1": SECRET_A, "current": b"k2"}, "current audit key 'k2' is not among ['k1']"),
        ({"bad id!": SECRET_A}, "not a valid audit key id"),
    ],
)
def test_an_unusable_directory_is_refused_naming_ids_only(
    tmp_path: Path, files: dict[str, bytes], message: str
) -> None:
    with pytest.raises(AuditKeyError) as refused:
        KeyRing.from_dir(secret_mount(tmp_path, files))
    assert message in str(refused.value)
    assert "aaaa" not in str(refused.value)


def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AuditKeyError, match="does not exist"):
        KeyRing.from_dir(tmp_path / "nowhere")
