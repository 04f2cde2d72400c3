"""Resumed TLS sessions never bypass revocation or a trust change: a client revoked after its
session was established cannot resume it (TLS 1.3 tickets naming a session in the gateway's
cache, the default; stateless tickets with shared keys; session ids, TLS 1.2), and a session
from before a truststore change gets a full handshake instead of resuming."""

import os
import shutil
import socket
import ssl
import tempfile
import unittest

from crl_fixtures import CertificateAuthority, CrlServer
from gateway_fixture import EchoUpstream, Gateway, http_post, wait_for
from test_crl_revocation import crl_source_status, read_response, refresh_and_wait


class Pki:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="portcullis-resume-pki-")
        self.root = CertificateAuthority(self.dir, "root", "Resumption Test Root CA")
        self.inter = CertificateAuthority(self.dir, "inter", "Resumption Test Intermediate CA", self.root)
        self.server = self.inter.issue("server", "localhost", extensions="server")
        self.truststore = os.path.join(self.dir, "truststore.pem")
        with open(self.truststore, "w") as out:
            for ca in (self.root, self.inter):
                with open(ca.cert) as f:
                    out.write(f.read())

    def context(self, client, tls12=False):
        context = ssl.create_default_context(cafile=self.root.cert)
        context.load_cert_chain(client["chain"], client["key"])
        if tls12:
            context.maximum_version = ssl.TLSVersion.TLSv1_2
        return context

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def exchange(context, port, session=None):
    """One request on a new connection: (status line or "" when refused, session, reused)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost", session=session) as conn:
                conn.sendall(f"GET /resume HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n".encode())
                response = read_response(conn)
                return response.split("\r\n", 1)[0], conn.session, conn.session_reused
        except (ssl.SSLError, ConnectionError):
            return "", None, None


class ResumptionHonoursRevocation(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pki = Pki()
        cls.crls = CrlServer()
        cls.crls.files["inter.crl"] = cls.pki.inter.crl()
        cls.crls.files["root.crl"] = cls.pki.root.crl()
        cls.url = cls.crls.url("inter.crl")
        cls.upstream = EchoUpstream()

    @classmethod
    def tearDownClass(cls):
        cls.upstream.stop()
        cls.crls.stop()
        cls.pki.cleanup()

    def ticket_keys(self):
        keys = os.path.join(self.pki.dir, "tickets.keys")
        if not os.path.exists(keys):
            with open(keys, "w") as f:
                f.write(__import__("base64").b64encode(os.urandom(80)).decode() + "\n")
        return keys

    def start(self, tls_extra="", truststore=None):
        gateway = Gateway(self.pki.server["chain"], self.pki.server["key"], truststore or self.pki.truststore,
                          self.upstream.port, tls_extra=tls_extra, extra=f"""revocation:
  mode: crl
  on_unknown: deny
  crl:
    sources: [ {{ url: "{self.crls.url('root.crl')}" }}, {{ url: "{self.url}" }} ]
    refresh_interval: 1h
""")
        self.addCleanup(gateway.stop)
        return gateway

    def revoke_and_publish(self, gateway, client):
        old = crl_source_status(gateway, self.url)["crl_number"]
        self.pki.inter.revoke(client["cert"])
        self.crls.files["inter.crl"] = self.pki.inter.crl()
        refresh_and_wait(gateway, self.url, lambda s: s["crl_number"] != old)

    def assert_resumption_refused_after_revocation(self, name, tls_extra, tls12):
        client = self.pki.inter.issue(name, name)
        gateway = self.start(tls_extra)
        context = self.pki.context(client, tls12)
        status, session, reused = exchange(context, gateway.port)
        self.assertIn("200", status)
        # The session resumes while the client is good: the test exercises real resumption.
        status, session, reused = exchange(context, gateway.port, session)
        self.assertIn("200", status)
        self.assertTrue(reused, "the session should resume before the revocation")

        self.revoke_and_publish(gateway, client)
        before = self.upstream.requests()
        revoked_before = gateway.metric('portcullis_handshakes_total{result="revoked"}')
        status, _, _ = exchange(context, gateway.port, session)
        self.assertNotIn("200", status, "a revoked client must not resume its session")
        self.assertEqual(self.upstream.requests(), before, "the upstream must see nothing")
        wait_for(lambda: gateway.metric('portcullis_handshakes_total{result="revoked"}') == revoked_before + 1,
                 what="the refused handshake counted")

    def test_ticket_resumption_after_revocation_is_refused(self):
        # The default without shared keys: the TLS 1.3 ticket names a session in the cache.
        self.assert_resumption_refused_after_revocation("ticket-client", "", tls12=False)

    def test_stateless_ticket_resumption_after_revocation_is_refused(self):
        self.assert_resumption_refused_after_revocation(
            "stateless-client", f", session_ticket_keys: {self.ticket_keys()}", tls12=False)

    def test_session_id_resumption_after_revocation_is_refused(self):
        # TLS 1.2: resumption by session id from the server-side cache.
        self.assert_resumption_refused_after_revocation("session-id-client", ", session_tickets: false",
                                                        tls12=True)

    def assert_checked_again_only_when_revocation_data_changed(self, name, tls_extra, tls12, restamps):
        client = self.pki.inter.issue(name, name)
        gateway = self.start(tls_extra)
        context = self.pki.context(client, tls12)
        stamped = 'portcullis_resumed_handshakes_total{revocation="stamp"}'
        checked = 'portcullis_resumed_handshakes_total{revocation="checked"}'
        _, session, _ = exchange(context, gateway.port)
        status, session, reused = exchange(context, gateway.port, session)
        self.assertIn("200", status)
        self.assertTrue(reused)
        # Nothing changed since the session was made: its stamp settles revocation.
        self.assertEqual((gateway.metric(stamped), gateway.metric(checked)), (1, 0))

        # New revocation data that does not name this client: the next resumption checks the
        # chain again and is admitted.
        old = crl_source_status(gateway, self.url)["crl_number"]
        other = self.pki.inter.issue(name + "-other", name + "-other")
        self.pki.inter.revoke(other["cert"])
        self.crls.files["inter.crl"] = self.pki.inter.crl()
        refresh_and_wait(gateway, self.url, lambda s: s["crl_number"] != old)
        status, session, reused = exchange(context, gateway.port, session)
        self.assertIn("200", status)
        self.assertTrue(reused)
        self.assertEqual((gateway.metric(stamped), gateway.metric(checked)), (1, 1))
        status, session, reused = exchange(context, gateway.port, session)
        self.assertIn("200", status)
        self.assertTrue(reused)
        if restamps:
            # The ticket that resumption got carries the new data's stamp.
            self.assertEqual((gateway.metric(stamped), gateway.metric(checked)), (2, 1))
        else:
            # A TLS 1.2 session id keeps its session, and the session its old stamp.
            self.assertEqual((gateway.metric(stamped), gateway.metric(checked)), (1, 2))
        counts = (gateway.metric(stamped), gateway.metric(checked))
        cached = gateway.metric('portcullis_tls_session_cache_sessions{listener="public"}')
        if "session_ticket_keys" in tls_extra:
            self.assertEqual(cached, 0, "stateless tickets keep nothing in the gateway")
        else:
            # The first session, and one for each ticket made after a resumption (TLS 1.3).
            self.assertEqual(cached, 1 if tls12 else 4)

        # A revocation after that stamp was made is still caught on resumption, and the refused
        # session leaves the cache.
        self.revoke_and_publish(gateway, client)
        status, _, _ = exchange(context, gateway.port, session)
        self.assertNotIn("200", status)
        self.assertEqual((gateway.metric(stamped), gateway.metric(checked)), counts)
        if "session_ticket_keys" not in tls_extra:
            self.assertEqual(gateway.metric('portcullis_tls_session_cache_sessions{listener="public"}'),
                             cached - (1 if tls12 else 0))

    def test_a_resumed_session_is_checked_again_only_when_revocation_data_changed(self):
        self.assert_checked_again_only_when_revocation_data_changed("stamp-client", "", False, True)

    def test_a_stateless_ticket_is_checked_again_only_when_revocation_data_changed(self):
        self.assert_checked_again_only_when_revocation_data_changed(
            "stamp-stateless", f", session_ticket_keys: {self.ticket_keys()}", False, True)

    def test_a_session_id_is_checked_again_only_when_revocation_data_changed(self):
        self.assert_checked_again_only_when_revocation_data_changed("stamp-tls12", "", True, False)

    def test_the_session_cache_keeps_at_most_its_size(self):
        client = self.pki.inter.issue("cache-size", "cache-size")
        gateway = self.start(", session_cache_size: 3")
        context = self.pki.context(client)
        sessions = []
        for _ in range(6):
            status, session, _ = exchange(context, gateway.port)
            self.assertIn("200", status)
            sessions.append(session)
        gauge = 'portcullis_tls_session_cache_sessions{listener="public"}'
        # OpenSSL 3.0 makes room before it counts the new session in: size − 1 once full.
        self.assertIn(gateway.metric(gauge), (2, 3))
        # The newest sessions are kept; the oldest went first.
        self.assertTrue(exchange(context, gateway.port, sessions[-1])[2], "the newest session resumes")
        self.assertFalse(exchange(context, gateway.port, sessions[0])[2], "the oldest was evicted")

    def test_no_cache_and_no_tickets_means_no_resumption(self):
        client = self.pki.inter.issue("no-resume", "no-resume")
        gateway = self.start(", session_tickets: false, session_cache_size: 0")
        for tls12 in (False, True):
            context = self.pki.context(client, tls12)
            status, session, _ = exchange(context, gateway.port)
            self.assertIn("200", status)
            status, _, reused = exchange(context, gateway.port, session)
            self.assertIn("200", status)
            self.assertFalse(reused, f"nothing to resume from (TLS 1.2: {tls12})")

    def test_a_truststore_change_forces_a_full_handshake(self):
        client = self.pki.inter.issue("trust-change", "trust-change")
        truststore = os.path.join(self.pki.dir, "live-truststore.pem")
        shutil.copy(self.pki.truststore, truststore)
        # Shared ticket keys survive the reload, so only the trust binding can refuse the ticket.
        gateway = self.start(f", session_ticket_keys: {self.ticket_keys()}", truststore=truststore)
        context = self.pki.context(client)
        _, session, _ = exchange(context, gateway.port)
        status, session, reused = exchange(context, gateway.port, session)
        self.assertTrue(reused, "resumes while the trust configuration is unchanged")

        other = CertificateAuthority(self.pki.dir, "other", "Resumption Test Other CA")
        with open(truststore, "a") as out, open(other.cert) as f:
            out.write(f.read())
        self.assertEqual(http_post(f"http://127.0.0.1:{gateway.admin_port}/reload")[0], 200)
        status, _, reused = exchange(context, gateway.port, session)
        self.assertIn("200", status, "a full handshake still admits the client")
        self.assertFalse(reused, "a session from before the truststore change must not resume")


if __name__ == "__main__":
    unittest.main()
