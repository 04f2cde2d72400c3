"""CRL revocation end to end: `openssl ca` revokes, a real HTTP server publishes the CRLs, the
real gateway enforces them, curl and Python's ssl module are the clients."""

import io
import os
import shutil
import subprocess
import socket
import ssl
import tempfile
import threading
import unittest

from crl_fixtures import CertificateAuthority, CrlServer, read_text, with_bad_signature
from gateway_fixture import BIN, EchoUpstream, Gateway, curl, http_post, wait_for


def check_cert(gateway, client):
    p = subprocess.run([BIN, "check-cert", "--config", gateway.config, "--cert", client["chain"]],
                       capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout + p.stderr


class Pki:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="portcullis-crl-pki-")
        self.root = CertificateAuthority(self.dir, "root", "CRL Test Root CA")
        self.inter = CertificateAuthority(self.dir, "inter", "CRL Test Intermediate CA", self.root)
        self.inter2 = CertificateAuthority(self.dir, "inter2", "CRL Test Second Intermediate", self.root)
        self.server = self.inter.issue("server", "localhost", extensions="server")
        self.truststore = os.path.join(self.dir, "truststore.pem")
        with open(self.truststore, "w") as f:
            for ca in (self.root, self.inter, self.inter2):
                f.write(read_text(ca.cert))

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def crl_source_status(gateway, url):
    for source in gateway.status()["revocation"]["sources"]:
        if source["source"] == url:
            return source
    raise AssertionError(f"no source {url} in /status")


def refresh_and_wait(gateway, url, changed):
    """Forces a fetch and waits until `changed(source_status)` holds."""
    assert http_post(f"http://127.0.0.1:{gateway.admin_port}/revocation/refresh")[0] == 202
    wait_for(lambda: changed(crl_source_status(gateway, url)), timeout=20, what=f"refresh of {url}")
    return crl_source_status(gateway, url)


def fetch_count(source):
    return source["fetched"] + source["not_modified"] + source["failed"] + source["rejected"]


def read_response(conn):
    """One HTTP/1.1 response with a Content-Length body from a socket; "" when it closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data.decode(errors="replace")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return (head + b"\r\n\r\n" + body).decode(errors="replace")


class CrlEnforcement(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pki = Pki()
        pki = cls.pki
        cls.good = pki.inter.issue("good", "client-good")
        cls.revoked = pki.inter.issue("revoked", "client-revoked")
        cls.later = pki.inter.issue("later", "client-revoked-later")
        cls.kept = pki.inter.issue("kept", "client-keepalive")
        cls.under_revoked_ca = pki.inter2.issue("orphan", "client-of-revoked-ca")
        pki.inter.revoke(cls.revoked["cert"])
        pki.root.revoke(pki.inter2.cert)
        cls.crls = CrlServer()
        cls.crls.files["root.crl"] = pki.root.crl()
        cls.crls.files["inter.crl"] = pki.inter.crl()
        cls.crls.files["inter2.crl"] = pki.inter2.crl()
        cls.upstream = EchoUpstream()
        cls.cache = tempfile.mkdtemp(prefix="portcullis-crl-cache-")
        cls.inter_url = cls.crls.url("inter.crl")
        cls.gateway = Gateway(pki.server["chain"], pki.server["key"], pki.truststore, cls.upstream.port,
                              extra=f"""revocation:
  mode: crl
  on_unknown: deny
  crl:
    sources: [ {{ url: "{cls.crls.url('root.crl')}" }}, {{ url: "{cls.inter_url}" }}, {{ url: "{cls.crls.url('inter2.crl')}" }} ]
    refresh_interval: 1h
    stale_grace: 1h
    cache_dir: {cls.cache}
    fetch_timeout: 2s
""")

    @classmethod
    def tearDownClass(cls):
        cls.gateway.stop()
        cls.upstream.stop()
        cls.crls.stop()
        shutil.rmtree(cls.cache, ignore_errors=True)
        cls.pki.cleanup()

    def request(self, client, path="/"):
        return curl(self.gateway.port, client["chain"], client["key"], self.pki.root.cert, path=path)

    def assert_refused(self, client, alert="revoked"):
        before = self.upstream.requests()
        code, status, _, err = self.request(client)
        self.assertNotEqual(code, 0, "the handshake should have been refused")
        self.assertIsNone(status)
        self.assertIn(alert, err)
        self.assertEqual(self.upstream.requests(), before, "the upstream must see nothing")

    def test_good_client_admitted(self):
        code, status, body, err = self.request(self.good)
        self.assertEqual((code, status), (0, 200), err)
        self.assertIn("client-good", body)

    def test_revoked_leaf_refused_with_certificate_revoked_alert(self):
        before = self.gateway.metric('portcullis_handshakes_total{result="revoked"}')
        self.assert_refused(self.revoked, "revoked")
        wait_for(lambda: self.gateway.metric('portcullis_handshakes_total{result="revoked"}') > before,
                 what="the refused handshake counted")

    def test_revoked_intermediate_refuses_its_leaves(self):
        self.assert_refused(self.under_revoked_ca, "revoked")

    def test_check_cert_agrees_with_the_handshake(self):
        for client, admitted in ((self.good, True), (self.revoked, False), (self.under_revoked_ca, False)):
            with self.subTest(client["cert"]):
                code, out = check_cert(self.gateway, client)
                handshake = self.request(client)[1] == 200
                self.assertEqual(handshake, admitted)
                self.assertEqual(code, 0 if admitted else 1, out)
                if not admitted:
                    self.assertIn("verdict:     refused (revoked)", out)

    def test_status_lists_every_source(self):
        source = crl_source_status(self.gateway, self.inter_url)
        self.assertTrue(source["loaded"])
        self.assertGreaterEqual(source["entries"], 1)
        self.assertIn("CRL Test Intermediate CA", source["issuer"])
        self.assertTrue(source["next_update"])
        self.assertEqual(self.gateway.admin("/readyz")[0], 200)

    def test_z_revocation_published_while_running_takes_effect(self):
        hits = 'portcullis_tls_chain_cache_lookups_total{listener="public",result="hit"}'
        self.assertEqual(self.request(self.later)[1], 200)
        self.assertEqual(self.request(self.later)[1], 200)
        before = self.gateway.metric(hits)
        self.assertGreaterEqual(before, 1, "the second handshake found the verified chain")
        old = crl_source_status(self.gateway, self.inter_url)["crl_number"]
        self.pki.inter.revoke(self.later["cert"])
        self.crls.files["inter.crl"] = self.pki.inter.crl()
        refresh_and_wait(self.gateway, self.inter_url, lambda s: s["crl_number"] != old)
        self.assert_refused(self.later, "revoked")
        # Refused though its chain came from the verified chain cache: revocation is checked for
        # every handshake.
        self.assertEqual(self.gateway.metric(hits), before + 1)
        self.assertEqual(self.request(self.good)[1], 200)

    def test_z_keepalive_connection_of_newly_revoked_client_is_cut_off(self):
        context = ssl.create_default_context(cafile=self.pki.root.cert)
        context.load_cert_chain(self.kept["chain"], self.kept["key"])
        with socket.create_connection(("127.0.0.1", self.gateway.port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as conn:
                request = f"GET /first HTTP/1.1\r\nHost: localhost:{self.gateway.port}\r\n\r\n".encode()
                conn.sendall(request)
                first = read_response(conn)
                self.assertIn("200", first.split("\r\n", 1)[0])
                old = crl_source_status(self.gateway, self.inter_url)["crl_number"]
                self.pki.inter.revoke(self.kept["cert"])
                self.crls.files["inter.crl"] = self.pki.inter.crl()
                refresh_and_wait(self.gateway, self.inter_url, lambda s: s["crl_number"] != old)
                before = self.upstream.requests()
                conn.sendall(request.replace(b"/first", b"/second"))
                try:
                    second = read_response(conn)
                except (ConnectionError, ssl.SSLError):
                    second = ""
                self.assertNotIn(" 200 ", second.split("\r\n", 1)[0] if second else "")
                if second:
                    self.assertIn("403", second.split("\r\n", 1)[0])
                    self.assertIn("revoked", second)
                self.assertEqual(self.upstream.requests(), before)

    def test_bad_crls_never_replace_the_good_one(self):
        source = crl_source_status(self.gateway, self.inter_url)
        good_number = source["crl_number"]
        older = self.crls.files["inter.crl"]
        foreign = CertificateAuthority(self.pki.dir, "foreign", "CRL Test Intermediate CA")  # same name, other key
        unrelated = CertificateAuthority(self.pki.dir, "unrelated", "CRL Test Unrelated CA")
        cases = {
            "garbage": ("garbage", None, "malformed CRL"),
            "not found": ("404", None, "HTTP 404"),
            "server error": ("500", None, "HTTP 500"),
            "oversized": ("oversized", None, "larger than"),
            "hanging": ("hang", None, "timeout"),
            "wrong key, same issuer name": ("ok", foreign.crl(), "signature"),
            "bad signature": ("ok", with_bad_signature(older), "bad CRL signature"),
            "issuer not in the truststore": ("ok", unrelated.crl(), "no CA in the truststore"),
            "another trusted CA's CRL": ("ok", self.pki.inter2.crl(), "whose CRLs this source publishes"),
        }
        try:
            for name, (mode, body, error) in cases.items():
                with self.subTest(name):
                    before = crl_source_status(self.gateway, self.inter_url)
                    self.crls.mode = mode
                    if body is not None:
                        self.crls.files["inter.crl"] = body
                    # Waits for this case's failure, not any failure: a retry the previous case's
                    # failure scheduled may still be in flight (a hanging fetch ends only at its
                    # deadline) and be counted after `before` was read.
                    after = refresh_and_wait(
                        self.gateway, self.inter_url,
                        lambda s: s["failed"] + s["rejected"] > before["failed"] + before["rejected"]
                        and error in s["last_error"])
                    self.assertIn(error, after["last_error"])
                    self.assertEqual(after["crl_number"], good_number)
                    # check-cert meets the same bad CRL and, like the gateway, keeps the last
                    # good one (from the cache directory).
                    code, out = check_cert(self.gateway, self.revoked)
                    self.assertEqual(code, 1, out)
                    self.assertIn("verdict:     refused (revoked)", out)
                    code, out = check_cert(self.gateway, self.good)
                    self.assertEqual(code, 0, out)
                    self.crls.mode = "ok"
                    self.crls.files["inter.crl"] = older
                    self.assert_refused(self.revoked, "revoked")
                    self.assertEqual(self.request(self.good)[1], 200)
        finally:
            self.crls.mode = "ok"
            self.crls.files["inter.crl"] = older

    def test_refresh_asked_for_during_a_fetch_is_not_lost(self):
        # The CRL server holds its answer to one fetch, as it stood when the request arrived,
        # while a newer CRL is published and a refresh is asked for. That fetch then succeeds with
        # the old CRL; the refresh asked for meanwhile must still fetch the newer one, not wait
        # for the next refresh_interval (1h).
        refresh = f"http://127.0.0.1:{self.gateway.admin_port}/revocation/refresh"
        old_number = crl_source_status(self.gateway, self.inter_url)["crl_number"]
        newer = self.pki.inter.crl()
        arrived, release = threading.Event(), threading.Event()
        held = []
        handler = self.crls.httpd.RequestHandlerClass

        class HoldOneAnswer(handler):
            def do_GET(self):
                if self.path != "/inter.crl" or held:
                    return super().do_GET()
                held.append(self.path)
                real, self.wfile = self.wfile, io.BytesIO()
                super().do_GET()
                answer, self.wfile = self.wfile.getvalue(), real
                arrived.set()
                release.wait(10)
                self.wfile.write(answer)

        self.crls.httpd.RequestHandlerClass = HoldOneAnswer
        try:
            self.assertEqual(http_post(refresh)[0], 202)
            self.assertTrue(arrived.wait(20), "the refresh fetched the CRL")
            self.crls.files["inter.crl"] = newer
            self.assertEqual(http_post(refresh)[0], 202)
        finally:
            release.set()
            self.crls.httpd.RequestHandlerClass = handler
        wait_for(lambda: crl_source_status(self.gateway, self.inter_url)["crl_number"] != old_number,
                 timeout=20, what="the CRL published during a fetch")
        self.assert_refused(self.revoked, "revoked")

    def test_unchanged_crl_is_answered_304(self):
        # The first fetch may see a changed body (other tests swap it); the second cannot.
        before = crl_source_status(self.gateway, self.inter_url)
        refresh_and_wait(self.gateway, self.inter_url, lambda s: fetch_count(s) > fetch_count(before))
        before = crl_source_status(self.gateway, self.inter_url)
        after = refresh_and_wait(self.gateway, self.inter_url, lambda s: fetch_count(s) > fetch_count(before))
        self.assertEqual(after["not_modified"], before["not_modified"] + 1)
        self.assertTrue(after["etag"])

    def test_older_crl_number_is_rejected(self):
        # A replay of an older CRL, correctly signed by the right CA, must not roll revocations back.
        older = self.crls.files["inter.crl"]
        old_number = crl_source_status(self.gateway, self.inter_url)["crl_number"]
        newer = self.pki.inter.crl()
        self.crls.files["inter.crl"] = newer
        try:
            held = refresh_and_wait(self.gateway, self.inter_url, lambda s: s["crl_number"] != old_number)
            self.crls.files["inter.crl"] = older
            after = refresh_and_wait(self.gateway, self.inter_url, lambda s: s["rejected"] > held["rejected"])
            self.assertIn("older", after["last_error"])
            self.assertEqual(after["crl_number"], held["crl_number"])
        finally:
            self.crls.files["inter.crl"] = newer
        self.assert_refused(self.revoked, "revoked")


class RestartWithCrlServerDown(unittest.TestCase):
    def test_cached_crl_is_enforced_after_restart(self):
        pki = Pki()
        crls = CrlServer()
        upstream = EchoUpstream()
        cache = tempfile.mkdtemp(prefix="portcullis-crl-cache-")
        try:
            good = pki.inter.issue("good", "client-good")
            revoked = pki.inter.issue("revoked", "client-revoked")
            pki.inter.revoke(revoked["cert"])
            crls.files["root.crl"] = pki.root.crl()
            crls.files["inter.crl"] = pki.inter.crl()
            config = f"""revocation:
  mode: crl
  crl:
    sources: [ {{ url: "{crls.url('root.crl')}" }}, {{ url: "{crls.url('inter.crl')}" }} ]
    cache_dir: {cache}
"""
            first = Gateway(pki.server["chain"], pki.server["key"], pki.truststore, upstream.port, extra=config)
            first.stop()
            self.assertEqual(len(os.listdir(cache)), 2)
            crls.mode = "500"
            second = Gateway(pki.server["chain"], pki.server["key"], pki.truststore, upstream.port, extra=config)
            try:
                code, status, _, err = curl(second.port, revoked["chain"], revoked["key"], pki.root.cert)
                self.assertIsNone(status)
                self.assertIn("revoked", err)
                self.assertEqual(curl(second.port, good["chain"], good["key"], pki.root.cert)[1], 200)
            finally:
                second.stop()
        finally:
            upstream.stop()
            crls.stop()
            shutil.rmtree(cache, ignore_errors=True)
            pki.cleanup()


class PolicyWithoutCrl(unittest.TestCase):
    """Only the root publishes a CRL: the leaf's issuer has none, so its status is unknown."""

    @classmethod
    def setUpClass(cls):
        cls.pki = Pki()
        cls.good = cls.pki.inter.issue("good", "client-good")
        cls.crls = CrlServer()
        cls.crls.files["root.crl"] = cls.pki.root.crl()
        cls.upstream = EchoUpstream()

    @classmethod
    def tearDownClass(cls):
        cls.upstream.stop()
        cls.crls.stop()
        cls.pki.cleanup()

    def gateway(self, on_unknown):
        return Gateway(self.pki.server["chain"], self.pki.server["key"], self.pki.truststore, self.upstream.port,
                       extra=f"""revocation:
  mode: crl
  on_unknown: {on_unknown}
  crl:
    sources: [ {{ url: "{self.crls.url('root.crl')}" }} ]
""")

    def test_fail_closed_refuses(self):
        gw = self.gateway("deny")
        try:
            before = self.upstream.requests()
            code, status, _, err = curl(gw.port, self.good["chain"], self.good["key"], self.pki.root.cert)
            self.assertIsNone(status)
            self.assertEqual(self.upstream.requests(), before)
            wait_for(lambda: gw.metric('portcullis_handshakes_total{result="revocation_unknown"}') > 0,
                     what="the refused handshake counted")
            code, out = check_cert(gw, self.good)
            self.assertEqual(code, 1, out)
            self.assertIn("revocation_unknown", out)
        finally:
            gw.stop()

    def test_fail_open_admits(self):
        gw = self.gateway("allow")
        try:
            code, status, _, err = curl(gw.port, self.good["chain"], self.good["key"], self.pki.root.cert)
            self.assertEqual(status, 200, err)
            code, out = check_cert(gw, self.good)
            self.assertEqual(code, 0, out)
        finally:
            gw.stop()


class Readiness(unittest.TestCase):
    def test_not_ready_while_fail_closed_source_has_no_crl(self):
        pki = Pki()
        crls = CrlServer()
        upstream = EchoUpstream()
        try:
            crls.mode = "404"
            gw = Gateway(pki.server["chain"], pki.server["key"], pki.truststore, upstream.port, wait_ready=False,
                         extra=f"""revocation:
  mode: crl
  crl:
    sources: [ {{ url: "{crls.url('root.crl')}" }} ]
""")
            try:
                wait_for(lambda: crls.requests > 0, what="a CRL fetch")
                self.assertEqual(gw.admin("/readyz")[0], 503)
                crls.files["root.crl"] = pki.root.crl()
                crls.mode = "ok"
                http_post(f"http://127.0.0.1:{gw.admin_port}/revocation/refresh")
                wait_for(lambda: gw.admin("/readyz")[0] == 200, what="/readyz after the CRL arrived")
            finally:
                gw.stop()
        finally:
            upstream.stop()
            crls.stop()
            pki.cleanup()


if __name__ == "__main__":
    unittest.main()
