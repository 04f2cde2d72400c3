"""The core gateway end to end: the real binary, a PKI generated with `openssl ca`, curl,
`openssl s_client` and Python's ssl module as clients, the built-in echo upstream (and a few
misbehaving ones) behind it."""

import base64
import hashlib
import json
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse

from core_fixtures import (CorePki, RecordingUpstream, SilentUpstream, TlsConnection, client_context,
                           closed_port, connection_refused, der_of, expected_identity, get,
                           header_values, memory_kib, one_header, parse_metrics, pem_of,
                           sha256_of_pattern)
from gateway_fixture import BIN, EchoUpstream, Gateway, curl, free_port, wait_for

PKI = None
UPSTREAM = None


def setUpModule():
    global PKI, UPSTREAM
    PKI = CorePki()
    UPSTREAM = EchoUpstream()


def tearDownModule():
    UPSTREAM.stop()
    PKI.cleanup()


def start_gateway(**kwargs):
    return Gateway(PKI.server["chain"], PKI.server["key"], PKI.truststore, UPSTREAM.port, **kwargs)


def request(gateway, client, path="/", extra=(), chain=True):
    """curl with `client` (or no certificate when None); (exit code, status, body, stderr)."""
    if client is None:
        return curl(gateway.port, cacert=PKI.root.cert, path=path, extra=extra)
    return curl(gateway.port, client["chain"] if chain else client["cert"], client["key"],
                PKI.root.cert, path=path, extra=extra)


def echoed(test, gateway, client, path="/", extra=(), chain=True):
    code, status, body, err = request(gateway, client, path, extra, chain)
    test.assertEqual((code, status), (0, 200), err)
    return json.loads(body)


class VerifiedClients(unittest.TestCase):
    """One gateway on the default preset, logging at info with the access log in a file."""

    @classmethod
    def setUpClass(cls):
        cls.access_log = os.path.join(tempfile.mkdtemp(prefix="portcullis-access-"), "access.log")
        cls.gateway = start_gateway(log_level="info", access_log=cls.access_log)

    @classmethod
    def tearDownClass(cls):
        cls.gateway.stop()
        shutil.rmtree(os.path.dirname(cls.access_log), ignore_errors=True)

    # 1. identity headers

    def test_good_client_gets_200_and_upstream_sees_identity_headers_as_openssl_prints_them(self):
        echo = echoed(self, self.gateway, PKI.good, "/hello?x=1")
        self.assertEqual(echo["target"], "/hello?x=1")
        expected = expected_identity(PKI.good["cert"])
        self.assertIsNotNone(expected["X-Client-Cert-SAN"])
        for name, value in expected.items():
            with self.subTest(name):
                self.assertEqual(one_header(self, echo, name), value)
        self.assertRegex(expected["X-Client-Cert-Serial"], r"^0[0-9A-F]+$")  # leading zero kept
        self.assertEqual(one_header(self, echo, "X-Forwarded-For"), "127.0.0.1")
        self.assertEqual(one_header(self, echo, "X-Forwarded-Proto"), "https")

    def test_clients_taking_turns_each_get_their_own_identity_from_the_identity_cache(self):
        hits = 'portcullis_identity_cache_lookups_total{listener="public",result="hit"}'
        before = self.gateway.metric(hits)
        clients = ((PKI.good, expected_identity(PKI.good["cert"])["X-Client-Cert-Subject"]),
                   (PKI.via_sent, "CN=client-via-sent-intermediate"))
        for _ in range(3):
            for client, subject in clients:
                echo = echoed(self, self.gateway, client)
                self.assertEqual(one_header(self, echo, "X-Client-Cert-Subject"), subject)
        # Every connection after each client's first found its identity in the cache.
        self.assertGreaterEqual(self.gateway.metric(hits), before + 4)

    # 2. refusals

    def test_bad_certificates_are_refused_in_the_handshake_and_never_reach_the_upstream(self):
        cases = [
            ("no certificate", None, "no_certificate"),
            ("foreign CA", PKI.foreign, "unknown_ca"),
            ("expired", PKI.expired, "expired"),
            ("serverAuth-only EKU", PKI.server_auth_only, "bad_purpose"),
            ("five intermediates, max_chain_depth 4", PKI.deep, "chain_too_long"),
        ]
        for name, client, reason in cases:
            with self.subTest(name):
                metric = f'portcullis_handshakes_total{{result="{reason}"}}'
                before_metric = self.gateway.metric(metric)
                before_requests = UPSTREAM.requests()
                code, status, _, err = request(self.gateway, client)
                self.assertNotEqual(code, 0, "the handshake should have been refused")
                self.assertIsNone(status, err)
                wait_for(lambda: self.gateway.metric(metric) == before_metric + 1,
                         what=f"{metric} to count the refusal")
                line = re.compile(rf" info handshake failed .* reason={reason} ")
                wait_for(lambda: line.search(self.gateway.stderr()), what=f"an info log line for {reason}")
                self.assertEqual(UPSTREAM.requests(), before_requests, "the upstream must see nothing")

    # 3. where the intermediate comes from

    def test_intermediate_sent_by_client_or_held_in_truststore_are_both_accepted(self):
        held = echoed(self, self.gateway, PKI.good, chain=False)
        self.assertEqual(one_header(self, held, "X-Client-Cert-Issuer"), "CN=Core Test Issuing CA")
        sent = echoed(self, self.gateway, PKI.via_sent)
        self.assertEqual(one_header(self, sent, "X-Client-Cert-Issuer"), "CN=Core Test Client-Sent CA")
        self.assertEqual(one_header(self, sent, "X-Client-Cert-Subject"),
                         "CN=client-via-sent-intermediate")
        # The control: that intermediate is in no truststore, so without it the chain is broken.
        code, status, _, err = request(self.gateway, PKI.via_sent, chain=False)
        self.assertIsNone(status, err)

    # 4. forged identity headers

    def test_forged_identity_headers_never_reach_the_upstream_in_any_spelling(self):
        genuine = expected_identity(PKI.good["cert"])
        cases = {
            "canonical": ["X-Client-Cert-Subject: CN=forged"],
            "lower case": ["x-client-cert-subject: CN=forged"],
            "upper case": ["X-CLIENT-CERT-SUBJECT: CN=forged"],
            "underscores": ["X_Client_Cert_Subject: CN=forged"],
            "underscores and mixed case": ["x_CLIENT-cert_Subject: CN=forged"],
            "duplicates": ["X-Client-Cert-Subject: CN=forged", "X-Client-Cert-Subject: CN=forged-2",
                           "x-client-cert-subject: CN=forged-3"],
            "Connection names the identity header": ["Connection: X-Client-Cert-Subject"],
            "Connection names it, and a forged copy": [
                "Connection: keep-alive, X-Client-Cert-Subject, X-Client-Cert-Serial",
                "X-Client-Cert-Subject: CN=forged"],
            "the other default headers": [
                "X-Client-Cert-Issuer: CN=forged", "X-Client-Cert-Serial: forged",
                "X-Client-Cert-Fingerprint-SHA256: forged", "X-Client-Cert-Not-Before: forged",
                "X-Client-Cert-Not-After: forged", "x_client_cert_san: DNS:forged",
                "X-Client-Cert-Anything-Else: forged"],
            "the other presets' headers": [
                "Client-Cert: :Zm9yZ2Vk:", "client_cert_chain: :Zm9yZ2Vk:",
                "X-Forwarded-Client-Cert: Hash=forged", "X-Amzn-Mtls-Clientcert-Subject: CN=forged",
                "x_amzn_mtls_clientcert_leaf: forged"],
        }
        with TlsConnection(self.gateway.port, client_context(PKI, PKI.good)) as conn:
            for name, headers in cases.items():
                with self.subTest(name):
                    status, _, body = conn.request(get(f"/forge/{len(headers)}", extra_headers=headers))
                    self.assertEqual(status, 200)
                    echo = json.loads(body)
                    forged = [(n, v) for n, v in echo["headers"]
                              if "forged" in v or "Zm9yZ2Vk" in v or "anything-else" in n.lower()]
                    self.assertEqual(forged, [])
                    for header, value in genuine.items():
                        self.assertEqual(header_values(echo, header), [value], header)
                    self.assertEqual(header_values(echo, "Client-Cert"), [])
                    self.assertEqual(header_values(echo, "X-Forwarded-Client-Cert"), [])

    # 9. admin endpoints

    def test_admin_endpoints_report_health_readiness_metrics_and_status(self):
        echoed(self, self.gateway, PKI.good)
        self.assertEqual(self.gateway.admin("/healthz")[0], 200)
        self.assertEqual(self.gateway.admin("/readyz")[0], 200)
        status, text = self.gateway.admin("/metrics")
        self.assertEqual(status, 200)
        samples = parse_metrics(text)
        for family, kind in [("portcullis_connections_accepted_total", "counter"),
                             ("portcullis_connections_active", "gauge"),
                             ("portcullis_handshakes_total", "counter"),
                             ("portcullis_handshake_duration_seconds", "histogram"),
                             ("portcullis_requests_total", "counter"),
                             ("portcullis_upstream_errors_total", "counter"),
                             ("portcullis_request_duration_seconds", "histogram")]:
            with self.subTest(family):
                self.assertIn(f"# TYPE {family} {kind}\n", text)
        self.assertGreaterEqual(samples["portcullis_connections_accepted_total"], 1)
        self.assertGreaterEqual(samples["portcullis_connections_active"], 0)
        for result in ("ok", "no_certificate", "unknown_ca", "expired", "bad_purpose",
                       "chain_too_long", "revoked", "timeout", "protocol_error"):
            self.assertIn(f'portcullis_handshakes_total{{result="{result}"}}', samples)
        self.assertGreaterEqual(samples['portcullis_handshakes_total{result="ok"}'], 1)
        self.assertGreaterEqual(samples['portcullis_requests_total{code="2xx"}'], 1)
        for cls in ("1xx", "3xx", "4xx", "5xx"):
            self.assertIn(f'portcullis_requests_total{{code="{cls}"}}', samples)
        for kind in ("connect_failed", "timeout", "reset", "bad_response"):
            self.assertIn(f'portcullis_upstream_errors_total{{kind="{kind}"}}', samples)
        for histogram in ("portcullis_handshake_duration_seconds", "portcullis_request_duration_seconds"):
            self.assertGreaterEqual(samples[f'{histogram}_bucket{{le="+Inf"}}'], 1)
            self.assertEqual(samples[f'{histogram}_bucket{{le="+Inf"}}'], samples[f"{histogram}_count"])
            self.assertIn(f"{histogram}_sum", samples)

        status, body = self.gateway.admin("/status")
        self.assertEqual(status, 200)
        report = json.loads(body)
        self.assertEqual(len(report["listeners"]), 1)
        listener = report["listeners"][0]
        self.assertEqual(listener["name"], "public")
        self.assertEqual(listener["address"], f"127.0.0.1:{self.gateway.port}")
        trust = listener["truststore"]
        self.assertEqual(trust["path"], PKI.truststore)
        self.assertEqual((trust["certificates"], trust["roots"], trust["intermediates"]), (3, 2, 1))
        self.assertIsInstance(trust["warnings"], list)
        self.assertEqual(report["truststore"], trust)
        self.assertTrue(any("revocation checking is off" in w for w in report["config_warnings"]),
                        report["config_warnings"])

    # 11. access log

    def test_access_log_has_one_json_line_per_request_with_identity_and_outcome(self):
        echo_body = request(self.gateway, PKI.good, "/access-log-probe?token=secret")[2]
        expected = expected_identity(PKI.good["cert"])

        def probe_line():
            with open(self.access_log) as f:
                for line in f:
                    if "/access-log-probe" in line:
                        return json.loads(line)
            return None

        entry = wait_for(probe_line, what="the access log line")
        self.assertRegex(entry["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
        self.assertRegex(entry["peer"], r"^127\.0\.0\.1:\d+$")
        self.assertEqual(entry["subject"], expected["X-Client-Cert-Subject"])
        self.assertEqual(entry["serial"], expected["X-Client-Cert-Serial"])
        self.assertEqual(entry["fingerprint"], expected["X-Client-Cert-Fingerprint-SHA256"])
        self.assertEqual((entry["method"], entry["path"], entry["status"]),
                         ("GET", "/access-log-probe", 200))
        self.assertEqual(entry["bytes"], len(echo_body.encode()))
        self.assertEqual(entry["upstream"], "app")
        self.assertEqual(entry["endpoint"], f"127.0.0.1:{UPSTREAM.port}")
        self.assertGreaterEqual(entry["duration_ms"], 0)
        self.assertNotIn("secret", json.dumps(entry), "query strings stay out of the log")

    # 12. TLS front, on the ECDSA server certificate

    def test_tls12_and_tls13_both_work_and_alpn_negotiates_http11(self):
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            with self.subTest(version.name):
                context = client_context(PKI, PKI.good, minimum=version, maximum=version)
                context.set_alpn_protocols(["h2", "http/1.1"])
                with TlsConnection(self.gateway.port, context) as conn:
                    self.assertEqual(conn.sock.version(), version.name.replace("v1_", "v1."))
                    self.assertEqual(conn.sock.selected_alpn_protocol(), "http/1.1")
                    self.assertEqual(conn.sock.getpeercert(binary_form=True), der_of(PKI.server["cert"]))
                    status, _, body = conn.request(get("/tls"))
                    self.assertEqual(status, 200)
                    self.assertEqual(header_values(json.loads(body), "X-Client-Cert-Subject"),
                                     [expected_identity(PKI.good["cert"])["X-Client-Cert-Subject"]])


class TrailerForgery(unittest.TestCase):
    def test_identity_header_sent_as_chunked_trailer_never_reaches_the_upstream(self):
        upstream = RecordingUpstream()
        self.addCleanup(upstream.stop)
        gateway = Gateway(PKI.server["chain"], PKI.server["key"], PKI.truststore, upstream.port)
        self.addCleanup(gateway.stop)
        with TlsConnection(gateway.port, client_context(PKI, PKI.good)) as conn:
            status, _, body = conn.request(
                b"POST /trailer HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
                b"Trailer: X-Client-Cert-Subject\r\n\r\n3\r\nabc\r\n0\r\n"
                b"X-Client-Cert-Subject: CN=forged\r\nx_client_cert_serial: forged\r\n\r\n")
        self.assertEqual((status, body), (200, b"ok"))
        upstream.stop()
        self.assertEqual(len(upstream.received), 1)
        sent = upstream.received[0].decode("latin-1")
        self.assertNotIn("forged", sent)
        self.assertEqual(sent.count("\r\nX-Client-Cert-Subject: "), 1)
        self.assertTrue(sent.endswith("\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), sent[-40:])


class IdentityPresets(unittest.TestCase):
    def preset(self, name):
        gateway = start_gateway(listener_extra=f"    identity_headers: {name}\n")
        self.addCleanup(gateway.stop)
        forged = ["-H", "Client-Cert: :Zm9yZ2Vk:", "-H", "X-Forwarded-Client-Cert: Hash=forged",
                  "-H", "X-Amzn-Mtls-Clientcert-Subject: CN=forged", "-H", "X-Client-Cert-Subject: CN=forged"]
        echo = echoed(self, gateway, PKI.good, extra=forged)
        for n, v in echo["headers"]:
            self.assertNotIn("forged", v, n)
            self.assertNotIn("Zm9yZ2Vk", v, n)
        self.assertEqual(header_values(echo, "X-Client-Cert-Subject"), [], "only the preset's headers")
        return echo

    def test_rfc9440_client_cert_and_chain_are_base64_der_byte_sequences(self):
        echo = self.preset("rfc9440")
        leaf = one_header(self, echo, "Client-Cert")
        self.assertRegex(leaf, r"^:[A-Za-z0-9+/]+=*:$")
        self.assertEqual(base64.b64decode(leaf[1:-1]), der_of(PKI.good["cert"]))
        chain = [item.strip() for item in one_header(self, echo, "Client-Cert-Chain").split(",")]
        self.assertTrue(all(re.fullmatch(r":[A-Za-z0-9+/]+=*:", item) for item in chain), chain)
        decoded = [base64.b64decode(item[1:-1]) for item in chain]
        # RFC 9440: the certificate that signed the leaf first, then up the chain.
        self.assertEqual(decoded[0], der_of(PKI.inter.cert))
        self.assertIn(decoded[1:], ([], [der_of(PKI.root.cert)]))

    def test_xfcc_matches_envoy_x_forwarded_client_cert(self):
        echo = self.preset("xfcc")
        value = one_header(self, echo, "X-Forwarded-Client-Cert")
        fields = {}
        for part in re.findall(r'([A-Za-z]+)=("(?:[^"\\]|\\.)*"|[^;]*)', value):
            key, raw = part
            if raw.startswith('"'):
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
            fields.setdefault(key, []).append(raw)
        expected = expected_identity(PKI.good["cert"])
        self.assertEqual(fields["Hash"], [expected["X-Client-Cert-Fingerprint-SHA256"]])
        self.assertEqual(urllib.parse.unquote(fields["Cert"][0]), pem_of(der_of(PKI.good["cert"])))
        self.assertEqual(fields["Subject"], [expected["X-Client-Cert-Subject"]])
        self.assertEqual(fields["URI"], ["spiffe://example.org/client/good"])
        self.assertEqual(fields["DNS"], ["client.example.org"])

    def test_aws_alb_headers_match_the_amzn_mtls_clientcert_family(self):
        echo = self.preset("aws-alb")
        expected = expected_identity(PKI.good["cert"])
        self.assertEqual(one_header(self, echo, "X-Amzn-Mtls-Clientcert-Serial-Number"),
                         expected["X-Client-Cert-Serial"])
        self.assertEqual(one_header(self, echo, "X-Amzn-Mtls-Clientcert-Issuer"),
                         expected["X-Client-Cert-Issuer"])
        self.assertEqual(one_header(self, echo, "X-Amzn-Mtls-Clientcert-Subject"),
                         expected["X-Client-Cert-Subject"])
        self.assertEqual(one_header(self, echo, "X-Amzn-Mtls-Clientcert-Validity"),
                         f"NotBefore={expected['X-Client-Cert-Not-Before']};"
                         f"NotAfter={expected['X-Client-Cert-Not-After']}")
        leaf = urllib.parse.unquote(one_header(self, echo, "X-Amzn-Mtls-Clientcert-Leaf"))
        self.assertEqual(leaf, pem_of(der_of(PKI.good["cert"])))


GIB = 1 << 30
MIB = 1 << 20
# Under a sanitizer build (ctest sets PORTCULLIS_TEST_SANITIZER) the gateway is several times
# slower and its allocator keeps freed memory in quarantine: the streams are 64 MiB, and memory
# is bounded by the normal build's run of the same tests.
SANITIZER = os.environ.get("PORTCULLIS_TEST_SANITIZER", "")
STREAM = 64 * MIB if SANITIZER else GIB


class Streaming(unittest.TestCase):
    """1 GiB each way through the gateway in constant memory."""

    @classmethod
    def setUpClass(cls):
        cls.gateway = start_gateway()
        cls.block = os.urandom(MIB)
        cls.upload_sha256 = sha256_of_pattern(STREAM, cls.block)
        # Any window of the echo's /bytes/N stream is byte k = k mod 251.
        cls.pattern = bytes(i % 251 for i in range(251 * 4096))
        with TlsConnection(cls.gateway.port, client_context(PKI, PKI.good)) as conn:
            conn.request(get("/warm-up"))
        cls.rss_before, _ = memory_kib(cls.gateway.proc.pid)

    @classmethod
    def tearDownClass(cls):
        cls.gateway.stop()

    def assert_bounded_memory(self, what, started):
        rss, hwm = memory_kib(self.gateway.proc.pid)
        elapsed = time.monotonic() - started
        print(f"\n{what}: {elapsed:.1f}s ({STREAM / MIB / elapsed:.0f} MiB/s); gateway VmRSS before "
              f"{self.rss_before} KiB, after {rss} KiB, peak VmHWM {hwm} KiB", flush=True)
        if SANITIZER:
            return
        self.assertLess(hwm - self.rss_before, 64 * 1024, "the gateway's peak RSS grew by 64 MiB or more")

    def upload(self, chunked):
        started = time.monotonic()
        with TlsConnection(self.gateway.port, client_context(PKI, PKI.good), timeout=120) as conn:
            framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {STREAM}"
            conn.send(f"POST /upload HTTP/1.1\r\nHost: localhost\r\n{framing}\r\n\r\n".encode())
            piece = (f"{len(self.block):x}\r\n".encode() + self.block + b"\r\n") if chunked else self.block
            for _ in range(STREAM // len(self.block)):
                conn.send(piece)
            if chunked:
                conn.send(b"0\r\n\r\n")
            status, headers = conn.read_head()
            echo = json.loads(conn.read_body(headers))
        self.assertEqual(status, 200)
        self.assertEqual(echo["body_length"], STREAM)
        self.assertEqual(echo["body_sha256"], self.upload_sha256)
        self.assertEqual(header_values(echo, "Transfer-Encoding"), ["chunked"] if chunked else [])
        self.assert_bounded_memory(f"{STREAM // MIB} MiB upload, " + ("chunked" if chunked else "Content-Length"),
                                   started)

    def test_1gib_upload_with_content_length_arrives_intact_in_bounded_memory(self):
        self.upload(chunked=False)

    def test_1gib_chunked_upload_arrives_intact_in_bounded_memory(self):
        self.upload(chunked=True)

    def test_1gib_download_arrives_intact_in_bounded_memory(self):
        started = time.monotonic()
        digest = hashlib.sha256()
        with TlsConnection(self.gateway.port, client_context(PKI, PKI.good), timeout=120) as conn:
            conn.send(get(f"/bytes/{STREAM}"))
            status, headers = conn.read_head()
            self.assertEqual(status, 200)
            self.assertEqual(dict(headers).get("content-length"), str(STREAM))
            received = conn.read_body(headers, sink=digest.update)
        self.assertEqual(received, STREAM)
        self.assert_bounded_memory(f"{STREAM // MIB} MiB download", started)
        self.assertEqual(digest.hexdigest(), sha256_of_pattern(STREAM, self.pattern))


class UpstreamFailures(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.silent = SilentUpstream()
        cls.gateway = start_gateway(
            routes="""      - match: { host: "*", path_prefix: /refused }
        upstream: refused
      - match: { host: "*", path_prefix: /silent }
        upstream: silent
      - match: { host: "*", path_prefix: / }
        upstream: app
""",
            upstreams=f"""  app: {{ endpoints: ["127.0.0.1:{UPSTREAM.port}"] }}
  refused: {{ endpoints: ["127.0.0.1:{closed_port()}"], connect_timeout: 2s }}
  silent: {{ endpoints: ["127.0.0.1:{cls.silent.port}"], response_timeout: 1s }}
""")

    @classmethod
    def tearDownClass(cls):
        cls.gateway.stop()
        cls.silent.stop()

    def fails_with(self, path, status, kind):
        metric = f'portcullis_upstream_errors_total{{kind="{kind}"}}'
        before = self.gateway.metric(metric)
        with TlsConnection(self.gateway.port, client_context(PKI, PKI.good)) as conn:
            got, headers, body = conn.request(get(path))
        self.assertEqual(got, status)
        self.assertTrue(dict(headers)["content-type"].startswith("text/plain"), headers)
        self.assertLess(len(body), 200)
        self.assertIn(str(status).encode(), body)
        self.assertEqual(self.gateway.metric(metric), before + 1)
        return body

    def test_upstream_refusing_connections_gives_502_counted_as_connect_failed(self):
        self.fails_with("/refused", 502, "connect_failed")

    def test_upstream_silent_past_response_timeout_gives_504_counted_as_timeout(self):
        started = time.monotonic()
        self.fails_with("/silent", 504, "timeout")
        self.assertGreaterEqual(self.silent.accepted, 1)
        self.assertGreaterEqual(time.monotonic() - started, 0.9)

    def test_a_failing_upstream_leaves_others_working(self):
        echoed(self, self.gateway, PKI.good, "/still-fine")


BASE_CONFIG = """listeners:
  - name: public
    address: 127.0.0.1:18443
    tls:
      certificate: {server_chain}
      private_key: {server_key}
    client_auth:
      truststore: {truststore}
      max_chain_depth: 4
    routes:
      - match: {{ host: "*", path_prefix: / }}
        upstream: app
upstreams:
  app:
    endpoints: ["127.0.0.1:9000"]
    response_timeout: 30s
admin:
  address: 127.0.0.1:19901
"""


class CheckConfig(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="portcullis-check-")
        cls.base = BASE_CONFIG.format(server_chain=PKI.server["chain"], server_key=PKI.server["key"],
                                      truststore=PKI.truststore)
        with open(os.path.join(cls.dir, "empty.pem"), "w"):
            pass
        with open(os.path.join(cls.dir, "garbage.pem"), "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def check(self, text, name="portcullis.yaml"):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        p = subprocess.run([BIN, "--check-config", "--config", path], capture_output=True, text=True,
                           timeout=30)
        return p.returncode, p.stdout, p.stderr, path

    def variant(self, old, new):
        self.assertIn(old, self.base)
        return self.base.replace(old, new)

    def test_good_config_passes_and_prints_its_warnings(self):
        code, out, err, path = self.check(self.base)
        self.assertEqual(code, 0, err)
        self.assertIn(f"configuration OK: {path}", out)
        self.assertRegex(err, rf"warning: {re.escape(path)}:\d+: revocation.mode: revocation checking is off")

    def test_broken_configs_fail_naming_file_line_and_key(self):
        cases = [
            ("unknown key",
             self.variant("      max_chain_depth: 4\n", "      max_chain_dept: 4\n"),
             9, "listeners[0].client_auth.max_chain_dept", "did you mean 'max_chain_depth'?"),
            ("bad duration",
             self.variant("response_timeout: 30s", "response_timeout: 30 seconds"),
             16, "upstreams.app.response_timeout", "'30 seconds'"),
            ("duration without unit",
             self.variant("response_timeout: 30s", "response_timeout: 30"),
             16, "upstreams.app.response_timeout", "needs a unit"),
            ("missing truststore file",
             self.variant(f"truststore: {PKI.truststore}", "truststore: no-such-truststore.pem"),
             8, "listeners[0].client_auth.truststore",
             "file not found: " + os.path.join(self.dir, "no-such-truststore.pem")),
            ("empty truststore",
             self.variant(f"truststore: {PKI.truststore}", "truststore: empty.pem"),
             8, "listeners[0].client_auth.truststore", "no certificate"),
            ("truststore that is not PEM certificates",
             self.variant(f"truststore: {PKI.truststore}", "truststore: garbage.pem"),
             8, "listeners[0].client_auth.truststore", "garbage.pem"),
            ("listener address without port",
             self.variant("address: 127.0.0.1:18443", "address: 127.0.0.1"),
             3, "listeners[0].address", "'127.0.0.1' is not host:port"),
            ("listener port out of range",
             self.variant("address: 127.0.0.1:18443", "address: 127.0.0.1:70000"),
             3, "listeners[0].address", "port from 0 to 65535"),
            ("wrong type: a scalar for a list",
             self.variant('endpoints: ["127.0.0.1:9000"]', "endpoints: 127.0.0.1:9000"),
             15, "upstreams.app.endpoints", "expected a non-empty list"),
            ("wrong type: a list for an integer",
             self.variant("max_chain_depth: 4", "max_chain_depth: [4]"),
             9, "listeners[0].client_auth.max_chain_depth", "expected a single value"),
            ("route to an unknown upstream",
             self.variant("        upstream: app", "        upstream: api"),
             12, "listeners[0].routes[0].upstream", "unknown upstream 'api'"),
            ("private key of another certificate",
             self.variant(f"private_key: {PKI.server['key']}", f"private_key: {PKI.good['key']}"),
             6, "listeners[0].tls.private_key", "does not match the certificate"),
        ]
        for name, text, line, key, message in cases:
            with self.subTest(name):
                code, out, err, path = self.check(text)
                self.assertNotEqual(code, 0, out + err)
                self.assertNotIn("configuration OK", out)
                self.assertIn(f"error: {path}:{line}: {key}: ", err)
                self.assertIn(message, err)


class TlsFront(unittest.TestCase):
    def test_rsa_server_certificate_with_min_version_13_refuses_tls12_clients(self):
        gateway = Gateway(PKI.server_rsa["chain"], PKI.server_rsa["key"], PKI.truststore, UPSTREAM.port,
                          tls_extra=', min_version: "1.3"')
        self.addCleanup(gateway.stop)
        context = client_context(PKI, PKI.good)
        with TlsConnection(gateway.port, context) as conn:
            self.assertEqual(conn.sock.version(), "TLSv1.3")
            self.assertEqual(conn.sock.getpeercert(binary_form=True), der_of(PKI.server_rsa["cert"]))
            self.assertEqual(conn.request(get("/rsa"))[0], 200)

        before = UPSTREAM.requests()
        p = subprocess.run(["openssl", "s_client", "-tls1_2", "-connect", f"127.0.0.1:{gateway.port}",
                            "-servername", "localhost", "-CAfile", PKI.root.cert,
                            "-cert", PKI.good["chain"], "-key", PKI.good["key"]],
                           input="GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", capture_output=True,
                           text=True, timeout=20)
        self.assertNotEqual(p.returncode, 0, p.stdout)
        self.assertIn("protocol version", p.stdout + p.stderr)
        self.assertEqual(UPSTREAM.requests(), before)
        wait_for(lambda: gateway.metric('portcullis_handshakes_total{result="protocol_error"}') >= 1,
                 what="the refused TLS 1.2 handshake in /metrics")

    def s_client(self, gateway, *args):
        """openssl s_client with the good client certificate; (exit code, output)."""
        p = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{gateway.port}",
                            "-servername", "localhost", "-CAfile", PKI.root.cert,
                            "-cert", PKI.good["chain"], "-key", PKI.good["key"], "-ign_eof", *args],
                           input="GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                           capture_output=True, text=True, timeout=20)
        return p.returncode, p.stdout + p.stderr

    def test_configured_tls12_ciphers_and_tls13_suites_are_the_only_ones_accepted(self):
        gateway = start_gateway(tls_extra=", ciphers: ECDHE-ECDSA-AES256-GCM-SHA384"
                                          ", ciphersuites: TLS_AES_256_GCM_SHA384")
        self.addCleanup(gateway.stop)
        code, out = self.s_client(gateway, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384")
        self.assertIn("Cipher is ECDHE-ECDSA-AES256-GCM-SHA384", out)
        self.assertIn("HTTP/1.1 200", out)
        code, out = self.s_client(gateway, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
        self.assertNotEqual(code, 0, out)
        self.assertIn("handshake failure", out)
        code, out = self.s_client(gateway, "-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384")
        self.assertIn("Cipher is TLS_AES_256_GCM_SHA384", out)
        self.assertIn("HTTP/1.1 200", out)
        code, out = self.s_client(gateway, "-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256")
        self.assertNotEqual(code, 0, out)
        self.assertNotIn("HTTP/1.1 200", out)

    def test_a_client_silent_in_the_handshake_is_cut_off_at_the_handshake_timeout(self):
        gateway = start_gateway(tls_extra=", handshake_timeout: 1s")
        self.addCleanup(gateway.stop)
        before = gateway.metric('portcullis_handshakes_total{result="timeout"}')
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as raw:
            started = time.monotonic()
            # Nothing is sent: the gateway must close the connection by itself.
            self.assertEqual(raw.recv(1), b"")
            waited = time.monotonic() - started
        self.assertGreaterEqual(waited, 0.9)
        self.assertLess(waited, 10)
        wait_for(lambda: gateway.metric('portcullis_handshakes_total{result="timeout"}') == before + 1,
                 what="the handshake timeout counted")

    def test_post_quantum_group_works_or_startup_names_the_missing_group(self):
        kems = subprocess.run(["openssl", "list", "-kem-algorithms"], capture_output=True, text=True)
        available = "mlkem" in (kems.stdout + kems.stderr).lower()
        d = tempfile.mkdtemp(prefix="portcullis-pq-")
        self.addCleanup(shutil.rmtree, d, True)
        config = os.path.join(d, "portcullis.yaml")
        port, admin = free_port(), free_port()
        with open(config, "w") as f:
            f.write(BASE_CONFIG.format(server_chain=PKI.server["chain"], server_key=PKI.server["key"],
                                       truststore=PKI.truststore)
                    .replace("127.0.0.1:18443", f"127.0.0.1:{port}")
                    .replace("127.0.0.1:19901", f"127.0.0.1:{admin}")
                    .replace("127.0.0.1:9000", f"127.0.0.1:{UPSTREAM.port}")
                    .replace("      private_key:", "      groups: [X25519MLKEM768]\n      private_key:"))
        proc = subprocess.Popen([BIN, "--config", config], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        if not available:
            try:
                _, err = proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                self.fail("the gateway started with a group this OpenSSL lacks")
            self.assertNotEqual(proc.returncode, 0)
            self.assertRegex(err, rf"error: {re.escape(config)}:6: listeners\[0\]\.tls\.groups: "
                                  r"group 'X25519MLKEM768' is not available in OpenSSL 3")
            self.assertIn("not started", err)
            return
        try:
            wait_for(lambda: connection_refused(port) is False, what="the gateway with ML-KEM")
            p = subprocess.run(["openssl", "s_client", "-groups", "X25519MLKEM768", "-connect",
                                f"127.0.0.1:{port}", "-CAfile", PKI.root.cert, "-cert", PKI.good["chain"],
                                "-key", PKI.good["key"]], input="", capture_output=True, text=True,
                               timeout=20)
            self.assertIn("X25519MLKEM768", p.stdout + p.stderr)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=15)


class ClosingConnections(unittest.TestCase):
    """How a connection ends after its last response: at once when the client asked to close and
    has nothing left to send, after the client's close_notify when bytes may still come."""

    @classmethod
    def setUpClass(cls):
        cls.gateway = start_gateway()

    @classmethod
    def tearDownClass(cls):
        cls.gateway.stop()

    def fin_within(self, conn, seconds):
        """Whether the gateway's FIN arrives within `seconds`, the client sending nothing."""
        raw = socket.socket(fileno=os.dup(conn.sock.fileno()))
        try:
            raw.settimeout(seconds)
            return raw.recv(1, socket.MSG_PEEK) == b""
        except socket.timeout:
            return False
        finally:
            raw.close()

    def test_a_client_that_asked_to_close_gets_close_notify_and_fin_without_sending_its_own(self):
        with TlsConnection(self.gateway.port, client_context(PKI, PKI.good)) as conn:
            conn.send(b"GET /bye HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            status, headers = conn.read_head()
            self.assertEqual(status, 200)
            self.assertEqual(json.loads(conn.read_body(headers))["target"], "/bye")
            self.assertEqual(conn.sock.recv(1), b"")  # the gateway's close_notify
            # Well before the 2 s the gateway waits for a close_notify when it must.
            self.assertTrue(self.fin_within(conn, 1.5), "no FIN: the gateway waited for ours")

    def test_bytes_after_a_closing_request_are_read_until_the_clients_close_notify(self):
        before = UPSTREAM.requests()
        with TlsConnection(self.gateway.port, client_context(PKI, PKI.good)) as conn:
            conn.send(b"GET /first HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                      b"GET /second HTTP/1.1\r\nHost: localhost\r\n\r\n")
            status, headers = conn.read_head()
            self.assertEqual(status, 200)
            self.assertEqual(json.loads(conn.read_body(headers))["target"], "/first")
            self.assertEqual(conn.sock.recv(1), b"")
            # Closing on the unread request would reset the connection: the gateway waits.
            self.assertFalse(self.fin_within(conn, 0.5))
            raw = conn.sock.unwrap()  # our close_notify; then the FIN comes at once
            raw.settimeout(1.5)
            self.assertEqual(raw.recv(1), b"")
            raw.close()
        self.assertEqual(UPSTREAM.requests(), before + 1, "the request after the close is never served")


class OpenSslConfigurations(unittest.TestCase):
    """Under an OpenSSL configuration that loads more than the default provider, or an engine, the
    gateway leaves OpenSSL's own code in charge (the default library context, the providers' key
    decoders), says so once, and verifies clients exactly as by default."""

    providers_line = "OpenSSL is configured with providers beyond the default one"
    engines_line = "OpenSSL has engines configured"

    def openssl_conf(self, sections):
        directory = tempfile.mkdtemp(prefix="portcullis-openssl-conf-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "openssl.cnf")
        with open(path, "w") as f:
            f.write("openssl_conf = init\n[init]\n" + sections)
        return path

    def serves_as_by_default(self, env):
        gateway = start_gateway(log_level="info", env=env)
        self.addCleanup(gateway.stop)
        good = echoed(self, gateway, PKI.good)
        for name, value in expected_identity(PKI.good["cert"]).items():
            self.assertEqual(one_header(self, good, name), value, name)
        sent = echoed(self, gateway, PKI.via_sent)  # the client sends its intermediate
        self.assertEqual(one_header(self, sent, "X-Client-Cert-Issuer"), "CN=Core Test Client-Sent CA")
        for client in (PKI.foreign, PKI.expired):
            code, status, _, err = request(gateway, client)
            self.assertIsNone(status, err)
        return gateway.stderr()

    def test_by_default_nothing_is_said(self):
        log = self.serves_as_by_default(None)
        self.assertNotIn(self.providers_line, log)
        self.assertNotIn(self.engines_line, log)

    def test_the_legacy_provider_beside_the_default_one_keeps_the_default_context(self):
        conf = self.openssl_conf("providers = providers\n[providers]\ndefault = on\nlegacy = on\n"
                                 "[on]\nactivate = 1\n")
        log = self.serves_as_by_default({"OPENSSL_CONF": conf})
        self.assertEqual(log.count(self.providers_line), 1, log)
        self.assertNotIn(self.engines_line, log)

    def test_an_engine_in_the_configuration_keeps_ec_keys_with_the_providers(self):
        padlock = "/usr/lib/x86_64-linux-gnu/engines-3/padlock.so"  # Debian's libssl3 ships it
        conf = self.openssl_conf(f"engines = engines\n[engines]\npadlock = padlock\n"
                                 f"[padlock]\ndynamic_path = {padlock}\n")
        log = self.serves_as_by_default({"OPENSSL_CONF": conf})
        self.assertEqual(log.count(self.engines_line), 1, log)
        self.assertNotIn(self.providers_line, log)


class GracefulShutdown(unittest.TestCase):
    def test_sigterm_finishes_the_request_in_flight_refuses_new_connections_and_exits_0(self):
        # Two io threads are handed connections by the accepting thread; one accepts for itself.
        for io_threads in (2, 1):
            with self.subTest(io_threads=io_threads):
                self.sigterm_finishes_the_request_in_flight(io_threads)

    def sigterm_finishes_the_request_in_flight(self, io_threads):
        grace = 5.0
        gateway = start_gateway(shutdown_grace="5s", io_threads=io_threads)
        self.addCleanup(gateway.stop)
        before = UPSTREAM.requests()
        in_flight = subprocess.Popen(
            ["curl", "-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}", "--resolve",
             f"localhost:{gateway.port}:127.0.0.1", "--cacert", PKI.root.cert, "--cert", PKI.good["chain"],
             "--key", PKI.good["key"], f"https://localhost:{gateway.port}/delay/2500"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: UPSTREAM.requests() > before, what="the slow request to reach the upstream")
        signalled = time.monotonic()
        gateway.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: connection_refused(gateway.port), timeout=2, what="new connections to be refused")
        self.assertIsNone(in_flight.poll(), "the slow request should still be in flight")
        self.assertNotEqual(gateway.admin("/readyz")[0], 200)
        out, err = in_flight.communicate(timeout=20)
        body, _, code = out.rpartition("\n")
        self.assertEqual((in_flight.returncode, code), (0, "200"), err)
        self.assertEqual(json.loads(body)["target"], "/delay/2500")
        self.assertEqual(gateway.proc.wait(timeout=grace + 2), 0, gateway.stderr())
        self.assertLess(time.monotonic() - signalled, grace)


class Demo(unittest.TestCase):
    def test_demo_starts_prints_working_curl_lines_and_stops_on_ctrl_c(self):
        d = tempfile.mkdtemp(prefix="portcullis-demo-")
        self.addCleanup(shutil.rmtree, d, True)
        port, admin, upstream = free_port(), free_port(), free_port()
        stderr = open(os.path.join(d, "stderr.log"), "w+")
        self.addCleanup(stderr.close)
        proc = subprocess.Popen([BIN, "demo", "--dir", os.path.join(d, "pki"), "--port", str(port),
                                 "--admin-port", str(admin), "--upstream-port", str(upstream)],
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout], daemon=True).start()
        printed = []

        def banner_done():
            while not lines.empty():
                printed.append(lines.get())
            return proc.poll() is not None or any("Press Ctrl-C" in l for l in printed)

        wait_for(banner_done, timeout=30, what="the demo's instructions")
        self.assertIsNone(proc.poll(), "".join(printed) + open(stderr.name).read())
        commands = [shlex.split(l.strip()) for l in printed if l.strip().startswith("curl --cacert")]
        self.assertEqual(len(commands), 6, "".join(printed))

        def run_curl(argv):
            p = subprocess.run(argv[:1] + ["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}",
                                           "--resolve", f"localhost:{port}:127.0.0.1"] + argv[1:],
                               capture_output=True, text=True, timeout=30)
            body, _, code = p.stdout.rpartition("\n")
            return p.returncode, code, body

        good, forged, *refused = commands
        code, status, body = run_curl(good)
        self.assertEqual((code, status), (0, "200"))
        subject = header_values(json.loads(body), "X-Client-Cert-Subject")
        self.assertEqual(len(subject), 1)
        code, status, body = run_curl(forged)
        self.assertEqual((code, status), (0, "200"))
        self.assertEqual(header_values(json.loads(body), "X-Client-Cert-Subject"), subject)
        for argv in refused:
            with self.subTest(" ".join(argv)):
                code, status, _ = run_curl(argv)
                self.assertNotEqual(code, 0)
                self.assertEqual(status, "000")
        proc.send_signal(signal.SIGINT)
        self.assertEqual(proc.wait(timeout=15), 0)


if __name__ == "__main__":
    unittest.main()
