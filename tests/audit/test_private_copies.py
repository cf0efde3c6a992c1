"""PrivateCopies: each slot, opened by path, reads back exactly the bytes last written to it,
in both kinds (Linux's memory files and the scratch directory's files), and closing frees
every slot."""

from __future__ import annotations

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
