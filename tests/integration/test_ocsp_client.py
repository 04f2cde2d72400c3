"""OCSP checks of client certificates against `openssl ocsp` as the responder: verdicts, the
cache and its renewal, first-sight resolution shared between connections, the modes with and
without CRL fallback, responder failures and forged answers, policy for certificates with
nowhere to ask, metrics, /status and check-cert."""

import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest

from crl_fixtures import read_text, self_signed_ca
from gateway_fixture import BIN, EchoUpstream, Gateway, curl, wait_for
from ocsp_fixtures import OcspCertificateAuthority, OcspResponder


def dead_url():
    """An http:// URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


def queries(gw, result):
    return gw.metric(f'portcullis_ocsp_queries_total{{result="{result}"}}')


class OcspClientCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="portcullis-ocsp-client-")
        cls.responder = OcspResponder()
        cls.ca = OcspCertificateAuthority(cls.dir, "ca", "OCSP Client Test CA", cls.responder.url)
        cls.responder.ca = cls.ca
        cls.server = cls.ca.issue("server", "localhost", extensions="server")
        cls.private = self_signed_ca(cls.dir, "private", "Private Root Without AIA")
        cls.truststore = os.path.join(cls.dir, "truststore.pem")
        with open(cls.truststore, "w") as f:
            f.write(read_text(cls.ca.cert) + read_text(cls.private.cert))
        cls.upstream = EchoUpstream()
        cls.serial = 0

    @classmethod
    def tearDownClass(cls):
        cls.upstream.stop()
        cls.responder.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def setUp(self):
        self.responder.mode = "ok"
        self.responder.validity = ["-ndays", "1"]
        self.responder.hold = None

    def client(self, tag, ca=None):
        """A fresh client certificate (so no earlier test's cache or revocation interferes)."""
        type(self).serial += 1
        name = f"{tag}-{self.serial}"
        ca = ca or self.ca
        return ca.issue(name, f"client-{name}",
                        extensions="client_ocsp" if ca is self.ca else "client")

    def gateway(self, revocation):
        gw = Gateway(self.server["chain"], self.server["key"], self.truststore, self.upstream.port,
                     extra="revocation:\n" + revocation)
        self.addCleanup(gw.stop)
        return gw

    def request(self, gw, client):
        """(HTTP status or None when the handshake failed, JSON body or {}); a refused client
        must have reached no upstream."""
        before = self.upstream.requests()
        _, status, body, _ = curl(gw.port, client["chain"], client["key"], self.ca.cert)
        if status != 200:
            self.assertEqual(self.upstream.requests(), before, "a refused client reached the upstream")
        try:
            return status, json.loads(body)
        except ValueError:
            return status, {}

    def check_cert(self, gw, client):
        p = subprocess.run([BIN, "check-cert", "--config", gw.config, "--cert", client["chain"]],
                           capture_output=True, text=True, timeout=60)
        return p.returncode, p.stdout + p.stderr


class VerdictTest(OcspClientCase):
    MODE = "  mode: ocsp\n  on_unknown: deny\n"

    def test_good_is_admitted_once_asked_then_cached(self):
        gw = self.gateway(self.MODE)
        client = self.client("good")
        before = self.responder.requests
        status, body = self.request(gw, client)
        self.assertEqual(status, 200)
        headers = {n.lower(): v for n, v in body["headers"]}
        self.assertEqual(headers["x-client-cert-subject"], f"CN=client-good-{self.serial}")
        self.assertEqual(self.responder.requests, before + 1)
        for _ in range(3):
            self.assertEqual(self.request(gw, client)[0], 200)
        self.assertEqual(self.responder.requests, before + 1, "a cached status needs no query")
        self.assertEqual(queries(gw, "good"), 1)
        self.assertEqual(gw.metric("portcullis_ocsp_cache_entries"), 1)
        self.assertGreaterEqual(gw.metric('portcullis_ocsp_cache_lookups_total{result="hit"}'), 3)
        self.assertGreater(gw.metric("portcullis_ocsp_cache_hit_ratio"), 0.5)
        self.assertEqual(gw.metric("portcullis_ocsp_query_duration_seconds_count"), 1)
        self.assertEqual(gw.metric(f'portcullis_ocsp_responder_up{{responder="{self.responder.url}"}}'), 1)
        ocsp = gw.status()["revocation"]["ocsp"]
        self.assertEqual(ocsp["cache_entries"], 1)
        self.assertEqual([(r["url"], r["healthy"], r["queries"]) for r in ocsp["responders"]],
                         [(self.responder.url, True, 1)])
        code, out = self.check_cert(gw, client)
        self.assertEqual(code, 0, out)
        self.assertIn("ocsp:      good, responder " + self.responder.url, out)

    def test_revoked_is_refused_and_reaches_nothing(self):
        gw = self.gateway(self.MODE)
        client = self.client("revoked")
        self.ca.revoke(client["cert"])
        status, body = self.request(gw, client)
        self.assertEqual(status, 403)
        self.assertEqual(body, {"error": "forbidden", "reason": "revoked"})
        self.assertEqual(gw.metric('portcullis_handshakes_total{result="revoked"}'), 1)
        self.assertEqual(queries(gw, "revoked"), 1)
        # Now cached: refused in the handshake itself, with no second query.
        asked = self.responder.requests
        self.assertIsNone(self.request(gw, client)[0])
        self.assertEqual(self.responder.requests, asked)
        # Counted once the alert is on its way: the client may see the refusal first.
        wait_for(lambda: gw.metric('portcullis_handshakes_total{result="revoked"}') == 2,
                 what="the refused handshake counted")
        code, out = self.check_cert(gw, client)
        self.assertEqual(code, 1, out)
        self.assertIn("ocsp:      REVOKED", out)
        self.assertIn("verdict:     refused (revoked)", out)

    def test_unknown_goes_to_the_policy(self):
        client = self.client("unknown")
        self.ca.forget(client["cert"])
        gw = self.gateway(self.MODE)
        self.assertEqual(self.request(gw, client), (403, {"error": "forbidden", "reason": "ocsp_unknown"}))
        self.assertEqual(queries(gw, "unknown"), 1)
        gw.stop()
        gw = self.gateway(self.MODE + '  issuers: [ { subject: "CN=OCSP Client Test CA", on_unknown: allow } ]\n')
        self.assertEqual(self.request(gw, client)[0], 200)

    def test_get_is_used_when_configured(self):
        gw = self.gateway(self.MODE + "  ocsp: { method: get }\n")
        first = len(self.responder.methods)
        self.assertEqual(self.request(gw, self.client("get"))[0], 200)
        self.assertEqual(self.responder.methods[first:], ["GET"])

    def test_delegated_responder_is_accepted(self):
        self.responder.delegate = self.ca.issue("delegate", "OCSP Delegate", extensions="ocsp_signer")
        self.responder.mode = "delegate"
        gw = self.gateway(self.MODE)
        self.assertEqual(self.request(gw, self.client("delegated"))[0], 200)
        self.assertEqual(queries(gw, "good"), 1)

    def test_answers_not_signed_by_the_issuer_or_a_delegate_are_rejected(self):
        signer = self.ca.issue("not-delegate", "Not An OCSP Signer", extensions="not_ocsp_signer")
        for mode in ("foreign", "not_delegate", "garbage", "error"):
            with self.subTest(mode):
                if mode == "not_delegate":
                    self.responder.mode, self.responder.delegate = "delegate", signer
                else:
                    self.responder.mode = mode
                gw = self.gateway(self.MODE)
                status, body = self.request(gw, self.client(mode.replace("_", "-")))
                self.assertEqual(status, 403)
                expected = "ocsp_unreachable" if mode == "error" else "ocsp_bad_response"
                self.assertEqual(body["reason"], expected)
                self.assertEqual(queries(gw, "good"), 0)
                self.assertEqual(queries(gw, "unreachable" if mode == "error" else "bad_response"), 1)
                gw.stop()

    def test_self_signed_ca_without_aia_follows_the_policy(self):
        client = self.client("private", ca=self.private)
        asked = self.responder.requests
        gw = self.gateway(self.MODE)
        self.assertIsNone(self.request(gw, client)[0], "nowhere to ask, on_unknown deny")
        wait_for(lambda: gw.metric('portcullis_handshakes_total{result="revocation_unknown"}') == 1,
                 what="the refused handshake counted")
        gw.stop()
        gw = self.gateway(self.MODE + '  issuers: [ { subject: "CN=Private Root Without AIA", on_unknown: allow } ]\n')
        self.assertEqual(self.request(gw, client)[0], 200)
        code, out = self.check_cert(gw, client)
        self.assertEqual(code, 0, out)
        self.assertIn("responder none (no AIA OCSP URI)", out)
        self.assertIn("admitted (unknown_allowed:no_ocsp_responder)", out)
        self.assertEqual(self.responder.requests, asked)


class FallbackTest(OcspClientCase):
    """The responder is unreachable (an issuer rule points at a closed port)."""

    def setUp(self):
        super().setUp()
        self.dead = dead_url()

    def rule(self, extra=""):
        return f'  issuers: [ {{ subject: "CN=OCSP Client Test CA", ocsp_responder: "{self.dead}"{extra} }} ]\n'

    def test_with_crl_fallback_the_crl_decides(self):
        good, revoked = self.client("fb-good"), self.client("fb-revoked")
        self.ca.revoke(revoked["cert"])
        crl = os.path.join(self.dir, f"fallback-{self.serial}.crl")
        with open(crl, "wb") as f:
            f.write(self.ca.crl())
        gw = self.gateway("  mode: ocsp_then_crl\n  on_unknown: deny\n" + self.rule() +
                          f"  crl: {{ sources: [ {{ file: {crl} }} ] }}\n")
        self.assertEqual(self.request(gw, good)[0], 200)
        self.assertNotEqual(self.request(gw, revoked)[0], 200)
        self.assertGreaterEqual(queries(gw, "unreachable"), 1)
        self.assertFalse(gw.status()["revocation"]["ocsp"]["responders"][0]["healthy"])
        self.assertEqual(gw.metric(f'portcullis_ocsp_responder_up{{responder="{self.dead}"}}'), 0)

    def test_without_fallback_the_policy_decides(self):
        client = self.client("nofb")
        gw = self.gateway("  mode: ocsp\n  on_unknown: deny\n" + self.rule())
        self.assertEqual(self.request(gw, client), (403, {"error": "forbidden", "reason": "ocsp_unreachable"}))
        gw.stop()
        gw = self.gateway("  mode: ocsp\n  on_unknown: deny\n" + self.rule(", on_unknown: allow"))
        self.assertEqual(self.request(gw, client)[0], 200)

    def test_crl_then_ocsp_asks_ocsp_only_without_a_usable_crl(self):
        client = self.client("crl-first")
        asked = self.responder.requests
        crl = os.path.join(self.dir, f"crl-first-{self.serial}.crl")
        with open(crl, "wb") as f:
            f.write(self.ca.crl())
        gw = self.gateway(f"  mode: crl_then_ocsp\n  crl: {{ sources: [ {{ file: {crl} }} ] }}\n")
        self.assertEqual(self.request(gw, client)[0], 200)
        self.assertEqual(self.responder.requests, asked, "the CRL answered: OCSP is not asked")
        gw.stop()
        gw = self.gateway("  mode: crl_then_ocsp\n")
        self.assertEqual(self.request(gw, client)[0], 200)
        self.assertEqual(self.responder.requests, asked + 1, "no CRL: OCSP is asked")

    def test_a_hanging_responder_is_bounded_by_the_timeout(self):
        self.responder.mode = "hang"
        self.responder.release.clear()
        gw = self.gateway("  mode: ocsp\n  ocsp: { timeout: 1s }\n")
        started = time.monotonic()
        status, body = self.request(gw, self.client("hang"))
        self.assertEqual((status, body.get("reason")), (403, "ocsp_unreachable"))
        self.assertLess(time.monotonic() - started, 8)
        self.assertEqual(queries(gw, "timeout"), 1)
        self.responder.release.set()


class SharingAndRenewalTest(OcspClientCase):
    def test_concurrent_first_sight_connections_share_one_query(self):
        client = self.client("crowd")
        gw = self.gateway("  mode: ocsp\n  ocsp: { timeout: 20s }\n")
        self.responder.hold = threading.Event()
        asked, forwarded = self.responder.requests, self.upstream.requests()
        results = []

        def one():
            results.append(self.request(gw, client)[0])

        threads = [threading.Thread(target=one) for _ in range(50)]
        for t in threads:
            t.start()
        # Every connection is in: each has finished its handshake and waits for the answer.
        wait_for(lambda: gw.metric("portcullis_connections_active") >= 50, timeout=30,
                 what="50 connections waiting for the OCSP answer")
        self.assertEqual(self.upstream.requests(), forwarded, "nothing is forwarded while waiting")
        self.responder.hold.set()
        for t in threads:
            t.join(30)
        self.assertEqual(results, [200] * 50)
        self.assertEqual(self.responder.requests, asked + 1)
        self.assertEqual(queries(gw, "good"), 1)

    def test_recently_seen_statuses_are_renewed_and_a_revocation_takes_effect(self):
        # No nextUpdate: each status lives min_ttl (2s); renewal runs before it lapses.
        self.responder.validity = []
        client = self.client("renewed")
        gw = self.gateway("  mode: ocsp\n  ocsp: { min_ttl: 2s, refresh_recent: 1h }\n")
        asked = self.responder.requests
        context = ssl.create_default_context(cafile=self.ca.cert)
        context.load_cert_chain(client["chain"], client["key"])
        kept = http.client.HTTPSConnection("127.0.0.1", gw.port, context=context, timeout=10)
        self.addCleanup(kept.close)
        kept.request("GET", "/first")
        first = kept.getresponse()
        first.read()
        self.assertEqual(first.status, 200)
        wait_for(lambda: self.responder.requests >= asked + 3, timeout=20,
                 what="background renewals with no traffic")
        self.assertEqual(self.request(gw, client)[0], 200)
        before = self.upstream.requests()
        self.ca.revoke(client["cert"])
        wait_for(lambda: queries(gw, "revoked") >= 1, timeout=20, what="the renewal to see the revocation")
        asked = self.responder.requests
        self.assertIsNone(self.request(gw, client)[0], "refused in the handshake from the cache")
        # The keep-alive connection admitted before is refused at its next request.
        kept.request("GET", "/second")
        response = kept.getresponse()
        self.assertEqual((response.status, json.loads(response.read())),
                         (403, {"error": "forbidden", "reason": "revoked"}))
        self.assertEqual(self.upstream.requests(), before)
        self.assertLessEqual(self.responder.requests, asked + 1)


class CacheBoundsTest(OcspClientCase):
    def test_max_ttl_caps_a_long_next_update(self):
        client = self.client("capped")  # answers say nextUpdate in a day
        gw = self.gateway("  mode: ocsp\n  ocsp: { min_ttl: 1s, max_ttl: 2s, refresh_recent: 0s }\n")
        asked = self.responder.requests
        self.assertEqual(self.request(gw, client)[0], 200)
        self.assertEqual(self.request(gw, client)[0], 200)
        self.assertEqual(self.responder.requests, asked + 1)
        cached_at = time.monotonic()
        wait_for(lambda: time.monotonic() > cached_at + 2.5, interval=0.2, what="max_ttl to pass")
        self.assertEqual(self.request(gw, client)[0], 200)
        self.assertEqual(self.responder.requests, asked + 2, "asked again after max_ttl")

    def test_max_entries_bounds_the_cache(self):
        gw = self.gateway("  mode: ocsp\n  ocsp: { max_entries: 2 }\n")
        clients = [self.client(f"bounded{i}") for i in range(4)]
        for client in clients:
            self.assertEqual(self.request(gw, client)[0], 200, gw.stderr()[-3000:])
            self.assertLessEqual(gw.metric("portcullis_ocsp_cache_entries"), 2)
        asked = self.responder.requests
        self.assertEqual(self.request(gw, clients[-1])[0], 200)
        self.assertEqual(self.responder.requests, asked, "the most recent status is kept")
        self.assertEqual(self.request(gw, clients[0])[0], 200)
        self.assertEqual(self.responder.requests, asked + 1, "the least recent was dropped")


class IntermediateTest(unittest.TestCase):
    """root -> intermediate -> client, a responder per CA; the root's is set by an issuer rule
    (the intermediate's certificate has no AIA)."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="portcullis-ocsp-chain-")
        cls.root_responder, cls.inter_responder = OcspResponder(), OcspResponder()
        cls.root = OcspCertificateAuthority(cls.dir, "root", "OCSP Chain Root", cls.root_responder.url)
        cls.inter = OcspCertificateAuthority(cls.dir, "inter", "OCSP Chain Intermediate",
                                             cls.inter_responder.url, parent=cls.root)
        cls.root_responder.ca, cls.inter_responder.ca = cls.root, cls.inter
        cls.server = cls.root.issue("server", "localhost", extensions="server")
        cls.client = cls.inter.issue("client", "chain-client", extensions="client_ocsp")
        cls.upstream = EchoUpstream()

    @classmethod
    def tearDownClass(cls):
        cls.upstream.stop()
        cls.root_responder.stop()
        cls.inter_responder.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def status(self, check_intermediates):
        gw = Gateway(self.server["chain"], self.server["key"], self.root.cert, self.upstream.port,
                     extra=f"""revocation:
  mode: ocsp
  issuers: [ {{ subject: "CN=OCSP Chain Root", ocsp_responder: "{self.root_responder.url}" }} ]
  ocsp: {{ check_intermediates: {str(check_intermediates).lower()} }}
""")
        try:
            _, status, body, _ = curl(gw.port, self.client["chain"], self.client["key"], self.root.cert)
            return status, body
        finally:
            gw.stop()

    def test_intermediates_are_asked_about_only_when_configured(self):
        self.assertEqual(self.status(True)[0], 200)
        self.assertEqual((self.root_responder.requests, self.inter_responder.requests), (1, 1))
        self.root.revoke(self.inter.cert)
        before = self.upstream.requests()
        status, body = self.status(True)
        self.assertEqual((status, json.loads(body)["reason"]), (403, "revoked"))
        self.assertEqual(self.upstream.requests(), before)
        asked = self.root_responder.requests
        self.assertEqual(self.status(False)[0], 200, "only the leaf is asked about by default")
        self.assertEqual(self.root_responder.requests, asked)


class ResumptionTest(OcspClientCase):
    def test_a_session_resumed_after_an_ocsp_revocation_is_refused(self):
        self.responder.validity = []  # statuses live min_ttl, renewed in the background
        client = self.client("resumed")
        gw = self.gateway("  mode: ocsp\n  ocsp: { min_ttl: 2s }\n")
        context = ssl.create_default_context(cafile=self.ca.cert)
        context.load_cert_chain(client["chain"], client["key"])
        context.maximum_version = ssl.TLSVersion.TLSv1_2  # the session is known at once

        def one(session=None):
            with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as raw:
                with context.wrap_socket(raw, server_hostname="localhost", session=session) as conn:
                    conn.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    data = b""
                    while chunk := conn.recv(65536):
                        data += chunk
                    return data.decode(errors="replace"), conn.session, conn.session_reused

        first, session, _ = one()
        self.assertIn(" 200 ", first.split("\r\n", 1)[0])
        again, _, reused = one(session)
        self.assertTrue(reused)
        self.assertIn(" 200 ", again.split("\r\n", 1)[0])
        self.ca.revoke(client["cert"])
        wait_for(lambda: queries(gw, "revoked") >= 1, timeout=20, what="the renewal to see the revocation")
        before = self.upstream.requests()
        refused, _, reused = one(session)
        self.assertTrue(reused, "the session resumes, and is then refused")
        self.assertIn(" 403 ", refused.split("\r\n", 1)[0])
        self.assertIn('"reason":"revoked"', refused)
        self.assertEqual(self.upstream.requests(), before)


class ExpiryTest(OcspClientCase):
    """nextUpdate one minute ahead (the finest `openssl ocsp` offers): this class waits for it."""

    def test_cached_good_is_asked_again_after_next_update_and_stale_answers_are_not_trusted(self):
        self.responder.validity = ["-nmin", "1"]
        client, replayed = self.client("expiring"), self.client("replayed")
        # Renewal off, so the only new query is the one a connection makes after nextUpdate.
        gw = self.gateway("  mode: ocsp\n  ocsp: { min_ttl: 1s, clock_skew: 0s, refresh_recent: 0s }\n")
        stale = self.responder.response_for(replayed["cert"])
        asked = self.responder.requests
        self.assertEqual(self.request(gw, client)[0], 200)
        self.ca.revoke(client["cert"])
        self.assertEqual(self.request(gw, client)[0], 200, "cached good until nextUpdate")
        self.assertEqual(self.responder.requests, asked + 1)
        next_update = time.time() + 60
        wait_for(lambda: time.time() > next_update + 1.5, timeout=90, interval=0.5,
                 what="the cached answer's nextUpdate to pass")
        status, body = self.request(gw, client)
        self.assertEqual((status, body.get("reason")), (403, "revoked"))
        self.assertEqual(self.responder.requests, asked + 2)
        # A pre-signed answer whose nextUpdate has passed, replayed by the responder.
        self.responder.mode, self.responder.replay_body = "replay", stale
        status, body = self.request(gw, replayed)
        self.assertEqual((status, body.get("reason")), (403, "ocsp_bad_response"))
        self.assertEqual(queries(gw, "bad_response"), 1)


if __name__ == "__main__":
    unittest.main()
