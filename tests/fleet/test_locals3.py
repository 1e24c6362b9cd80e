"""The local S3 server's start when a port it was given or chose is taken meanwhile."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from edgefleet.locals3 import LocalS3, PortTaken, _free_ports


def test_a_port_of_its_own_taken_is_chosen_again_and_the_callers_is_reported(
    tmp_path: Path,
) -> None:
    with socket.socket() as squatter:  # as another process would, after the pick
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        s3 = LocalS3(tmp_path / "a")
        s3._ports = _free_ports(7)
        s3._ports[1] = taken  # the master's: an internal port, SeaweedFS's own business
        with s3:
            assert s3.running and taken not in s3._ports
        with pytest.raises(PortTaken) as refused:
            LocalS3(tmp_path / "b", port=taken).start(timeout=60)
    assert refused.value.port == taken and "address already in use" in str(refused.value)
