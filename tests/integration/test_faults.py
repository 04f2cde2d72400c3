"""Fault injection end to end: CRL sources, OCSP responders and upstreams that refuse, hang,
trickle, reset mid-body or send oversized or corrupt data; clients that stall in the handshake,
the header or the body, or open connections up to the listener limit; and a process out of file
descriptors. Every case states what the gateway must do and checks it, then checks that the
gateway is alive, still serves, and holds no more file descriptors than before."""

import concurrent.futures
import os
import resource
import shutil
import socket
import ssl
import tempfile
import threading
import time
import unittest

from core_fixtures import TlsConnection, client_context, closed_port, get
from fault_fixtures import FaultServer, cpu_seconds, fd_count, fd_targets, sanitized
from gateway_fixture import BIN, EchoUpstream, Gateway, curl, http_post, wait_for
from ocsp_fixtures import OcspCertificateAuthority, OcspResponder, s_client_status
from test_crl_revocation import crl_source_status, refresh_and_wait

PKI = None
UPSTREAM = None


class Pki:
    """One CA (its server certificate names the OCSP fault server in its AIA) issuing the
    server and the clients; `revoked` is in its first CRL, `later` in the next one."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="portcullis-faults-pki-")
        self.responder = OcspResponder()
        self.ocsp = FaultServer(self.ocsp_answer)
        self.root = OcspCertificateAuthority(self.dir, "ca", "Fault Test CA", self.ocsp.url())
        self.responder.ca = self.root
        self.server = self.root.issue("server", "localhost", extensions="server_ocsp")
        self.good = self.root.issue("good", "client-good")
        self.revoked = self.root.issue("revoked", "client-revoked")
        self.later = self.root.issue("later", "client-revoked-later")
        self.root.revoke(self.revoked["cert"])
        self.truststore = self.root.cert

    def ocsp_answer(self, method, path, body):
        status, der = self.responder.answer(body)
        return status, "application/ocsp-response", der

    def gateway(self, **kwargs):
        kwargs.setdefault("log_level", "info")
        return Gateway(self.server["chain"], self.server["key"], self.truststore, UPSTREAM.port,
                       **kwargs)

    def cleanup(self):
        self.ocsp.stop()
        self.responder.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def setUpModule():
    global PKI, UPSTREAM
    UPSTREAM = EchoUpstream()
    PKI = Pki()


def tearDownModule():
    PKI.cleanup()
    UPSTREAM.stop()


def served(gateway, client=None, max_time=10):
    """True when `client` (a good one by default) gets a 200 within `max_time` seconds."""
    client = client or PKI.good
    status = curl(gateway.port, client["chain"], client["key"], PKI.root.cert,
                  extra=("--max-time", str(max_time)))[1]
    return status == 200


def reconfigure(gateway, old, new):
    """Replaces `old` by `new` in the running gateway's configuration and reloads it: new
    connections get the new settings."""
    with open(gateway.config) as f:
        text = f.read()
    assert old in text, old
    with open(gateway.config, "w") as f:
        f.write(text.replace(old, new))
    status, body = http_post(f"http://127.0.0.1:{gateway.admin_port}/reload")
    assert status == 200, body


class GatewayCase(unittest.TestCase):
    """What every fault must leave behind: a live gateway that serves a good client and has
    closed every descriptor the fault made it open."""

    def baseline(self, gateway):
        """The gateway's descriptor count once each io thread holds its pooled upstream
        connection (two connections in a row land on both io threads)."""
        for _ in range(2):
            self.assertTrue(served(gateway))
        return fd_count(gateway.proc.pid)

    def assert_survived(self, gateway, fds, pooled=0):
        """`pooled`: idle upstream connections the test leaves in the pool on purpose."""
        fds += pooled
        self.assertIsNone(gateway.proc.poll(), "the gateway exited: " + gateway.stderr()[-2000:])
        self.assertTrue(served(gateway), "a good client is no longer served")
        try:
            wait_for(lambda: fd_count(gateway.proc.pid) <= fds, timeout=10,
                     what=f"the gateway's descriptors back to {fds}")
        except AssertionError as e:
            raise AssertionError(f"{e}; open now: {fd_targets(gateway.proc.pid)}") from None


class CrlSourceFaults(GatewayCase):
    """A CRL source that refuses, hangs, trickles, resets mid-body, sends more than `max_size`
    or corrupt bytes: each is a failed (or rejected) fetch, counted in
    portcullis_crl_fetches_total and logged with its cause, and the last good CRL stays in
    force. The gateway runs fail-open (on_unknown: allow), so a CRL lost to a fault would admit
    the revoked client: its refusal proves the CRL is still enforced."""

    @classmethod
    def setUpClass(cls):
        cls.crl = PKI.root.crl()
        cls.source = FaultServer(lambda method, path, body: (200, "application/pkix-crl", cls.crl))
        cls.url = cls.source.url("/ca.crl")
        cls.gateway = PKI.gateway(extra=f"""revocation:
  mode: crl
  on_unknown: allow
  crl:
    sources: [ {{ url: "{cls.url}" }} ]
    refresh_interval: 1h
    fetch_timeout: 2s
    max_size: 64KiB
""")
        wait_for(lambda: crl_source_status(cls.gateway, cls.url)["loaded"], what="the first CRL")

    @classmethod
    def tearDownClass(cls):
        cls.gateway.stop()
        cls.source.stop()

    def assert_revoked_refused(self, client=None):
        client = client or PKI.revoked
        before = UPSTREAM.requests()
        code, status, _, err = curl(self.gateway.port, client["chain"], client["key"],
                                    PKI.root.cert)
        self.assertIsNone(status, "a revoked client was served")
        self.assertIn("revoked", err)
        self.assertEqual(UPSTREAM.requests(), before, "the upstream saw a revoked client")

    def survive(self, mode, result, error):
        """Puts the source in `mode`, forces a fetch, and checks what must hold after it.
        Returns the source's /status entry and the seconds until the failure was counted."""
        gw = self.gateway
        fds = self.baseline(gw)
        before = crl_source_status(gw, self.url)
        self.source.set_mode(mode)
        started = time.monotonic()
        try:
            # A fetch already under way when the mode changed may fail otherwise: wait for this one.
            after = refresh_and_wait(
                gw, self.url, lambda s: s[result] > before[result] and error in s["last_error"])
            took = time.monotonic() - started
            # Checked while the source still misbehaves (it is fetched again with backoff).
            self.assert_revoked_refused()
            self.assertTrue(served(gw))
        finally:
            self.source.set_mode("ok")
        self.assertIn(error, after["last_error"])
        self.assertEqual(after["crl_number"], before["crl_number"])
        self.assertEqual(after["entries"], 1)
        metric = f'portcullis_crl_fetches_total{{source="{self.url}",result="{result}"}}'
        self.assertGreaterEqual(gw.metric(metric), after[result])
        self.assertGreaterEqual(gw.metric(f'portcullis_crl_entries{{source="{self.url}"}}'), 1)
        verb = "rejected" if result == "rejected" else "fetch failed"
        self.assertIn(f"crl source={self.url} {verb}: ", gw.stderr())
        self.assertIn("keeping the last good CRL", gw.stderr())
        self.assert_survived(gw, fds)
        return after, took

    def test_refusing_source_is_a_failed_fetch(self):
        self.survive("refuse", "failed", "cannot connect")

    def test_hanging_source_is_cut_off_at_the_fetch_timeout(self):
        hung = len(self.source.hang_durations)
        _, took = self.survive("hang", "failed", "no complete response within the fetch timeout")
        print(f"hung CRL fetch counted as failed after {took:.2f} s")
        self.assertGreater(took, 1.5)
        self.assertLess(took, 6)
        # The gateway itself closed the connection it gave up on, at its deadline.
        wait_for(lambda: len(self.source.hang_durations) > hung, what="the hung fetch closed")
        self.assertLess(self.source.hang_durations[hung], 3.5)

    def test_trickling_source_is_cut_off_at_the_fetch_timeout(self):
        _, took = self.survive("trickle", "failed", "no complete response within the fetch timeout")
        self.assertLess(took, 6)

    def test_source_resetting_mid_body_is_a_failed_fetch(self):
        self.survive("reset", "failed", "response failed")

    def test_endless_body_stops_at_max_size(self):
        sent = self.source.sent
        self.survive("oversized", "failed", "response larger than 65536 bytes")
        # The gateway stopped reading at 64 KiB; the rest of a 64 MiB stream was never taken.
        self.assertLess(self.source.sent - sent, 32 << 20)

    def test_corrupt_crl_is_rejected(self):
        self.survive("corrupt", "rejected", "")

    def test_z_source_that_recovers_delivers_the_next_crl(self):
        """After all of the above, a newer CRL from the same source is loaded and enforced."""
        self.assertTrue(served(self.gateway, PKI.later))
        number = crl_source_status(self.gateway, self.url)["crl_number"]
        PKI.root.revoke(PKI.later["cert"])
        type(self).crl = PKI.root.crl()
        refresh_and_wait(self.gateway, self.url, lambda s: s["crl_number"] != number)
        self.assert_revoked_refused(PKI.later)
        self.assert_revoked_refused(PKI.revoked)


STAPLED = "OCSP Response Status: successful"
GOOD = "Cert Status: good"
NOTHING = "OCSP response: no response sent"
VALID = 'portcullis_ocsp_staple_valid{listener="public"}'


def staple_fetches(result):
    return f'portcullis_ocsp_staple_fetches_total{{listener="public",result="{result}"}}'


class OcspResponderFaults(GatewayCase):
    """The OCSP responder of the listener's own certificate refuses, hangs, trickles, resets
    mid-body, sends an endless or a corrupt response: each attempt is counted as failed (or
    rejected) and logged, the last good response stays stapled, nothing bad is ever stapled,
    and handshakes go on."""

    STAPLING = ", ocsp_stapling: { enabled: true, refresh: 1s, fetch_timeout: 1s }"

    @classmethod
    def setUpClass(cls):
        cls.gateway = PKI.gateway(tls_extra=cls.STAPLING)
        wait_for(lambda: cls.gateway.metric(VALID) == 1, what="a good staple")

    @classmethod
    def tearDownClass(cls):
        cls.gateway.stop()
        PKI.ocsp.set_mode("ok")

    def survive(self, mode, result):
        gw = self.gateway
        fds = self.baseline(gw)
        before = gw.metric(staple_fetches(result))
        PKI.ocsp.set_mode(mode)
        try:
            wait_for(lambda: gw.metric(staple_fetches(result)) > before, timeout=15,
                     what=f"a {result} staple fetch")
            out = s_client_status(gw.port, PKI.good)
            self.assertTrue(served(gw))
        finally:
            PKI.ocsp.set_mode("ok")
        self.assertIn(STAPLED, out)
        self.assertIn(GOOD, out)
        self.assertEqual(gw.metric(VALID), 1)
        self.assertIn("OCSP stapling: ", gw.stderr())
        self.assertIn("keeping the last good response", gw.stderr())
        self.assert_survived(gw, fds)

    def test_refusing_responder(self):
        self.survive("refuse", "failed")

    def test_hanging_responder(self):
        self.survive("hang", "failed")

    def test_trickling_responder(self):
        self.survive("trickle", "failed")

    def test_responder_resetting_mid_body(self):
        self.survive("reset", "failed")

    def test_endless_response(self):
        self.survive("oversized", "failed")

    def test_corrupt_response(self):
        self.survive("corrupt", "rejected")

    def test_a_responder_failing_from_the_start_gets_nothing_stapled_until_it_recovers(self):
        PKI.ocsp.set_mode("trickle")
        try:
            gw = PKI.gateway(tls_extra=self.STAPLING)
            self.addCleanup(gw.stop)
            wait_for(lambda: gw.metric(staple_fetches("failed")) >= 1, what="a failed fetch")
            self.assertIn(NOTHING, s_client_status(gw.port, PKI.good))
            self.assertEqual(gw.metric(VALID), 0)
            self.assertTrue(served(gw))
            self.assertIn("nothing is stapled", gw.stderr())
        finally:
            PKI.ocsp.set_mode("ok")
        wait_for(lambda: gw.metric(VALID) == 1, timeout=15, what="a good staple after recovery")
        self.assertIn(GOOD, s_client_status(gw.port, PKI.good))


def big_answer(method, path, body):
    return 200, "application/octet-stream", b"x" * (256 << 10)


class UpstreamFaults(GatewayCase):
    """Upstreams that refuse (502), reset mid-response (the client's connection is cut, never
    left hanging), stall (504 after response_timeout) or close a keep-alive connection just as
    it is reused (a GET is sent again on a new connection; a POST gets a clean 502)."""

    @classmethod
    def setUpClass(cls):
        cls.reset = FaultServer(big_answer, mode="reset")
        cls.reset.reset_gate = threading.Event()
        cls.stall = FaultServer(mode="hang")
        cls.reuse = FaultServer(mode="close_on_reuse")
        cls.head_reset = FaultServer(mode="head_then_reset")
        routes = "".join(f"""      - match: {{ host: "*", path_prefix: /{name} }}
        upstream: {name}
""" for name in ("refused", "reset", "stall", "reuse", "headreset")) + """      - match: { host: "*", path_prefix: / }
        upstream: app
"""
        cls.gateway = PKI.gateway(routes=routes, upstreams=f"""  app: {{ endpoints: ["127.0.0.1:{UPSTREAM.port}"] }}
  refused: {{ endpoints: ["127.0.0.1:{closed_port()}"], connect_timeout: 2s }}
  reset: {{ endpoints: ["127.0.0.1:{cls.reset.port}"] }}
  stall: {{ endpoints: ["127.0.0.1:{cls.stall.port}"], response_timeout: 1s }}
  reuse: {{ endpoints: ["127.0.0.1:{cls.reuse.port}"] }}
  headreset: {{ endpoints: ["127.0.0.1:{cls.head_reset.port}"] }}
""")
        cls.context = client_context(PKI, PKI.good)

    @classmethod
    def tearDownClass(cls):
        cls.gateway.stop()
        cls.reset.reset_gate.set()
        for server in (cls.reset, cls.stall, cls.reuse, cls.head_reset):
            server.stop()

    def errors(self, kind):
        return self.gateway.metric(f'portcullis_upstream_errors_total{{kind="{kind}"}}')

    def test_refusing_upstream_is_a_502_every_time(self):
        fds = self.baseline(self.gateway)
        before = self.errors("connect_failed")
        with TlsConnection(self.gateway.port, self.context, 10) as conn:
            for _ in range(10):
                status, _, body = conn.request(get("/refused"))
                self.assertEqual(status, 502)
                self.assertIn(b"upstream unavailable", body)
        self.assertEqual(self.errors("connect_failed"), before + 10)
        self.assert_survived(self.gateway, fds)

    def test_upstream_reset_mid_response_cuts_the_client_off(self):
        fds = self.baseline(self.gateway)
        before = self.errors("reset")
        for _ in range(5):
            self.reset.reset_gate.clear()
            with TlsConnection(self.gateway.port, self.context, 10) as conn:
                conn.send(get("/reset"))
                status, headers = conn.read_head()
                self.assertEqual(status, 200)
                self.assertEqual(dict(headers)["content-length"], str(256 << 10))
                # The upstream resets only once the client has the head: mid-response.
                self.reset.reset_gate.set()
                started = time.monotonic()
                with self.assertRaises((ConnectionError, ssl.SSLError)):
                    conn.read_body(headers)
                self.assertLess(time.monotonic() - started, 5, "the client was left hanging")
        wait_for(lambda: self.errors("reset") == before + 5, what="five resets counted")
        self.assert_survived(self.gateway, fds)

    def test_upstream_reset_after_a_small_response_head_is_a_502(self):
        # A small response's head waits for its body, so nothing has reached the client when the
        # upstream fails: the client gets a proper answer instead of a cut connection.
        fds = self.baseline(self.gateway)
        before = self.errors("reset")
        for _ in range(3):
            with TlsConnection(self.gateway.port, self.context, 10) as conn:
                status, _, body = conn.request(get("/headreset"))
            self.assertEqual(status, 502)
            self.assertIn(b"upstream failed", body)
        self.assertEqual(self.errors("reset"), before + 3)
        self.assert_survived(self.gateway, fds)

    def test_stalled_upstream_is_a_504_after_the_response_timeout(self):
        fds = self.baseline(self.gateway)
        before = self.errors("timeout")
        hung = len(self.stall.hang_durations)
        for _ in range(2):
            started = time.monotonic()
            with TlsConnection(self.gateway.port, self.context, 10) as conn:
                status, _, body = conn.request(get("/stall"))
            took = time.monotonic() - started
            self.assertEqual(status, 504)
            self.assertGreater(took, 0.9)
            self.assertLess(took, 5)
        self.assertEqual(self.errors("timeout"), before + 2)
        # The gateway closed both stalled upstream connections itself.
        wait_for(lambda: len(self.stall.hang_durations) == hung + 2, what="stalled connections closed")
        self.assert_survived(self.gateway, fds)

    def test_keep_alive_connection_closed_at_reuse(self):
        fds = self.baseline(self.gateway)
        connections = self.reuse.connections
        answered = self.reuse.answered
        with TlsConnection(self.gateway.port, self.context, 10) as conn:
            # Every request after the first meets a pooled connection that closes as it is used:
            # a GET has no body, so it is sent again on a new connection and succeeds.
            for i in range(5):
                status, _, body = conn.request(get(f"/reuse/{i}"))
                self.assertEqual(status, 200)
                self.assertEqual(body, b"ok\n")
        # The server counts an answer once it is sent: the client may have read it just before.
        wait_for(lambda: self.reuse.answered == answered + 5, what="five answers counted")
        self.assertEqual(self.reuse.connections, connections + 5)
        self.assert_survived(self.gateway, fds, pooled=1)

    def test_post_on_a_keep_alive_connection_closed_at_reuse_is_a_502_not_sent_twice(self):
        """A POST with a body must not be sent a second time: the upstream may have acted on it
        before closing. The client gets a clean 502 and its connection is closed."""
        fds = self.baseline(self.gateway)
        before = self.errors("reset") + self.errors("bad_response")
        with TlsConnection(self.gateway.port, self.context, 10) as conn:
            self.assertEqual(conn.request(get("/reuse/a"))[0], 200)
            requests = self.reuse.requests
            status, headers, _ = conn.request(b"POST /reuse/b HTTP/1.1\r\nHost: localhost\r\n"
                                              b"Content-Length: 5\r\n\r\nhello")
        self.assertEqual(self.reuse.requests, requests + 1, "the POST was sent twice")
        self.assertEqual(status, 502)
        self.assertEqual(dict(headers).get("connection"), "close")
        self.assertEqual(self.errors("reset") + self.errors("bad_response"), before + 1)
        self.assert_survived(self.gateway, fds, pooled=1)


def client_hello():
    """The bytes of a TLS ClientHello, as Python's ssl module first sends them."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def drip(conn, first, limit=8.0):
    """A slowloris client: sends `first`, then one more byte every 0.2 s until the gateway
    answers or closes. Returns (status or None, seconds it took), or (-1, limit) when the
    connection was still open after `limit` seconds."""
    started = time.monotonic()
    conn.send(first)
    conn.sock.settimeout(0.2)
    while time.monotonic() - started < limit:
        try:
            data = conn.sock.recv(4096)
        except TimeoutError:
            try:
                conn.sock.sendall(b"a")
            except (OSError, ssl.SSLError):
                return None, time.monotonic() - started
            continue
        except (ConnectionError, ssl.SSLError):
            return None, time.monotonic() - started
        if not data:
            return None, time.monotonic() - started
        conn.buffer += data
        if b"\r\n" in conn.buffer:
            return int(conn.buffer.split(b" ", 2)[1]), time.monotonic() - started
    return -1, limit


class ClientFaults(GatewayCase):
    """Clients that stall in the handshake, dribble their header (slowloris), stop half-way
    through a body, or hold connections up to the listener limit: the handshake, header and
    idle timeouts close them whatever they do, nothing incomplete reaches an upstream, the
    connections beyond the limit are refused and counted, and other clients are served."""

    LIMIT = 8

    @classmethod
    def setUpClass(cls):
        cls.recorder = FaultServer()
        cls.gateway = PKI.gateway(
            listener_extra=f"header_timeout: 1s\nidle_timeout: 2s\nmax_connections: {cls.LIMIT}\n",
            routes="""      - match: { host: "*", path_prefix: /body }
        upstream: recorder
      - match: { host: "*", path_prefix: / }
        upstream: app
""", upstreams=f"""  app: {{ endpoints: ["127.0.0.1:{UPSTREAM.port}"] }}
  recorder: {{ endpoints: ["127.0.0.1:{cls.recorder.port}"] }}
""")
        reconfigure(cls.gateway, "handshake_timeout: 5s", "handshake_timeout: 1s")
        cls.context = client_context(PKI, PKI.good)

    @classmethod
    def tearDownClass(cls):
        cls.gateway.stop()
        cls.recorder.stop()

    def setUp(self):
        wait_for(lambda: self.gateway.metric("portcullis_connections_active") == 0,
                 what="no connection left from the previous test")

    def test_clients_stalled_mid_handshake_are_closed_at_the_handshake_timeout(self):
        gw = self.gateway
        fds = self.baseline(gw)
        before = gw.metric('portcullis_handshakes_total{result="timeout"}')
        hello = client_hello()
        socks = [socket.create_connection(("127.0.0.1", gw.port), timeout=10) for _ in range(4)]
        started = time.monotonic()
        try:
            for s in socks:
                s.sendall(hello[:len(hello) // 2])
            for s in socks:
                try:
                    self.assertEqual(s.recv(4096), b"")
                except ConnectionResetError:
                    pass
            took = time.monotonic() - started
        finally:
            for s in socks:
                s.close()
        self.assertGreater(took, 0.9)
        self.assertLess(took, 5)
        wait_for(lambda: gw.metric('portcullis_handshakes_total{result="timeout"}') == before + 4,
                 what="four handshake timeouts counted")
        self.assert_survived(gw, fds)

    def test_idle_connections_are_served_again_and_closed_at_their_timeouts(self):
        gw = self.gateway
        fds = self.baseline(gw)

        def closed_after(conn):
            started = time.monotonic()
            try:
                self.assertEqual(conn.sock.recv(4096), b"")
            except (ConnectionResetError, ssl.SSLError):
                pass
            return time.monotonic() - started

        before = UPSTREAM.requests()
        with TlsConnection(gw.port, self.context, 10) as conn:
            # Each response is read before the next request goes: the gateway waits idle in
            # between, and must take every request up again.
            for i in range(5):
                status, _, _ = conn.request(get(f"/again/{i}"))
                self.assertEqual(status, 200)
            took = closed_after(conn)
        self.assertEqual(UPSTREAM.requests(), before + 5)
        self.assertGreater(took, 1.5, "closed before the idle timeout (2s)")
        self.assertLess(took, 5)
        # A connection that sends nothing after its handshake has the header timeout (1s).
        with TlsConnection(gw.port, self.context, 10) as conn:
            took = closed_after(conn)
        self.assertGreater(took, 0.5)
        self.assertLess(took, 3, "held past the header timeout")
        wait_for(lambda: gw.metric("portcullis_connections_active") == 0, what="both closed")
        self.assert_survived(gw, fds)

    def test_slowloris_header_is_cut_off_at_the_header_timeout_however_it_drips(self):
        gw = self.gateway
        fds = self.baseline(gw)
        before = UPSTREAM.requests()
        conns = [TlsConnection(gw.port, self.context, 10) for _ in range(4)]
        try:
            with concurrent.futures.ThreadPoolExecutor(len(conns)) as pool:
                results = list(pool.map(
                    lambda c: drip(c, b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: "), conns))
        finally:
            for conn in conns:
                conn.close()
        for status, took in results:
            self.assertIn(status, (408, None), "a dripping header kept its connection open")
            self.assertLess(took, 4)
        self.assertIn(408, [status for status, _ in results])
        self.assertEqual(UPSTREAM.requests(), before, "an incomplete header was forwarded")
        self.assert_survived(gw, fds)

    def test_body_stalled_mid_way_is_closed_at_the_idle_timeout_and_never_completed_upstream(self):
        gw = self.gateway
        fds = self.baseline(gw)
        requests = self.recorder.requests
        with TlsConnection(gw.port, self.context, 10) as conn:
            conn.send(b"POST /body HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n"
                      + b"b" * 1000)
            started = time.monotonic()
            try:
                data = conn.sock.recv(4096)
            except (ConnectionError, ssl.SSLError):
                data = b""
            took = time.monotonic() - started
        self.assertNotIn(b" 200 ", data)
        print(f"stalled body cut off after {took:.2f} s")
        self.assertGreater(took, 1.5)
        self.assertLess(took, 6)
        # The upstream got a head and part of a body, then its connection closed: no request.
        wait_for(lambda: self.recorder.open == 0, what="the upstream connection closed")
        self.assertEqual(self.recorder.requests, requests)
        self.assert_survived(gw, fds)

    def test_connections_beyond_the_limit_are_refused_and_counted_then_served_again(self):
        gw = self.gateway
        fds = self.baseline(gw)
        rejected = gw.metric("portcullis_connections_rejected_total")
        held = []
        try:
            for _ in range(self.LIMIT):
                conn = TlsConnection(gw.port, self.context, 10)
                held.append(conn)
                self.assertEqual(conn.request(get("/"))[0], 200)
            for _ in range(5):
                try:
                    with TlsConnection(gw.port, self.context, 5) as extra:
                        status = extra.request(get("/"))[0]
                except (ConnectionError, ssl.SSLError, TimeoutError):
                    status = None
                self.assertIsNone(status, "a connection beyond the limit was served")
            wait_for(lambda: gw.metric("portcullis_connections_rejected_total") == rejected + 5,
                     what="five rejections counted")
            self.assertEqual(held[0].request(get("/"))[0], 200)
        finally:
            for conn in held:
                conn.close()
        wait_for(lambda: gw.metric("portcullis_connections_active") == 0, what="all closed")
        self.assert_survived(gw, fds)


class DescriptorExhaustion(unittest.TestCase):
    """With its descriptor limit lowered to just above what it holds, the gateway is flooded
    with connections until accept() fails with EMFILE. While exhausted it must not spin (little
    CPU time used), and once the connections close it must serve clients again, admin listener
    included, without a restart."""

    # The sanitizers' runtime needs descriptors of its own: UBSan's vptr check probes memory
    # through a pipe, and with none left reports a false "invalid vptr" and aborts.
    @unittest.skipIf(sanitized(BIN), "a sanitizer runtime cannot work without descriptors")
    def test_out_of_descriptors_then_recovers(self):
        gw = PKI.gateway()
        self.addCleanup(gw.stop)
        # The flood's connections must stay open for the whole exhaustion.
        reconfigure(gw, "handshake_timeout: 5s", "handshake_timeout: 60s")
        self.assertTrue(served(gw))
        pid = gw.proc.pid
        base = fd_count(pid)
        limit = base + 12
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
        flood = []
        try:
            # More connections than descriptors left: the rest wait in the listen backlog.
            for _ in range(30):
                flood.append(socket.create_connection(("127.0.0.1", gw.port), timeout=10))
            wait_for(lambda: "Too many open files" in gw.stderr(), what="accept failing with EMFILE")
            # Every descriptor number below the limit is taken (the limit bounds numbers, and a
            # descriptor opened before it was lowered may lie above it).
            in_use = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
            self.assertLessEqual(set(range(limit)), in_use)
            # An admin request made while exhausted waits in its backlog.
            admin = socket.create_connection(("127.0.0.1", gw.admin_port), timeout=10)
            flood.append(admin)
            admin.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            cpu = cpu_seconds(pid)
            started = time.monotonic()
            # A real client meanwhile gets nothing: the measuring window for the CPU time.
            self.assertFalse(served(gw, max_time=2))
            window = time.monotonic() - started
            used = cpu_seconds(pid) - cpu
            print(f"descriptors: {base} in use, limit {limit}; while exhausted {used:.2f} s of CPU "
                  f"in {window:.2f} s")
            self.assertGreater(window, 1.9)
            self.assertLess(used, 0.25 * window, f"{used:.2f}s of CPU in {window:.2f}s: a busy loop")
        finally:
            for s in flood:
                s.close()
        wait_for(lambda: served(gw), timeout=15, what="a client served after the flood closed")
        wait_for(lambda: gw.admin("/healthz")[0] == 200, timeout=10, what="the admin listener")
        self.assertIsNone(gw.proc.poll())
        wait_for(lambda: fd_count(pid) <= base + 1, timeout=10, what="descriptors released")


if __name__ == "__main__":
    unittest.main()
