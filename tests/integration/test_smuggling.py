"""HTTP/1.1 hardening end to end: a corpus of malformed and ambiguous requests, each answered
with a 4xx while not one byte reaches the upstream, plus the header, body, slow-header and
connection limits.

The corpus is drawn from public request-smuggling research:
  [W05]  Linhart, Klein, Heled, Orrin: "HTTP Request Smuggling", Watchfire, 2005 (CL.CL, CL.TE,
         duplicate Content-Length).
  [PS19] Kettle: "HTTP Desync Attacks: Request Smuggling Reborn", PortSwigger Research, 2019
         (TE obfuscations: tab, space, xchunked, "chunked, identity", obs-fold, duplicate TE).
  [PS20] Kettle / PortSwigger Web Security Academy, "HTTP request smuggling" labs and
         "Exploiting HTTP request smuggling vulnerabilities" (TE.CL, TE.TE, CL.0).
  [PS22] Kettle: "Browser-Powered Desync Attacks", PortSwigger Research, 2022 (CL.0, bare LF).
  [RFC]  RFC 9112 §2.2 (bare CR, whitespace before the first field), §5 (obs-fold), §6.1 (TE on
         HTTP/1.0), §6.3 (CL+TE), §7.1 (chunk-size is 1*HEXDIG).
  [CVE]  HAProxy CVE-2019-18277 (TE with a vertical tab), CVE-2021-40346 (header length
         integer overflow), CVE-2023-25725 (empty header name); Envoy CVE-2019-18801 /
         GHSA-9j4w (chunk-size overflow); Node.js CVE-2022-32213/32214/32215 (bare LF, obs-fold,
         multi-line TE); NGINX/Apache Traffic Server CVE-2022-25763 and CVE-2021-37147 (bare LF
         and invalid chunk sizes); Puma CVE-2021-41136 and CVE-2023-40175 (chunk extensions,
         zero-prefixed and negative sizes); Go net/http CVE-2022-1705 (chunked on HTTP/1.0 and
         "Transfer-Encoding: chunked" with leading space); aiohttp CVE-2023-47627 / Jetty
         CVE-2023-40167 (Content-Length with a sign); llhttp CVE-2024-27982 (space before colon).
"""

import json
import socket
import ssl
import time
import unittest

from core_fixtures import CorePki, TlsConnection, client_context
from gateway_fixture import EchoUpstream, Gateway, wait_for

PKI = None
UPSTREAM = None

H = b"POST /x HTTP/1.1\r\nHost: localhost\r\n"
G = b"GET /x HTTP/1.1\r\nHost: localhost\r\n"

# (name, raw request, source). Every one must be refused with a 4xx before forwarding.
CORPUS = [
    # --- Content-Length and Transfer-Encoding together, and conflicting lengths
    ("cl_te", H + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", "W05 PS19"),
    ("te_cl", H + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n1\r\nG\r\n0\r\n\r\n", "PS20"),
    ("cl_te_zero", H + b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "PS22"),
    ("cl_cl_differ", H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", "W05"),
    ("cl_cl_same", H + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", "RFC"),
    ("cl_list", H + b"Content-Length: 5, 5\r\n\r\nhello", "RFC 9110 8.6"),
    ("cl_empty", H + b"Content-Length: \r\n\r\nhello", "PS19"),
    ("cl_plus", H + b"Content-Length: +5\r\n\r\nhello", "CVE-2023-47627"),
    ("cl_minus", H + b"Content-Length: -1\r\n\r\nhello", "CVE-2023-40167"),
    ("cl_hex", H + b"Content-Length: 0x5\r\n\r\nhello", "CVE-2023-40167"),
    ("cl_space_inside", H + b"Content-Length: 1 5\r\n\r\nhello", "PS19"),
    ("cl_exponent", H + b"Content-Length: 1e1\r\n\r\nhello", "PS19"),
    ("cl_overflow", H + b"Content-Length: 184467440737095516170\r\n\r\nhello", "CVE-2021-40346"),
    ("cl_folded", H + b"Content-Length:\r\n 5\r\n\r\nhello", "RFC 5"),
    # --- Transfer-Encoding not ending in chunked, or obfuscated
    ("te_identity", H + b"Transfer-Encoding: identity\r\n\r\nhello", "PS19"),
    ("te_chunked_identity", H + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", "PS19"),
    ("te_xchunked", H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", "PS19"),
    ("te_chunkedx", H + b"Transfer-Encoding: chunkedx\r\n\r\n0\r\n\r\n", "PS19"),
    ("te_tab", H + b"Transfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n", "PS19"),
    ("te_two_spaces", H + b"Transfer-Encoding:  chunked\r\n\r\n0\r\n\r\n", "CVE-2022-1705"),
    ("te_trailing_space", H + b"Transfer-Encoding: chunked \r\n\r\n0\r\n\r\n", "PS19"),
    ("te_vertical_tab", H + b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n", "CVE-2019-18277"),
    ("te_space_before_colon", H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", "CVE-2024-27982"),
    ("te_folded_value", H + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", "PS19 CVE-2022-32214"),
    ("te_folded_line", H + b"X-Pad: x\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "PS19"),
    ("te_twice", H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n", "PS19"),
    ("te_twice_chunked", H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "CVE-2022-32215"),
    ("te_quoted", H + b"Transfer-Encoding: \"chunked\"\r\n\r\n0\r\n\r\n", "PS19"),
    ("te_leading_comma", H + b"Transfer-Encoding: ,chunked\r\n\r\n0\r\n\r\n", "PS19"),
    ("te_http10", b"POST /x HTTP/1.0\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "RFC 6.1 CVE-2022-1705"),
    # --- chunk framing
    ("chunk_not_hex", H + b"Transfer-Encoding: chunked\r\n\r\nG\r\nx\r\n0\r\n\r\n", "RFC 7.1"),
    ("chunk_negative", H + b"Transfer-Encoding: chunked\r\n\r\n-1\r\nx\r\n0\r\n\r\n", "CVE-2023-40175"),
    ("chunk_0x_prefix", H + b"Transfer-Encoding: chunked\r\n\r\n0x1\r\nx\r\n0\r\n\r\n", "CVE-2023-40175"),
    ("chunk_overflow", H + b"Transfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF1\r\nx\r\n0\r\n\r\n", "CVE-2019-18801"),
    ("chunk_space_before_size", H + b"Transfer-Encoding: chunked\r\n\r\n 1\r\nx\r\n0\r\n\r\n", "CVE-2021-37147"),
    ("chunk_data_overrun", H + b"Transfer-Encoding: chunked\r\n\r\n1\r\nxyz\r\n0\r\n\r\n", "PS20"),
    ("chunk_bare_lf", H + b"Transfer-Encoding: chunked\r\n\r\n1\nx\n0\n\n", "CVE-2022-32213"),
    ("chunk_empty_size", H + b"Transfer-Encoding: chunked\r\n\r\n\r\nx\r\n0\r\n\r\n", "RFC 7.1"),
    # --- header field syntax
    ("nul_in_value", G + b"X-A: a\x00b\r\n\r\n", "RFC 5.5"),
    ("cr_in_value", G + b"X-A: a\rb\r\n\r\n", "RFC 2.2"),
    ("lf_in_value", G + b"X-A: a\nb: c\r\n\r\n", "CVE-2022-32213"),
    ("empty_name", G + b": value\r\n\r\n", "CVE-2023-25725"),
    ("no_colon", G + b"NoColonHere\r\n\r\n", "RFC 5"),
    ("space_in_name", G + b"X A: b\r\n\r\n", "RFC 5.1"),
    ("obs_fold", G + b"X-A: a\r\n\tb\r\n\r\n", "RFC 5.2"),
    ("space_before_first_field", b"GET /x HTTP/1.1\r\n Host: localhost\r\n\r\n", "RFC 2.2"),
    ("bare_lf_everywhere", b"GET /x HTTP/1.1\nHost: localhost\n\n", "PS22 CVE-2022-25763"),
    ("bare_lf_request_line", b"GET /x HTTP/1.1\nHost: localhost\r\n\r\n", "CVE-2022-25763"),
    ("bare_lf_end_of_header", G + b"\n", "CVE-2022-32213"),
    ("bare_cr", b"GET /x HTTP/1.1\rHost: localhost\r\n\r\n", "RFC 2.2"),
    # --- host
    ("two_hosts", G + b"Host: evil.example\r\n\r\n", "RFC 9112 3.2"),
    ("no_host", b"GET /x HTTP/1.1\r\nX-A: b\r\n\r\n", "RFC 9112 3.2"),
]


def setUpModule():
    global PKI, UPSTREAM
    PKI = CorePki()
    UPSTREAM = EchoUpstream()


def tearDownModule():
    UPSTREAM.stop()
    PKI.cleanup()


def read_status(conn, timeout=10):
    """The status code of the first response on `conn`, or None when it closed without one."""
    conn.sock.settimeout(timeout)
    try:
        while b"\r\n" not in conn.buffer:
            chunk = conn.sock.recv(65536)
            if not chunk:
                return None
            conn.buffer += chunk
    except (ConnectionError, ssl.SSLError):
        return None
    return int(conn.buffer.split(b"\r\n", 1)[0].split(b" ")[1])


class Smuggling(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        routes = """      - match: { host: "*", path_prefix: / }
        upstream: app
      - match: { host: "*", path_prefix: /small/ }
        upstream: app
        max_body_size: 1KiB
"""
        cls.gateway = Gateway(PKI.server["chain"], PKI.server["key"], PKI.truststore,
                              UPSTREAM.port, routes=routes, log_level="info",
                              listener_extra="header_timeout: 1s\nmax_header_size: 4KiB\n"
                                             "max_connections: 3\n")
        cls.context = client_context(PKI, PKI.good)

    @classmethod
    def tearDownClass(cls):
        cls.gateway.stop()

    def upstream_counters(self):
        stats = UPSTREAM.stats()
        return stats["requests"], stats["connections"], stats["bytes_received"]

    def refused(self, raw):
        with TlsConnection(self.gateway.port, self.context, 10) as conn:
            conn.send(raw)
            return read_status(conn)

    def test_corpus_is_refused_with_4xx_and_nothing_reaches_the_upstream(self):
        self.assertGreaterEqual(len(CORPUS), 40)
        before = self.upstream_counters()
        for name, raw, source in CORPUS:
            with self.subTest(case=name, source=source):
                status = self.refused(raw)
                self.assertIsNotNone(status, "closed without a response")
                self.assertTrue(400 <= status < 500, status)
        self.assertEqual(self.upstream_counters(), before)
        # The same connection setup does forward a well-formed request.
        with TlsConnection(self.gateway.port, self.context, 10) as conn:
            status, _, body = conn.request(H + b"Content-Length: 5\r\n\r\nhello")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["body_length"], 5)
        self.assertEqual(self.upstream_counters()[0], before[0] + 1)

    def test_reasons_name_the_defect(self):
        expected = {
            "cl_te": "unsupported_transfer_encoding",  # Beast's parser refuses CL+TE itself
            "te_xchunked": "unsupported_transfer_encoding",
            "te_tab": "obfuscated_transfer_encoding",
            "te_http10": "transfer_encoding_on_http10",
            "obs_fold": "obs_fold",
            "bare_lf_everywhere": "bare_lf",
            "empty_name": "empty_header_name",
            "nul_in_value": "nul_in_header",
            "chunk_not_hex": "bad_body_framing",
        }
        corpus = {name: raw for name, raw, _ in CORPUS}
        for name, reason in expected.items():
            with self.subTest(case=name):
                with TlsConnection(self.gateway.port, self.context, 10) as conn:
                    conn.send(corpus[name])
                    status, headers = conn.read_head()
                    self.assertEqual(status, 400)
                    self.assertEqual(json.loads(conn.read_body(headers))["reason"], reason)

    def test_http10_without_host_reaches_the_upstream_with_one(self):
        """HTTP/1.0 needs no Host; the HTTP/1.1 request sent upstream does: it names the SNI."""
        with socket.create_connection(("127.0.0.1", self.gateway.port), timeout=10) as raw:
            with self.context.wrap_socket(raw, server_hostname="localhost") as conn:
                conn.sendall(b"GET /ten HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        self.assertIn(b" 200 ", head.split(b"\r\n")[0])
        hosts = [v for n, v in json.loads(body)["headers"] if n.lower() == "host"]
        self.assertEqual(hosts, ["localhost"])

    def test_header_section_over_the_limit_is_431(self):
        before = self.upstream_counters()
        self.assertEqual(self.refused(G + b"X-Big: " + b"a" * 5000 + b"\r\n\r\n"), 431)
        many = b"".join(b"X-%d: %s\r\n" % (i, b"b" * 60) for i in range(80))
        self.assertEqual(self.refused(G + many + b"\r\n"), 431)
        self.assertEqual(self.upstream_counters(), before)

    def test_body_over_the_route_limit_is_413(self):
        before = self.upstream_counters()
        big = b"a" * 2048
        self.assertEqual(self.refused(b"POST /small/x HTTP/1.1\r\nHost: localhost\r\n"
                                      b"Content-Length: 2048\r\n\r\n" + big), 413)
        self.assertEqual(self.refused(b"POST /small/x HTTP/1.1\r\nHost: localhost\r\n"
                                      b"Transfer-Encoding: chunked\r\n\r\n800\r\n" + big +
                                      b"\r\n0\r\n\r\n"), 413)
        self.assertEqual(self.upstream_counters(), before)
        with TlsConnection(self.gateway.port, self.context, 10) as conn:
            status, _, _ = conn.request(b"POST /small/x HTTP/1.1\r\nHost: localhost\r\n"
                                        b"Content-Length: 1024\r\n\r\n" + b"a" * 1024)
        self.assertEqual(status, 200)

    def test_slow_header_is_408_after_the_header_timeout(self):
        before = self.upstream_counters()
        with TlsConnection(self.gateway.port, self.context, 10) as conn:
            conn.send(b"GET /x HTTP/1.1\r\nHost: local")
            started = time.monotonic()
            status = read_status(conn)
            elapsed = time.monotonic() - started
        self.assertEqual(status, 408)
        self.assertLess(elapsed, 5)
        self.assertEqual(self.upstream_counters(), before)

    def test_connections_over_the_listener_limit_are_closed_and_counted(self):
        def refused_at_once():
            started = time.monotonic()
            try:
                with TlsConnection(self.gateway.port, self.context, 5) as extra:
                    extra.send(G + b"\r\n")
                    closed = read_status(extra, 5) is None
            except (ConnectionError, ssl.SSLError, socket.timeout):
                closed = True
            return closed and time.monotonic() - started < 3

        def admitted():
            try:
                conn = TlsConnection(self.gateway.port, self.context, 5)
                if conn.request(G + b"\r\n")[0] == 200:
                    return conn
                conn.close()
            except (ConnectionError, ssl.SSLError, socket.timeout):
                pass
            return None

        # Earlier tests' connections may still be closing: wait until three are admitted.
        held = []
        try:
            for _ in range(3):
                held.append(wait_for(admitted, timeout=10, what="a connection below the limit"))
            rejected = self.gateway.metric("portcullis_connections_rejected_total")
            self.assertTrue(refused_at_once(), "a 4th concurrent connection was served")
            wait_for(lambda: self.gateway.metric("portcullis_connections_rejected_total") > rejected,
                     timeout=5, what="rejection counted")
            # Held connections still work.
            status, _, _ = held[0].request(G + b"\r\n")
            self.assertEqual(status, 200)
            # One of the three closes: a new connection is admitted, and then the limit holds
            # again with three open.
            held.pop().close()
            held.append(wait_for(admitted, timeout=10, what="a connection admitted below the limit"))
            rejected = self.gateway.metric("portcullis_connections_rejected_total")
            self.assertTrue(refused_at_once(), "the limit no longer held after a close")
            wait_for(lambda: self.gateway.metric("portcullis_connections_rejected_total") > rejected,
                     timeout=5, what="second rejection counted")
        finally:
            for conn in held:
                conn.close()
            # The next test must not meet the limit these connections held.
            wait_for(lambda: self.gateway.metric("portcullis_connections_active") == 0,
                     timeout=10, what="held connections closed")

if __name__ == "__main__":
    unittest.main()
