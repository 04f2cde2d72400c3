"""TLS to upstreams end to end: the gateway verifies the upstream's certificate against the
upstream's `ca` with SNI and a host-name check (`server_name`, by default the endpoint host) and,
when configured, presents its own certificate. A certificate that does not chain to `ca`, a name
that does not match, and an upstream demanding a client certificate the gateway lacks all end
in a counted 502."""

import json
import socket
import subprocess
import unittest

from core_fixtures import CorePki, TlsConnection, client_context, get, parse_metrics
from gateway_fixture import BIN, Gateway, free_port, wait_for

PKI = None
ECHOES = {}


class TlsEcho:
    def __init__(self, cert, key, client_ca=None):
        self.port = free_port()
        args = [BIN, "echo-upstream", "--listen", f"127.0.0.1:{self.port}", "--tls-cert", cert,
                "--tls-key", key]
        if client_ca:
            args += ["--require-client-ca", client_ca]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.accepting, what="TLS echo upstream")

    def accepting(self):
        if self.proc.poll() is not None:
            raise AssertionError("TLS echo upstream exited")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def setUpModule():
    global PKI
    PKI = CorePki()
    ECHOES["server"] = TlsEcho(PKI.server["chain"], PKI.server["key"])
    ECHOES["mutual"] = TlsEcho(PKI.server["chain"], PKI.server["key"], PKI.truststore)
    foreign = PKI.foreign_root.issue("foreign-server", "localhost", extensions="server")
    ECHOES["foreign"] = TlsEcho(foreign["chain"], foreign["key"])


def tearDownModule():
    for echo in ECHOES.values():
        echo.stop()
    PKI.cleanup()


UPSTREAMS = {
    # path prefix: (echo, tls settings)
    "named": ("server", "ca: {root}, server_name: localhost"),
    "default-name": ("server", "ca: {root}"),
    "mutual": ("mutual", "ca: {root}, certificate: {cert}, private_key: {key}"),
    "mutual-missing": ("mutual", "ca: {root}"),
    "foreign": ("foreign", "ca: {root}"),
    "wrong-name": ("server", "ca: {root}, server_name: other.example"),
}


class UpstreamTls(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        routes = ""
        upstreams = ""
        for name, (echo, settings) in UPSTREAMS.items():
            tls = settings.format(root=PKI.root.cert, cert=PKI.good["chain"], key=PKI.good["key"])
            routes += f"""      - match: {{ host: "*", path_prefix: /{name}/ }}
        upstream: {name}
"""
            upstreams += (f'  {name}: {{ endpoints: ["127.0.0.1:{ECHOES[echo].port}"], '
                          f"connect_timeout: 2s, response_timeout: 5s, tls: {{ {tls} }} }}\n")
        cls.gateway = Gateway(PKI.server["chain"], PKI.server["key"], PKI.truststore, 0,
                              routes=routes, upstreams=upstreams, log_level="info")
        cls.context = client_context(PKI, PKI.good)

    @classmethod
    def tearDownClass(cls):
        cls.gateway.stop()

    def request(self, path):
        with TlsConnection(self.gateway.port, self.context, 10) as conn:
            status, _, body = conn.request(get(path))
        return status, body

    def tls_errors(self):
        samples = parse_metrics(self.gateway.admin("/metrics")[1])
        return samples.get('portcullis_upstream_errors_total{kind="tls"}', 0)

    def test_verified_upstream_with_sni_and_host_name(self):
        status, body = self.request("/named/x")
        self.assertEqual(status, 200, body)
        echo = json.loads(body)
        self.assertTrue(echo["tls"])
        self.assertEqual(echo["tls_server_name"], "localhost")
        self.assertEqual(echo["client_certificate"], "")

    def test_server_name_defaults_to_the_endpoint_host(self):
        # 127.0.0.1 is checked against the certificate's IP SAN; an IP is never sent as SNI.
        status, body = self.request("/default-name/x")
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["tls_server_name"], "")

    def test_gateway_presents_its_certificate_to_a_mutual_tls_upstream(self):
        status, body = self.request("/mutual/x")
        self.assertEqual(status, 200, body)
        self.assertIn("CN=client-good", json.loads(body)["client_certificate"])
        # Kept-alive TLS connections carry later requests too.
        for _ in range(3):
            self.assertEqual(self.request("/mutual/y")[0], 200)

    def test_upstream_certificate_not_chaining_to_ca_is_502_and_counted(self):
        before = self.tls_errors()
        status, _ = self.request("/foreign/x")
        self.assertEqual(status, 502)
        self.assertGreater(self.tls_errors(), before)

    def test_upstream_name_mismatch_is_502(self):
        before = self.tls_errors()
        self.assertEqual(self.request("/wrong-name/x")[0], 502)
        self.assertGreater(self.tls_errors(), before)

    def test_upstream_demanding_a_client_certificate_the_gateway_lacks_is_502(self):
        before = self.tls_errors()
        self.assertEqual(self.request("/mutual-missing/x")[0], 502)
        self.assertGreater(self.tls_errors(), before)


if __name__ == "__main__":
    unittest.main()
