"""The session's clean-up of multiprocessing folders that killed processes leave behind."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import pytest

from conftest import live_unix_sockets, stale_multiprocessing_folders


@pytest.mark.skipif(live_unix_sockets() is None, reason="needs Linux's /proc/net/unix")
def test_a_dead_forkservers_folder_is_stale_and_a_live_ones_is_not():
    dead, alive = (Path(tempfile.mkdtemp(prefix="pymp-")) for _ in range(2))
    closed, listening = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)
    try:
        closed.bind(str(dead / "listener-dead"))
        closed.close()  # its file stays, as a SIGKILLed forkserver's does
        listening.bind(str(alive / "listener-alive"))
        listening.listen()
        stale = stale_multiprocessing_folders(keep=set())
        assert dead in stale
        assert alive not in stale
        assert dead not in stale_multiprocessing_folders(keep={str(dead)})
    finally:
        listening.close()
        for folder in (dead, alive):
            for f in folder.iterdir():
                f.unlink()
            folder.rmdir()
