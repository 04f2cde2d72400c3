"""OCSP stapling of the gateway's own certificate, against `openssl ocsp` as the responder."""

import os
import shutil
import tempfile
import unittest

from gateway_fixture import Gateway, free_port, wait_for
from ocsp_fixtures import OcspCertificateAuthority, OcspResponder, s_client_status

STAPLED = "OCSP Response Status: successful"
GOOD = "Cert Status: good"
NOTHING = "OCSP response: no response sent"
VALID = 'portcullis_ocsp_staple_valid{listener="public"}'


def fetches(result):
    return f'portcullis_ocsp_staple_fetches_total{{listener="public",result="{result}"}}'


class OcspStaplingTest(unittest.TestCase):
    def setUp(self):
        self.base = tempfile.mkdtemp(prefix="portcullis-staple-")
        self.responder = OcspResponder()
        self.ca = OcspCertificateAuthority(self.base, "ca", "Stapling Test CA", self.responder.url)
        self.responder.ca = self.ca
        self.server = self.ca.issue("server", "localhost", extensions="server_ocsp")
        self.client = self.ca.issue("client", "client-1")
        self.gateway = None

    def tearDown(self):
        if self.gateway:
            self.gateway.stop()
        self.responder.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def start(self, stapling="enabled: true"):
        self.gateway = Gateway(self.server["chain"], self.server["key"], self.ca.cert, free_port(),
                               tls_extra=f", ocsp_stapling: {{ {stapling} }}")
        return self.gateway

    def test_good_response_is_stapled_and_reported(self):
        gw = self.start()
        wait_for(lambda: gw.metric(VALID) == 1, what="a good staple")
        out = s_client_status(gw.port, self.client)
        self.assertIn(STAPLED, out)
        self.assertIn(GOOD, out)
        self.assertGreaterEqual(gw.metric(fetches("success")), 1)
        self.assertGreater(gw.metric('portcullis_ocsp_staple_next_update_seconds{listener="public"}'), 3600)
        stapling = gw.status()["listeners"][0]["ocsp_stapling"]
        self.assertTrue(stapling["valid"])
        self.assertEqual(stapling["responder"], self.responder.url)
        self.assertIsNotNone(stapling["next_update"])
        self.assertEqual(stapling["last_error"], "")

    def test_stapling_off_by_default(self):
        self.gateway = Gateway(self.server["chain"], self.server["key"], self.ca.cert, free_port())
        self.assertIn(NOTHING, s_client_status(self.gateway.port, self.client))
        self.assertEqual(self.responder.requests, 0)

    def test_garbage_response_is_never_stapled(self):
        self.responder.mode = "garbage"
        gw = self.start()
        wait_for(lambda: gw.metric(fetches("rejected")) >= 1, what="a rejected response")
        self.assertIn(NOTHING, s_client_status(gw.port, self.client))
        self.assertEqual(gw.metric(VALID), 0)
        self.assertIn("not a DER OCSP response",
                      gw.status()["listeners"][0]["ocsp_stapling"]["last_error"])

    def test_response_signed_by_unrelated_key_is_never_stapled(self):
        self.responder.mode = "foreign"
        gw = self.start()
        wait_for(lambda: gw.metric(fetches("rejected")) >= 1, what="a rejected response")
        out = s_client_status(gw.port, self.client)
        self.assertIn(NOTHING, out)
        self.assertNotIn(STAPLED, out)
        self.assertIn("signature not trusted",
                      gw.status()["listeners"][0]["ocsp_stapling"]["last_error"])

    def test_response_from_a_delegated_responder_is_stapled(self):
        self.responder.delegate = self.ca.issue("delegate", "OCSP Delegate", extensions="ocsp_signer")
        self.responder.mode = "delegate"
        gw = self.start()
        wait_for(lambda: gw.metric(VALID) == 1, what="a good staple signed by the delegate")
        out = s_client_status(gw.port, self.client)
        self.assertIn(STAPLED, out)
        self.assertIn(GOOD, out)

    def test_response_from_a_certificate_without_ocsp_signing_is_never_stapled(self):
        self.responder.delegate = self.ca.issue("not-delegate", "Not A Delegate",
                                                extensions="not_ocsp_signer")
        self.responder.mode = "delegate"
        gw = self.start()
        wait_for(lambda: gw.metric(fetches("rejected")) >= 1, what="a rejected response")
        self.assertIn(NOTHING, s_client_status(gw.port, self.client))
        self.assertEqual(gw.metric(VALID), 0)

    def test_revoked_server_certificate_is_never_stapled(self):
        self.ca.revoke(self.server["cert"])
        gw = self.start()
        wait_for(lambda: gw.metric(fetches("rejected")) >= 1, what="a rejected response")
        self.assertIn(NOTHING, s_client_status(gw.port, self.client))
        self.assertIn("revoked", gw.status()["listeners"][0]["ocsp_stapling"]["last_error"])

    def test_last_good_response_kept_when_responder_fails(self):
        gw = self.start("enabled: true, refresh: 1s")
        wait_for(lambda: gw.metric(VALID) == 1, what="a good staple")
        self.responder.mode = "error"
        wait_for(lambda: gw.metric(fetches("failed")) >= 1, what="a failed refresh")
        self.responder.mode = "garbage"
        wait_for(lambda: gw.metric(fetches("rejected")) >= 1, what="a rejected refresh")
        out = s_client_status(gw.port, self.client)
        self.assertIn(STAPLED, out)
        self.assertIn(GOOD, out)
        self.assertEqual(gw.metric(VALID), 1)

    def test_prefetched_response_file_is_stapled(self):
        self.responder.mode = "ok"
        der = self.responder.answer(open_request(self.ca, self.server, self.base))[1]
        path = os.path.join(self.base, "staple.der")
        with open(path, "wb") as f:
            f.write(der)
        requests = self.responder.requests
        gw = self.start(f"enabled: true, file: {path}")
        wait_for(lambda: gw.metric(VALID) == 1, what="the file's response")
        self.assertIn(GOOD, s_client_status(gw.port, self.client))
        self.assertEqual(self.responder.requests, requests)


def open_request(ca, server, base):
    """A DER OCSP request for SERVER, made by `openssl ocsp`."""
    from crl_fixtures import run
    path = os.path.join(base, "file-req.der")
    run("openssl", "ocsp", "-issuer", ca.cert, "-cert", server["cert"], "-no_nonce", "-reqout", path)
    with open(path, "rb") as f:
        return f.read()


if __name__ == "__main__":
    unittest.main()
