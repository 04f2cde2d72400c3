"""CRL policy end to end: stale CRLs within and beyond the grace, per-issuer on_unknown rules for a
private CA that publishes no CRL, CRLs discovered from client certificates, https:// CRL
sources. Each case also runs `portcullis check-cert` and compares its verdict with the handshake."""

import datetime
import os
import shutil
import subprocess
import tempfile
import unittest

from crl_fixtures import (CertificateAuthority, CrlServer, read_text, sha256_fingerprint, self_signed_ca,
                          utc_now)
from gateway_fixture import BIN, EchoUpstream, Gateway, curl, http_post, wait_for


def check_cert(gateway, client):
    p = subprocess.run([BIN, "check-cert", "--config", gateway.config, "--cert", client["chain"]],
                       capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout + p.stderr


def source_status(gateway, url):
    for source in gateway.status()["revocation"]["sources"]:
        if source["source"] == url:
            return source
    return None


def denials(gateway, reason):
    return gateway.metric(f'portcullis_revocation_denials_total{{reason="{reason}"}}')


class PolicyCase(unittest.TestCase):
    """A hierarchy root -> inter -> leaves, a CRL server and an echo upstream per class."""

    @classmethod
    def make_pki(cls):
        cls.dir = tempfile.mkdtemp(prefix="portcullis-crl-policy-")
        cls.root = CertificateAuthority(cls.dir, "root", "Policy Test Root CA")
        cls.inter = CertificateAuthority(cls.dir, "inter", "Policy Test Intermediate CA", cls.root)
        cls.server = cls.inter.issue("server", "localhost", extensions="server")
        cls.truststore = os.path.join(cls.dir, "truststore.pem")
        cls.write_truststore(cls.root, cls.inter)
        cls.upstream = EchoUpstream()
        cls.crls = CrlServer()

    @classmethod
    def write_truststore(cls, *cas):
        with open(cls.truststore, "w") as f:
            for ca in cas:
                f.write(read_text(ca.cert))

    @classmethod
    def tearDownClass(cls):
        cls.upstream.stop()
        cls.crls.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def gateway(self, revocation, wait_ready=True):
        gw = Gateway(self.server["chain"], self.server["key"], self.truststore, self.upstream.port,
                     extra=revocation, wait_ready=wait_ready)
        self.addCleanup(gw.stop)
        return gw

    def handshake(self, gw, client):
        """(admitted, curl stderr), and that a refused client reached no upstream."""
        before = self.upstream.requests()
        code, status, _, err = curl(gw.port, client["chain"], client["key"], self.root.cert)
        if status != 200:
            self.assertEqual(self.upstream.requests(), before, "a refused client reached the upstream")
        return status == 200, err

    def assert_outcome(self, gw, client, admitted, alert=None):
        """The handshake and check-cert agree, and both say `admitted`."""
        ok, err = self.handshake(gw, client)
        self.assertEqual(ok, admitted, f"{client['cert']}: {err}")
        if alert:
            self.assertIn(alert, err)
        code, out = check_cert(gw, client)
        self.assertEqual(code, 0 if admitted else 1, out)
        return out


class RootOnlyCrl(PolicyCase):
    """Only the root publishes a CRL: intermediates are checked against it, leaves have no CRL."""

    @classmethod
    def setUpClass(cls):
        cls.make_pki()
        cls.revoked_ca = CertificateAuthority(cls.dir, "inter2", "Policy Test Revoked Intermediate",
                                              cls.root)
        cls.write_truststore(cls.root, cls.inter, cls.revoked_ca)
        cls.good = cls.inter.issue("good", "client-good")
        cls.orphan = cls.revoked_ca.issue("orphan", "client-of-revoked-ca")
        cls.root.revoke(cls.revoked_ca.cert)
        cls.crls.files["root.crl"] = cls.root.crl()

    def config(self, on_unknown):
        return f"""revocation:
  mode: crl
  on_unknown: {on_unknown}
  crl:
    sources: [ {{ url: "{self.crls.url('root.crl')}" }} ]
"""

    def test_fail_closed(self):
        gw = self.gateway(self.config("deny"))
        out = self.assert_outcome(gw, self.good, False)
        self.assertIn("no_crl_for_issuer", out)
        self.assertIn("verdict:     refused (revocation_unknown)", out)
        self.assertGreater(denials(gw, "no_crl_for_issuer"), 0)
        self.assert_outcome(gw, self.orphan, False, alert="revoked")
        self.assertGreater(denials(gw, "revoked"), 0)

    def test_fail_open_still_refuses_the_revoked_intermediate(self):
        gw = self.gateway(self.config("allow"))
        out = self.assert_outcome(gw, self.good, True)
        self.assertIn("policy on_unknown=allow", out)
        self.assertGreater(gw.metric(
            'portcullis_revocation_unknown_allowed_total{reason="no_crl_for_issuer"}'), 0)
        out = self.assert_outcome(gw, self.orphan, False, alert="revoked")
        self.assertIn("verdict:     refused (revoked)", out)


class StaleCrl(PolicyCase):
    """The intermediate's CRL passed its nextUpdate ten minutes ago."""

    @classmethod
    def setUpClass(cls):
        cls.make_pki()
        cls.good = cls.inter.issue("good", "client-good")
        cls.revoked = cls.inter.issue("revoked", "client-revoked")
        cls.inter.revoke(cls.revoked["cert"])
        now = utc_now()
        cls.crls.files["root.crl"] = cls.root.crl()
        cls.crls.files["inter.crl"] = cls.inter.crl(last_update=now - datetime.timedelta(hours=2),
                                                    next_update=now - datetime.timedelta(minutes=10))

    def config(self, stale_grace, on_unknown="deny", issuers=""):
        return f"""revocation:
  mode: crl
  on_unknown: {on_unknown}
{issuers}  crl:
    sources: [ {{ url: "{self.crls.url('root.crl')}" }}, {{ url: "{self.crls.url('inter.crl')}" }} ]
    stale_grace: {stale_grace}
"""

    def test_within_grace_still_enforced(self):
        gw = self.gateway(self.config("1h"))
        self.assertLess(gw.metric(
            f'portcullis_crl_next_update_seconds{{source="{self.crls.url("inter.crl")}"}}'), 0)
        self.assert_outcome(gw, self.good, True)
        self.assert_outcome(gw, self.revoked, False, alert="revoked")

    def test_beyond_grace_fail_closed(self):
        gw = self.gateway(self.config("1m"), wait_ready=False)
        wait_for(lambda: (source_status(gw, self.crls.url("inter.crl")) or {}).get("loaded"),
                 what="the stale CRL to load")
        # A fail-closed issuer whose CRL is unusable: not ready.
        self.assertEqual(gw.admin("/readyz")[0], 503)
        out = self.assert_outcome(gw, self.good, False)
        self.assertIn("crl_expired", out)
        self.assertGreater(denials(gw, "crl_expired"), 0)
        self.assert_outcome(gw, self.revoked, False)

    def test_beyond_grace_fail_open_for_that_issuer(self):
        # The list is unusable, so even the certificate it names is of unknown status: the
        # issuer's policy admits both.
        issuers = '  issuers: [ { subject: "CN=Policy Test Intermediate CA", on_unknown: allow } ]\n'
        gw = self.gateway(self.config("1m", issuers=issuers))
        self.assertEqual(gw.admin("/readyz")[0], 200)
        out = self.assert_outcome(gw, self.good, True)
        self.assertIn("crl_expired), policy on_unknown=allow (issuer rule)", out)
        self.assert_outcome(gw, self.revoked, True)


class PrivateCaWithoutCrl(PolicyCase):
    """A self-signed private CA with no CDP, trusted beside a CA hierarchy that has CRLs."""

    @classmethod
    def setUpClass(cls):
        cls.make_pki()
        cls.private = self_signed_ca(cls.dir, "private", "Private Root")
        cls.write_truststore(cls.root, cls.inter, cls.private)
        cls.private_client = cls.private.issue("device", "device-1")
        cls.good = cls.inter.issue("good", "client-good")
        cls.crls.files["root.crl"] = cls.root.crl()
        cls.crls.files["inter.crl"] = cls.inter.crl()

    def config(self, issuers=""):
        return f"""revocation:
  mode: crl
  on_unknown: deny
{issuers}  crl:
    sources: [ {{ url: "{self.crls.url('root.crl')}" }}, {{ url: "{self.crls.url('inter.crl')}" }} ]
"""

    def test_refused_without_a_rule(self):
        gw = self.gateway(self.config())
        self.assert_outcome(gw, self.private_client, False)
        self.assert_outcome(gw, self.good, True)

    def test_admitted_by_subject_rule(self):
        gw = self.gateway(self.config(
            '  issuers: [ { subject: "cn=private root", on_unknown: allow } ]\n'))
        out = self.assert_outcome(gw, self.private_client, True)
        self.assertIn("(issuer rule)", out)
        self.assert_outcome(gw, self.good, True)

    def test_admitted_by_fingerprint_rule(self):
        fingerprint = sha256_fingerprint(self.private.cert)
        gw = self.gateway(self.config(
            f'  issuers: [ {{ sha256: "{fingerprint}", on_unknown: allow }} ]\n'))
        self.assert_outcome(gw, self.private_client, True)

    def test_a_rule_never_admits_a_revoked_certificate(self):
        revoked = self.inter.issue("revoked", "client-revoked")
        self.inter.revoke(revoked["cert"])
        self.crls.files["inter.crl"] = self.inter.crl()
        gw = self.gateway(self.config(
            '  issuers: [ { subject: "CN=Policy Test Intermediate CA", on_unknown: allow } ]\n'))
        self.assert_outcome(gw, revoked, False, alert="revoked")

    def test_bad_rules_are_config_errors_with_file_line_and_key(self):
        for rule, message in (
                ('{ subject: "CN=Private Root+O=x", on_unknown: allow }', "multi-valued"),
                ('{ sha256: "abc", on_unknown: allow }', "not a SHA-256 fingerprint"),
                ('{ subject: "XX=Private Root", on_unknown: allow }', "'XX' is not an attribute type"),
                ('{ subject: "CN=Private Root" }', "sets nothing: give on_unknown, mode or ocsp_responder"),
                ('{ subject: "CN=Private Root", mode: sometimes }', "'sometimes' is not one of"),
                ('{ subject: "CN=Private Root", ocsp_responder: "ftp://x" }', "is not an http:// URL"),
                ('{ subject: "CN=x", sha256: "' + "a" * 64 + '", on_unknown: deny }', "exactly one")):
            with self.subTest(rule):
                path = os.path.join(self.dir, "bad.yaml")
                with open(path, "w") as f:
                    f.write(f"""listeners:
  - name: public
    address: 127.0.0.1:1
    tls: {{ certificate: {self.server['chain']}, private_key: {self.server['key']} }}
    client_auth: {{ truststore: {self.truststore} }}
    routes: [ {{ match: {{ path_prefix: / }}, upstream: app }} ]
upstreams:
  app: {{ endpoints: ["127.0.0.1:2"] }}
revocation:
  mode: crl
  issuers:
    - {rule}
""")
                p = subprocess.run([BIN, "--check-config", "--config", path], capture_output=True,
                                   text=True, timeout=30)
                self.assertNotEqual(p.returncode, 0)
                self.assertIn("bad.yaml:12: revocation.issuers[0]", p.stderr + p.stdout)
                self.assertIn(message, p.stderr + p.stdout)


class DiscoveredFromClientCertificates(PolicyCase):
    """No configured source: the intermediate's CDP (in the truststore) and the leaves' CDPs
    (seen in handshakes) are discovered and fetched in the background."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="portcullis-crl-discover-")
        cls.crls = CrlServer()
        cls.upstream = EchoUpstream()
        cls.root = CertificateAuthority(cls.dir, "root", "Discovery Test Root CA")
        cls.inter = CertificateAuthority(cls.dir, "inter", "Discovery Test Intermediate CA", cls.root,
                                         cdp=cls.crls.url("root.crl"))
        cls.server = cls.inter.issue("server", "localhost", extensions="server")
        cls.truststore = os.path.join(cls.dir, "truststore.pem")
        cls.write_truststore(cls.root, cls.inter)
        cdp = cls.crls.url("inter.crl")
        cls.good = cls.inter.issue("good", "client-good", cdp=cdp)
        cls.revoked = cls.inter.issue("revoked", "client-revoked", cdp=cdp)
        cls.inter.revoke(cls.revoked["cert"])
        cls.crls.files["root.crl"] = cls.root.crl()
        cls.crls.files["inter.crl"] = cls.inter.crl()

    def test_leaf_cdp_is_discovered_then_enforced(self):
        gw = self.gateway("""revocation:
  mode: crl
  on_unknown: deny
  crl:
    discover: true
""")
        inter_url = self.crls.url("inter.crl")
        self.assertIsNone(source_status(gw, inter_url))
        # First sight: the leaf's issuer has no CRL yet, so fail-closed refuses it, without
        # waiting for the fetch.
        ok, _ = self.handshake(gw, self.good)
        self.assertFalse(ok)
        wait_for(lambda: (source_status(gw, inter_url) or {}).get("loaded"), timeout=20,
                 what="the discovered CRL to load")
        source = source_status(gw, inter_url)
        self.assertTrue(source["discovered"])
        self.assertIn("Discovery Test Intermediate CA", source["issuer"])
        self.assertFalse(source_status(gw, self.crls.url("root.crl"))["discovered"])
        self.assert_outcome(gw, self.good, True)
        self.assert_outcome(gw, self.revoked, False, alert="revoked")
        self.assertEqual(gw.admin("/readyz")[0], 200)


class HttpsCrlSource(PolicyCase):
    """CRLs served over https by a server whose certificate comes from the test PKI."""

    @classmethod
    def setUpClass(cls):
        cls.make_pki()
        cls.crls.stop()
        cls.crls = CrlServer(tls=(cls.server["chain"], cls.server["key"]))
        cls.good = cls.inter.issue("good", "client-good")
        cls.revoked = cls.inter.issue("revoked", "client-revoked")
        cls.inter.revoke(cls.revoked["cert"])
        cls.crls.files["root.crl"] = cls.root.crl()
        cls.crls.files["inter.crl"] = cls.inter.crl()

    def config(self, https_ca):
        return f"""revocation:
  mode: crl
  crl:
    sources: [ {{ url: "{self.crls.url('root.crl')}" }}, {{ url: "{self.crls.url('inter.crl', host='localhost')}" }} ]
{https_ca}"""

    def test_fetched_and_enforced_with_the_configured_ca(self):
        gw = self.gateway(self.config(f"    https_ca: {self.root.cert}\n"))
        source = source_status(gw, self.crls.url("inter.crl", host="localhost"))
        self.assertTrue(source["loaded"], source)
        self.assertTrue(source_status(gw, self.crls.url("root.crl"))["loaded"])
        self.assertIn("localhost", self.crls.server_names)  # SNI for names, none for addresses
        self.assert_outcome(gw, self.good, True)
        self.assert_outcome(gw, self.revoked, False, alert="revoked")
        # Conditional requests work over https too.
        before = source["not_modified"]
        http_post(f"http://127.0.0.1:{gw.admin_port}/revocation/refresh")
        wait_for(lambda: source_status(gw, self.crls.url("inter.crl", host="localhost"))["not_modified"] > before,
                 what="a 304 over https")

    def test_untrusted_server_is_a_fetch_failure(self):
        # The system store does not know the test PKI: no CRL, fail-closed, not ready.
        gw = self.gateway(self.config(""), wait_ready=False)
        url = self.crls.url("root.crl")
        wait_for(lambda: (source_status(gw, url) or {}).get("failed", 0) > 0, what="a failed fetch")
        source = source_status(gw, url)
        self.assertFalse(source["loaded"])
        self.assertIn("not trusted", source["last_error"])
        self.assertEqual(gw.admin("/readyz")[0], 503)


if __name__ == "__main__":
    unittest.main()
