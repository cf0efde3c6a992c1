"""PrivateCopies: each slot, opened by path, reads back exactly the bytes last written to it,
in both kinds (Linux's memory files and the scratch directory's files), and closing frees
every slot."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from render_gateway.audit.private_copies import PrivateCopies


@pytest.fixture(params=[True, False], ids=["memory", "files"])
def memory(request: pytest.FixtureRequest) -> bool:
    if request.param and not hasattr(os, "memfd_create"):
        pytest.skip("no memfd_create on this platform")
    return bool(request.param)


def test_a_slot_reads_back_exactly_its_last_bytes(tmp_path: Path, memory: bool) -> None:
    with PrivateCopies(3, tmp_path, memory=memory) as copies:
        long, short = os.urandom(3 << 20), b"short"
        path = copies.write(1, long)
        assert Path(path).read_bytes() == long
        assert copies.write(1, short) == path  # rewritten in place: the same path
        assert Path(path).read_bytes() == short  # no tail of the longer bytes left
        other = copies.write(2, memoryview(long)[5:105])
        assert other != path and Path(other).read_bytes() == long[5:105]
        assert Path(copies.write(0, b"")).read_bytes() == b""


def test_scratch_files_are_private_and_closing_removes_them(tmp_path: Path) -> None:
    copies = PrivateCopies(2, tmp_path, memory=False)
    path = Path(copies.write(0, b"x"))
    assert path.parent == tmp_path and stat.S_IMODE(path.stat().st_mode) == 0o600
    copies.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="no memfd_create")
def test_memory_slots_are_closed_on_exit(tmp_path: Path) -> None:
    with PrivateCopies(2, tmp_path, memory=True) as copies:
        path = copies.write(0, b"x")
        assert "render-private-copy-0" in os.readlink(path)
    # the descriptor is closed (its number may already name something else)
    assert not os.path.lexists(path) or "render-private-copy-0" not in os.readlink(path)
    assert list(tmp_path.iterdir()) == []  # nothing was put on disk


def test_a_refused_memfd_create_falls_back_to_private_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sandbox may refuse memfd_create (ENOSYS, EPERM): the copies are files then."""

    def refused(name: str, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(os, "memfd_create", refused, raising=False)
    with PrivateCopies(2, tmp_path, memory=True) as copies:
        path = Path(copies.write(0, b"bytes"))
        assert path.parent == tmp_path and path.read_bytes() == b"bytes"
    assert list(tmp_path.iterdir()) == []


def test_scratch_files_hold_no_descriptor_between_writes(tmp_path: Path) -> None:
    """A platform without memory files (macOS: 256 descriptors by default) keeps none open for
    the slots; only a memory file's descriptor is the file itself."""
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    with PrivateCopies(64, tmp_path, memory=False) as copies:
        for slot in range(64):
            copies.write(slot, b"x" * slot)
        if before is not None:
            assert len(os.listdir("/proc/self/fd")) == before
        assert [Path(copies.write(s, b"y")).read_bytes() for s in (0, 63)] == [b"y", b"y"]


def test_closing_frees_every_slot_even_when_a_file_is_already_gone(tmp_path: Path) -> None:
    copies = PrivateCopies(3, tmp_path, memory=False)
    paths = [Path(copies.write(slot, b"x")) for slot in range(3)]
    paths[0].unlink()  # removed from outside
    copies.close()
    assert list(tmp_path.iterdir()) == []
