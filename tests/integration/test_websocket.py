"""WebSocket through the gateway: the Upgrade/Connection fields reach the upstream, a 101 opens a
raw tunnel both ways (a real masked frame is echoed back), an upstream that refuses the upgrade
has its answer relayed as a normal response with nothing tunnelled, and an idle tunnel is
closed after the listener's idle timeout. Tunnels are counted in /metrics."""

import base64
import hashlib
import json
import os
import socket
import ssl
import struct
import unittest

from core_fixtures import CorePki, TlsConnection, client_context, get, header_values
from gateway_fixture import EchoUpstream, Gateway, wait_for

PKI = None
UPSTREAM = None
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def setUpModule():
    global PKI, UPSTREAM
    PKI = CorePki()
    UPSTREAM = EchoUpstream()


def tearDownModule():
    UPSTREAM.stop()
    PKI.cleanup()


def upgrade_request(path, key):
    return get(path, extra_headers=["Upgrade: websocket", "Connection: Upgrade",
                                    f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"])


def masked_frame(opcode, payload):
    mask = os.urandom(4)
    head = bytes([0x80 | opcode])
    if len(payload) < 126:
        head += bytes([0x80 | len(payload)])
    else:
        head += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_frame(conn):
    """(fin, opcode, payload) of one unmasked frame from the server."""
    def take(n):
        while len(conn.buffer) < n:
            conn._fill()
        data, conn.buffer = conn.buffer[:n], conn.buffer[n:]
        return data
    b0, b1 = take(2)
    length = b1 & 0x7F
    if length == 126:
        length = struct.unpack("!H", take(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", take(8))[0]
    assert not b1 & 0x80, "server frames are never masked"
    return bool(b0 & 0x80), b0 & 0x0F, take(length)


def closed_by_peer(conn, timeout):
    conn.sock.settimeout(timeout)
    try:
        while True:
            if not conn.sock.recv(65536):
                return True
    except (ConnectionError, ssl.SSLError):
        return True
    except socket.timeout:
        return False


class WebSocket(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.gateway = Gateway(PKI.server["chain"], PKI.server["key"], PKI.truststore,
                              UPSTREAM.port, log_level="info")
        cls.context = client_context(PKI, PKI.good)

    @classmethod
    def tearDownClass(cls):
        cls.gateway.stop()

    def test_round_trip_through_the_tunnel(self):
        opened = self.gateway.metric("portcullis_websocket_tunnels_total")
        key = base64.b64encode(os.urandom(16)).decode()
        with TlsConnection(self.gateway.port, self.context, 10) as conn:
            conn.send(upgrade_request("/ws", key))
            status, headers = conn.read_head()
            self.assertEqual(status, 101)
            fields = dict(headers)
            self.assertEqual(fields["upgrade"].lower(), "websocket")
            self.assertIn("upgrade", fields["connection"].lower())
            expected = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
            self.assertEqual(fields["sec-websocket-accept"], expected)

            conn.send(masked_frame(0x1, b"hello through portcullis"))
            self.assertEqual(read_frame(conn), (True, 0x1, b"hello through portcullis"))
            big = os.urandom(3000)
            conn.send(masked_frame(0x2, big))
            self.assertEqual(read_frame(conn), (True, 0x2, big))
            self.assertEqual(self.gateway.metric("portcullis_websocket_tunnels_total"), opened + 1)
            self.assertGreaterEqual(self.gateway.metric("portcullis_websocket_tunnels_active"), 1)

            # A close frame is answered with one, and the upstream closing ends the tunnel.
            conn.send(masked_frame(0x8, struct.pack("!H", 1000)))
            self.assertEqual(read_frame(conn)[1], 0x8)
            self.assertTrue(closed_by_peer(conn, 10))
        wait_for(lambda: self.gateway.metric("portcullis_websocket_tunnels_active") == 0,
                 timeout=10, what="tunnel closed")

    def test_refused_upgrade_is_relayed_as_a_response_and_nothing_is_tunnelled(self):
        opened = self.gateway.metric("portcullis_websocket_tunnels_total")
        key = base64.b64encode(os.urandom(16)).decode()
        with TlsConnection(self.gateway.port, self.context, 10) as conn:
            # The echo upstream answers a handshake on any other path with its JSON (200).
            status, headers, body = conn.request(upgrade_request("/plain", key))
            self.assertEqual(status, 200)
            echo = json.loads(body)
            self.assertEqual(header_values(echo, "upgrade"), ["websocket"])
            self.assertEqual(header_values(echo, "connection"), ["Upgrade"])
            self.assertNotIn("upgrade", dict(headers))
            status, _, body = conn.request(upgrade_request("/status/400", key))
            self.assertEqual(status, 400)
            # The connection still speaks HTTP: nothing was tunnelled.
            status, _, body = conn.request(get("/after"))
            self.assertEqual(status, 200)
            self.assertEqual(json.loads(body)["target"], "/after")
        self.assertEqual(self.gateway.metric("portcullis_websocket_tunnels_total"), opened)

    def test_a_request_without_the_connection_token_is_not_an_upgrade(self):
        with TlsConnection(self.gateway.port, self.context, 10) as conn:
            status, _, body = conn.request(get("/ws", extra_headers=[
                "Upgrade: websocket", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version: 13"]))
        self.assertEqual(status, 200)
        self.assertEqual(header_values(json.loads(body), "upgrade"), [])


class IdleTunnel(unittest.TestCase):
    def test_idle_tunnel_is_closed_and_counted(self):
        gateway = Gateway(PKI.server["chain"], PKI.server["key"], PKI.truststore, UPSTREAM.port,
                          log_level="info", listener_extra="idle_timeout: 1s\n")
        try:
            context = client_context(PKI, PKI.good)
            key = base64.b64encode(os.urandom(16)).decode()
            with TlsConnection(gateway.port, context, 10) as conn:
                conn.send(upgrade_request("/ws", key))
                self.assertEqual(conn.read_head()[0], 101)
                conn.send(masked_frame(0x1, b"x"))
                self.assertEqual(read_frame(conn)[2], b"x")
                self.assertTrue(closed_by_peer(conn, 8))
            wait_for(lambda: gateway.metric("portcullis_websocket_tunnel_idle_closes_total") == 1,
                     timeout=5, what="idle close counted")
        finally:
            gateway.stop()


if __name__ == "__main__":
    unittest.main()
