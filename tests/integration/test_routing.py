"""Routing and per-route authorization end to end: host (exact, `*.suffix`) and path-prefix
matching with the most specific route winning, 404 for no route, 421 when Host disagrees with
SNI, and allow rules of every kind evaluated on the verified client certificate (403 with a
reason code, logged and counted by route and reason). `check-cert --host/--path` reports the
same decision."""

import json
import subprocess
import unittest

from core_fixtures import CorePki, TlsConnection, client_context, x509
from gateway_fixture import BIN, EchoUpstream, Gateway

PKI = None
ECHOES = {}


def setUpModule():
    global PKI
    PKI = CorePki()
    for name in ("exact", "wildcard", "admin", "prefix", "default"):
        ECHOES[name] = EchoUpstream()


def tearDownModule():
    for echo in ECHOES.values():
        echo.stop()
    PKI.cleanup()


def spki_sha256(cert):
    pub = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-pubkey"], check=True,
                         capture_output=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub, check=True,
                         capture_output=True).stdout
    import hashlib
    return hashlib.sha256(der).hexdigest()


def fingerprint(cert):
    return x509(cert, "-fingerprint", "-sha256").split("=", 1)[1].replace(":", "").lower()


# (path prefix, allow rules as YAML flow, admitted?) for the client certificate PKI.good:
# CN=client-good, O=Example, Inc.; SANs DNS:client.example.org,
# URI:spiffe://example.org/client/good, email:client@example.org, IP:10.1.2.3.
def authz_cases():
    other = "0" * 64
    return [
        ("/cn-ok/", '[ { subject: { CN: "client-*" } } ]', True),
        ("/cn-no/", '[ { subject: { CN: "admin-*" } } ]', False),
        ("/o-ok/", '[ { subject: { O: "Example, Inc." } } ]', True),
        ("/cn-and-o-no/", '[ { subject: { CN: "client-*", O: "Other" } } ]', False),
        ("/dns-ok/", '[ { san_dns: "*.example.org" } ]', True),
        ("/dns-no/", '[ { san_dns: "*.example.net" } ]', False),
        # A URI SAN never satisfies a DNS rule, even when the pattern spells the URI.
        ("/dns-vs-uri/", '[ { san_dns: "spiffe://example.org/*" } ]', False),
        # ... and a DNS SAN never satisfies a URI rule.
        ("/uri-vs-dns/", '[ { san_uri: "client.example.org" } ]', False),
        ("/spiffe-ok/", '[ { san_uri: "spiffe://example.org/client/*" } ]', True),
        ("/spiffe-exact/", '[ { san_uri: "spiffe://example.org/client/good" } ]', True),
        ("/spiffe-other-path/", '[ { san_uri: "spiffe://example.org/server/*" } ]', False),
        ("/spiffe-other-domain/", '[ { san_uri: "spiffe://example.org.evil/*" } ]', False),
        ("/email-ok/", '[ { san_email: "*@example.org" } ]', True),
        ("/email-no/", '[ { san_email: "root@example.org" } ]', False),
        ("/ip-ok/", '[ { san_ip: "10.1.2.*" } ]', True),
        ("/ip-no/", '[ { san_ip: "10.9.*" } ]', False),
        ("/issuer-ok/", '[ { issuer: "CN=Core Test Issuing CA*" } ]', True),
        ("/issuer-no/", '[ { issuer: "CN=Foreign Root CA" } ]', False),
        ("/fp-ok/", f'[ {{ fingerprint_sha256: "{fingerprint(PKI.good["cert"])}" }} ]', True),
        ("/fp-no/", f'[ {{ fingerprint_sha256: "{other}" }} ]', False),
        ("/spki-ok/", f'[ {{ spki_sha256: "{spki_sha256(PKI.good["cert"])}" }} ]', True),
        ("/spki-no/", f'[ {{ spki_sha256: "{other}" }} ]', False),
        ("/any-of/", '[ { san_dns: "nope" }, { san_uri: "spiffe://example.org/*" } ]', True),
    ]


class Routing(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cases = authz_cases()
        routes = f"""      - match: {{ host: api.example.org, path_prefix: / }}
        upstream: exact
      - match: {{ host: "*.example.org", path_prefix: / }}
        upstream: wildcard
      - match: {{ host: "*.example.org", path_prefix: /admin/ }}
        upstream: admin
      - match: {{ host: localhost, path_prefix: /svc/ }}
        upstream: prefix
      - match: {{ host: localhost, path_prefix: / }}
        upstream: default
"""
        for prefix, rules, _ in cls.cases:
            routes += f"""      - match: {{ host: localhost, path_prefix: {prefix} }}
        upstream: default
        allow: {rules}
"""
        upstreams = "".join(
            f'  {name}: {{ endpoints: ["127.0.0.1:{echo.port}"] }}\n' for name, echo in ECHOES.items())
        cls.gateway = Gateway(PKI.server["chain"], PKI.server["key"], PKI.truststore, 0,
                              routes=routes, upstreams=upstreams, log_level="info")

    @classmethod
    def tearDownClass(cls):
        cls.gateway.stop()

    def send(self, path, host, sni="localhost"):
        """(status, body) for GET path with Host `host`, SNI `sni` (None: no SNI)."""
        context = client_context(PKI, PKI.good)
        context.check_hostname = False
        with TlsConnection(self.gateway.port, context, 10, sni) as conn:
            raw = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            return conn.request(raw)[::2]

    def routed_to(self, path, host, sni):
        before = {name: echo.requests() for name, echo in ECHOES.items()}
        status, _ = self.send(path, host, sni)
        after = {name: echo.requests() for name, echo in ECHOES.items()}
        hit = [name for name in ECHOES if after[name] != before[name]]
        return status, hit

    def test_host_exact_wildcard_and_path_prefix_pick_the_most_specific_route(self):
        cases = [
            ("/x", "api.example.org", "api.example.org", "exact"),
            ("/admin/x", "api.example.org", "api.example.org", "exact"),  # exact host first
            ("/x", "www.example.org", "www.example.org", "wildcard"),
            ("/admin/x", "www.example.org", "www.example.org", "admin"),  # longer prefix
            ("/admin", "www.example.org", "www.example.org", "wildcard"),  # prefix is literal
            ("/svc/a", "localhost", "localhost", "prefix"),
            ("/svcx", "localhost", "localhost", "default"),
            ("/", "LOCALHOST:443", "localhost", "default"),  # case and port ignored
        ]
        for path, host, sni, expected in cases:
            with self.subTest(path=path, host=host):
                self.assertEqual(self.routed_to(path, host, sni), (200, [expected]))

    def test_no_matching_route_is_404_and_nothing_is_forwarded(self):
        for host in ("example.org", "other.test", "example.org.evil"):
            with self.subTest(host=host):
                status, hit = self.routed_to("/x", host, None)
                self.assertEqual((status, hit), (404, []))
        status, body = self.send("/x", "nowhere.test", None)
        self.assertEqual(json.loads(body)["reason"], "no_route")

    def test_host_differing_from_sni_is_421_and_nothing_is_forwarded(self):
        status, hit = self.routed_to("/x", "www.example.org", "api.example.org")
        self.assertEqual((status, hit), (421, []))
        status, hit = self.routed_to("/x", "api.example.org", "localhost")
        self.assertEqual((status, hit), (421, []))
        # Without SNI the Host alone decides.
        self.assertEqual(self.routed_to("/x", "api.example.org", None), (200, ["exact"]))

    def test_each_rule_type_admits_or_refuses_on_the_verified_certificate(self):
        for prefix, _, admitted in self.cases:
            with self.subTest(route=prefix):
                status, hit = self.routed_to(prefix + "x", "localhost", "localhost")
                if admitted:
                    self.assertEqual((status, hit), (200, ["default"]))
                else:
                    self.assertEqual((status, hit), (403, []))

    def test_denial_is_json_with_a_reason_logged_and_counted_by_route_and_reason(self):
        metric = ('portcullis_authz_denied_total{listener="public",route="localhost/cn-no/",'
                  'reason="no_rule_matched"}')
        before = self.gateway.metric(metric)
        for _ in range(3):
            status, body = self.send("/cn-no/secret", "localhost")
            self.assertEqual(status, 403)
            self.assertEqual(json.loads(body), {"error": "forbidden", "reason": "no_rule_matched"})
            # No certificate internals in what the client sees.
            for secret in (b"client-good", b"Example", b"spiffe", fingerprint(PKI.good["cert"]).encode()):
                self.assertNotIn(secret, body)
        self.assertEqual(self.gateway.metric(metric), before + 3)
        log = self.gateway.stderr()
        self.assertIn("request denied", log)
        self.assertIn("route=localhost/cn-no/ reason=no_rule_matched", log)

    def test_check_cert_reports_the_route_and_rule_for_a_host_and_path(self):
        def check(host, path):
            p = subprocess.run([BIN, "check-cert", "--config", self.gateway.config, "--cert",
                                PKI.good["chain"], "--host", host, "--path", path, "--offline"],
                               capture_output=True, text=True, timeout=60)
            return p.returncode, p.stdout + p.stderr

        code, out = check("localhost", "/any-of/x")
        self.assertEqual(code, 0, out)
        self.assertIn("path /any-of/ -> upstream default: allowed (rule_matched, rule 1)", out)
        code, out = check("localhost", "/dns-vs-uri/x")
        self.assertEqual(code, 1, out)
        self.assertIn("DENIED (no_rule_matched)", out)
        code, out = check("nowhere.test", "/")
        self.assertEqual(code, 1, out)
        self.assertIn("refused (no_route)", out)


if __name__ == "__main__":
    unittest.main()
