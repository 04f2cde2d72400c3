"""Upstream pools end to end: round-robin and least-outstanding balancing over three endpoints,
passive ejection of an endpoint that dies mid-test with GETs retried on another endpoint, and
keep-alive reuse of upstream connections (none with max_idle_connections: 0)."""

import http.server
import threading
import unittest

from core_fixtures import CorePki, TlsConnection, client_context, get, parse_metrics
from gateway_fixture import EchoUpstream, Gateway, wait_for

PKI = None
ECHOES = []


def setUpModule():
    global PKI
    PKI = CorePki()
    for _ in range(3):
        ECHOES.append(EchoUpstream())


def tearDownModule():
    for echo in ECHOES:
        echo.stop()
    PKI.cleanup()


def start_gateway(ports, settings="", host="127.0.0.1"):
    endpoints = ", ".join(f'"{host}:{p}"' for p in ports)
    upstreams = (f"  app: {{ endpoints: [{endpoints}], connect_timeout: 2s, response_timeout: 5s"
                 f"{settings} }}\n")
    return Gateway(PKI.server["chain"], PKI.server["key"], PKI.truststore, ports[0],
                   upstreams=upstreams, log_level="info")


def requests_of(echoes):
    return [e.requests() for e in echoes]


def connections_of(echo):
    return echo.stats()["connections"]


class SlowUpstream:
    """An HTTP/1.1 upstream that takes `delay` seconds for every answer and counts requests."""

    def __init__(self, delay):
        outer = self
        self.count = 0
        self.lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                with outer.lock:
                    outer.count += 1
                # The slowness is what this upstream is for, not a synchronisation.
                threading.Event().wait(delay)
                body = b"{}\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class Balancing(unittest.TestCase):
    def test_round_robin_spreads_requests_evenly(self):
        gateway = start_gateway([e.port for e in ECHOES], ", balance: round_robin")
        try:
            before = requests_of(ECHOES)
            context = client_context(PKI, PKI.good)
            with TlsConnection(gateway.port, context, 10) as conn:
                for i in range(30):
                    status, _, _ = conn.request(get(f"/rr/{i}"))
                    self.assertEqual(status, 200)
            shares = [a - b for a, b in zip(requests_of(ECHOES), before)]
            self.assertEqual(sum(shares), 30)
            for share in shares:
                self.assertTrue(8 <= share <= 12, shares)
        finally:
            gateway.stop()

    def test_least_outstanding_sends_the_load_past_a_slow_endpoint(self):
        slow = SlowUpstream(0.5)
        fast = ECHOES[:2]
        gateway = start_gateway([slow.port] + [e.port for e in fast],
                                ", balance: least_outstanding")
        try:
            before = requests_of(fast)
            context = client_context(PKI, PKI.good)
            total = 60
            lock = threading.Lock()
            issued = [0]
            failures = []

            def client():
                with TlsConnection(gateway.port, context, 10) as conn:
                    for _ in range(total):
                        with lock:
                            if issued[0] >= total:
                                return
                            issued[0] += 1
                        status, _, _ = conn.request(get("/lo"))
                        if status != 200:
                            failures.append(status)

            threads = [threading.Thread(target=client) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            self.assertFalse(any(t.is_alive() for t in threads))
            self.assertEqual(failures, [])
            fast_share = sum(a - b for a, b in zip(requests_of(fast), before))
            self.assertEqual(fast_share + slow.count, total)
            # Round-robin would give the slow endpoint a third (20); least outstanding only
            # sends it a request when it has no more in flight than the others.
            self.assertLessEqual(slow.count, total // 6, (slow.count, fast_share))
        finally:
            gateway.stop()
            slow.stop()


class Names(unittest.TestCase):
    def test_endpoints_may_be_dns_names(self):
        # "localhost" goes through the resolver (and its answer cache, renewed every
        # resolve_interval); the echo upstreams listen on 127.0.0.1 only.
        ports = [e.port for e in ECHOES]
        gateway = start_gateway(ports, ", resolve_interval: 1s", host="localhost")
        self.addCleanup(gateway.stop)
        before = requests_of(ECHOES)
        with TlsConnection(gateway.port, client_context(PKI, PKI.good)) as conn:
            for i in range(9):
                self.assertEqual(conn.request(get(f"/named/{i}"))[0], 200)
        spread = [after - b for after, b in zip(requests_of(ECHOES), before)]
        self.assertEqual(sum(spread), 9)
        self.assertTrue(all(n > 0 for n in spread), spread)


class PassiveHealth(unittest.TestCase):
    def test_killed_endpoint_is_ejected_and_gets_requests_retried_elsewhere(self):
        doomed = EchoUpstream()
        survivors = ECHOES[:2]
        ports = [doomed.port] + [e.port for e in survivors]
        gateway = start_gateway(ports, ", retry: true, health: { max_failures: 2, ejection_time: 60s }")
        try:
            context = client_context(PKI, PKI.good)
            with TlsConnection(gateway.port, context, 10) as conn:
                for i in range(9):
                    self.assertEqual(conn.request(get(f"/warm/{i}"))[0], 200)
            self.assertGreater(doomed.requests(), 0)
            doomed.stop()

            before = requests_of(survivors)
            statuses = []
            for _ in range(3):
                with TlsConnection(gateway.port, context, 10) as conn:
                    for i in range(10):
                        statuses.append(conn.request(get(f"/after/{i}"))[0])
            self.assertEqual(statuses, [200] * 30)
            self.assertEqual(sum(a - b for a, b in zip(requests_of(survivors), before)), 30)

            endpoint = f"127.0.0.1:{doomed.port}"
            samples = parse_metrics(gateway.admin("/metrics")[1])
            key = ('portcullis_upstream_endpoint_events_total{upstream="app",endpoint="%s",'
                   'event="%s"}')
            self.assertGreaterEqual(samples.get(key % (endpoint, "ejected"), 0), 1, samples)
            self.assertGreaterEqual(samples.get(key % (endpoint, "connect_failed"), 0), 2)
            # Once ejected, the dead endpoint is no longer tried first: far fewer connect
            # failures than the 10 its round-robin turns would have cost.
            self.assertLess(samples.get(key % (endpoint, "connect_failed"), 0), 10)
        finally:
            gateway.stop()
            if doomed.proc.poll() is None:
                doomed.stop()


class Pooling(unittest.TestCase):
    def run_requests(self, gateway, connections, per_connection):
        context = client_context(PKI, PKI.good)
        for _ in range(connections):
            with TlsConnection(gateway.port, context, 10) as conn:
                for i in range(per_connection):
                    self.assertEqual(conn.request(get(f"/pool/{i}"))[0], 200)

    def test_keep_alive_requests_reuse_few_upstream_connections(self):
        echo = ECHOES[2]
        gateway = start_gateway([echo.port])
        try:
            before = connections_of(echo)
            self.run_requests(gateway, 10, 5)
            opened = connections_of(echo) - before
            # 50 requests over 10 client connections; one pool per io thread (2).
            self.assertGreaterEqual(opened, 1)
            self.assertLessEqual(opened, 4)
        finally:
            gateway.stop()

    def test_no_idle_connections_means_one_upstream_connection_per_request(self):
        echo = ECHOES[2]
        gateway = start_gateway([echo.port], ", max_idle_connections: 0")
        try:
            before = connections_of(echo)
            self.run_requests(gateway, 2, 10)
            wait_for(lambda: connections_of(echo) - before >= 20, timeout=5,
                     what="20 upstream connections")
            self.assertEqual(connections_of(echo) - before, 20)
        finally:
            gateway.stop()


if __name__ == "__main__":
    unittest.main()
