"""The real Weaviate runner (load/servers/weaviate.py): what it binds, its auth, a crash and restart."""
from __future__ import annotations

import ipaddress
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from load.servers.weaviate import SHARED_SETTINGS, WEAVIATE_VERSION, WeaviateServer

from .real_weaviate import RealWeaviate, unique_prefix
from .test_contract import chunks_of, state

pytestmark = pytest.mark.real_weaviate


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def _hex_addr(text: str) -> tuple[ipaddress._BaseAddress, int]:
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1]), int(port, 16)
    # /proc shows IPv6 addresses as four little-endian 32-bit words
    return ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))), int(port, 16)


def listeners(pid: int) -> list[tuple[str, str, int]]:
    """(protocol, address, port) of every listening TCP socket and bound UDP socket of ``pid``."""
    inodes = _socket_inodes(pid)
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            local, state_hex, inode = cols[1], cols[3], cols[9]
            if inode not in inodes:
                continue
            if proto.startswith("tcp") and state_hex != "0A":  # 0A = LISTEN
                continue
            addr, port = _hex_addr(local)
            found.append((proto, str(addr), port))
    return found


def test_every_listener_is_loopback_but_the_two_weaviate_cannot_bind(tmp_path):
    """REST, gossip, Raft, Raft RPC on 127.0.0.1, no pprof; gRPC and the cluster API bind the
    wildcard address in every Weaviate release (no setting; see the runner's docstring)."""
    with WeaviateServer(tmp_path / "w") as w:
        found = listeners(w.pid)
        ports = {p for _, _, p in found}
        assert {w.http_port, w.grpc_port, w.gossip_port, w.data_port, w.raft_port, w.raft_rpc_port} <= ports
        assert 6060 not in ports  # profiling off
        for proto, addr, port in found:
            ip = ipaddress.ip_address(addr)
            if port in w.public_wildcard_ports:
                continue
            assert ip.is_loopback, f"{proto} {addr}:{port} is not loopback"
        assert not ({p for _, a, p in found if not ipaddress.ip_address(a).is_loopback} - w.public_wildcard_ports)


def test_the_session_server_runs_the_pinned_version_with_api_key_auth(real_weaviate):
    if real_weaviate.server is None:
        pytest.skip("external Weaviate (WEAVIATE_URL): its version and auth are its own")
    assert real_weaviate.version == WEAVIATE_VERSION
    assert real_weaviate.api_key
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{real_weaviate.url}/v1/schema", timeout=5)  # no key
    assert info.value.code == 401
    assert SHARED_SETTINGS["AUTOSCHEMA_ENABLED"] == "false"


def test_kill_and_restart_on_the_same_data_path_keeps_what_was_acknowledged(tmp_path):
    with WeaviateServer(tmp_path / "w") as w:
        rw = RealWeaviate.of(w)
        prefix = unique_prefix()
        store = rw.store("fp-A", 8, prefix)
        store.upsert_chunks(chunks_of("doc-a", 3))
        store.put_states([state("doc-a", 1, chunks=3)])
        store.close()
        w.kill()
        assert not w.alive()
        w.start()
        again = rw.store("fp-A", 8, prefix)
        try:
            assert again.count() == 3 and again.get_states(["doc-a"])["doc-a"].version == 1
        finally:
            again.close()
