"""Operations end to end: session ticket keys shared by two gateway processes (and rotated),
service-manager notifications over a real NOTIFY_SOCKET, reloads under load, a reload that fails
validation, and a server certificate rotation seen by new connections only."""

import base64
import hashlib
import os
import shutil
import signal
import socket
import ssl
import tempfile
import threading
import time
import unittest

from crl_fixtures import CertificateAuthority
from gateway_fixture import EchoUpstream, Gateway, curl, http_post, wait_for
from test_crl_revocation import crl_source_status, read_response


def new_ticket_key():
    return base64.b64encode(os.urandom(80)).decode()


class Pki:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="portcullis-ops-pki-")
        self.root = CertificateAuthority(self.dir, "root", "Ops Test Root CA")
        self.inter = CertificateAuthority(self.dir, "inter", "Ops Test Intermediate CA", self.root)
        self.server = self.inter.issue("server", "localhost", extensions="server")
        self.server_next = self.inter.issue("server-next", "localhost", extensions="server")
        self.client = self.inter.issue("client", "client-ops")
        self.truststore = os.path.join(self.dir, "truststore.pem")
        with open(self.truststore, "w") as f:
            for ca in (self.root, self.inter):
                with open(ca.cert) as c:
                    f.write(c.read())

    def client_context(self):
        context = ssl.create_default_context(cafile=self.root.cert)
        context.load_cert_chain(self.client["chain"], self.client["key"])
        return context

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def get(context, port, path="/", session=None):
    """One request on a fresh TLS connection: (status line, session, reused, server cert DER)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost", session=session) as conn:
            conn.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n".encode())
            response = read_response(conn)
            return (response.split("\r\n", 1)[0], conn.session, conn.session_reused,
                    conn.getpeercert(binary_form=True))


def fingerprint(der):
    return hashlib.sha256(der).hexdigest()


def file_fingerprint(pem_path):
    with open(pem_path) as f:
        return fingerprint(ssl.PEM_cert_to_DER_cert(f.read()))


class SessionTicketKeys(unittest.TestCase):
    """Two gateway processes that share a ticket key file resume each other's sessions."""

    @classmethod
    def setUpClass(cls):
        cls.pki = Pki()
        cls.upstream = EchoUpstream()
        cls.keys = os.path.join(cls.pki.dir, "tickets.keys")
        cls.first_key = new_ticket_key()
        with open(cls.keys, "w") as f:
            f.write(f"# current key first\n{cls.first_key}\n")
        tls = f", session_ticket_keys: {cls.keys}, min_version: \"1.3\""
        cls.a = Gateway(cls.pki.server["chain"], cls.pki.server["key"], cls.pki.truststore,
                        cls.upstream.port, tls_extra=tls)
        cls.b = Gateway(cls.pki.server["chain"], cls.pki.server["key"], cls.pki.truststore,
                        cls.upstream.port, tls_extra=tls)

    @classmethod
    def tearDownClass(cls):
        cls.a.stop()
        cls.b.stop()
        cls.upstream.stop()
        cls.pki.cleanup()

    def reload(self, gateway):
        status, body = http_post(f"http://127.0.0.1:{gateway.admin_port}/reload")
        self.assertEqual(status, 200, body)

    def ticket_from_a(self, context):
        status, session, reused, _ = get(context, self.a.port)
        self.assertIn("200", status)
        self.assertFalse(reused)
        self.assertIsNotNone(session)
        return session

    def test_1_a_ticket_from_one_process_resumes_on_the_other(self):
        context = self.pki.client_context()
        session = self.ticket_from_a(context)
        before = self.upstream.requests()
        status, _, reused, _ = get(context, self.b.port, session=session)
        self.assertIn("200", status)
        self.assertTrue(reused, "the second gateway should resume the first one's session")
        self.assertEqual(self.upstream.requests(), before + 1)

    def test_2_a_ticket_under_a_retired_key_still_decrypts_during_rotation(self):
        context = self.pki.client_context()
        session = self.ticket_from_a(context)
        with open(self.keys, "w") as f:
            f.write(f"{new_ticket_key()}\n{self.first_key}\n")
        self.reload(self.b)
        status, _, reused, _ = get(context, self.b.port, session=session)
        self.assertIn("200", status)
        self.assertTrue(reused, "the old key still decrypts while it is listed")

    def test_3_a_ticket_under_a_removed_key_gets_a_full_handshake(self):
        context = self.pki.client_context()
        with open(self.keys, "w") as f:
            f.write(f"{self.first_key}\n")
        self.reload(self.a)
        session = self.ticket_from_a(context)
        with open(self.keys, "w") as f:
            f.write(f"{new_ticket_key()}\n")
        self.reload(self.b)
        status, _, reused, _ = get(context, self.b.port, session=session)
        self.assertIn("200", status, "a full handshake still admits the client")
        self.assertFalse(reused, "a ticket under a removed key must not resume")

    def test_4_a_bad_key_file_is_refused_with_its_line(self):
        with open(self.keys, "w") as f:
            f.write(f"{self.first_key}\nnot-a-key\n")
        status, body = http_post(f"http://127.0.0.1:{self.b.admin_port}/reload")
        self.assertEqual(status, 400)
        self.assertIn(f"{self.keys}:2", body)
        self.assertIn("session_ticket_keys", body)
        self.assertIn("200", get(self.pki.client_context(), self.b.port)[0], "the old config serves on")


class NotifySocket:
    """A unix datagram socket standing in for systemd's notification socket."""

    def __init__(self, directory):
        self.path = os.path.join(directory, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages = []

    def collect(self):
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except (socket.timeout, BlockingIOError):
                return self.messages

    def saw(self, assignment):
        return any(assignment in m.split("\n") for m in self.collect())

    def close(self):
        self.sock.close()


class Lifecycle(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pki = Pki()
        cls.upstream = EchoUpstream()

    @classmethod
    def tearDownClass(cls):
        cls.upstream.stop()
        cls.pki.cleanup()

    def start(self, **kwargs):
        gateway = Gateway(self.pki.server["chain"], self.pki.server["key"], self.pki.truststore,
                          self.upstream.port, **kwargs)
        self.addCleanup(gateway.stop)
        return gateway

    def test_service_manager_hears_ready_reloading_and_stopping(self):
        notify = NotifySocket(self.pki.dir)
        self.addCleanup(notify.close)
        os.environ["NOTIFY_SOCKET"] = notify.path
        try:
            gateway = self.start()
        finally:
            del os.environ["NOTIFY_SOCKET"]
        wait_for(lambda: notify.saw("READY=1"), timeout=10, what="READY=1")
        self.assertTrue(any(m.startswith("READY=1") and "STATUS=serving" in m for m in notify.messages))
        notify.messages.clear()
        self.assertEqual(http_post(f"http://127.0.0.1:{gateway.admin_port}/reload")[0], 200)
        wait_for(lambda: notify.saw("READY=1"), timeout=10, what="READY=1 after the reload")
        reloading = [i for i, m in enumerate(notify.messages) if "RELOADING=1" in m.split("\n")]
        ready = [i for i, m in enumerate(notify.messages) if "READY=1" in m.split("\n")]
        self.assertTrue(reloading and ready and reloading[0] < ready[-1], notify.messages)
        self.assertTrue(any(line.startswith("MONOTONIC_USEC=") for line in notify.messages[reloading[0]].split("\n")))
        self.assertEqual(gateway.stop(), 0)
        self.assertTrue(notify.saw("STOPPING=1"))

    def test_twenty_reloads_under_load_lose_no_request(self):
        gateway = self.start()
        context = self.pki.client_context()
        results = {"ok": 0, "failed": []}
        stop = threading.Event()

        def record(status):
            if "200" in status:
                results["ok"] += 1
            else:
                results["failed"].append(status)

        def new_connections():
            deadline = time.monotonic() + 120
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    record(get(context, gateway.port, "/load")[0])
                except (OSError, ssl.SSLError) as e:
                    results["failed"].append(repr(e))

        def keep_alive():
            # One connection for the whole run: accepted under the first configuration, it must
            # keep being served across every reload.
            deadline = time.monotonic() + 120
            request = f"GET /kept HTTP/1.1\r\nHost: localhost:{gateway.port}\r\n\r\n".encode()
            try:
                with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as raw:
                    with context.wrap_socket(raw, server_hostname="localhost") as conn:
                        while not stop.is_set() and time.monotonic() < deadline:
                            conn.sendall(request)
                            record(read_response(conn).split("\r\n", 1)[0])
            except (OSError, ssl.SSLError) as e:
                results["failed"].append(repr(e))

        threads = [threading.Thread(target=new_connections), threading.Thread(target=keep_alive)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: results["ok"] >= 5, timeout=20, what="load to start")
            for i in range(20):
                served = results["ok"]
                status, body = http_post(f"http://127.0.0.1:{gateway.admin_port}/reload")
                self.assertEqual(status, 200, body)
                # Each reload is followed by requests served under the new configuration.
                wait_for(lambda: results["ok"] >= served + 2, timeout=20, what=f"requests after reload {i}")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        print(f"reloads: 20, requests served meanwhile: {results['ok']}, failed: {len(results['failed'])}")
        self.assertEqual(results["failed"], [])
        self.assertGreaterEqual(gateway.metric('portcullis_config_reloads_total{result="ok"}'), 20)

    def test_one_io_thread_accepts_itself_serves_across_a_reload_and_drains(self):
        # With one io thread, that thread accepts for itself (from a copy of the listening
        # socket) rather than being handed connections.
        gateway = self.start(io_threads=1, shutdown_grace="10s")
        context = self.pki.client_context()
        for i in range(5):
            self.assertIn("200", get(context, gateway.port, f"/new/{i}")[0])
        raw = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
        kept = context.wrap_socket(raw, server_hostname="localhost")
        self.addCleanup(kept.close)
        request = f"GET /kept HTTP/1.1\r\nHost: localhost:{gateway.port}\r\n\r\n".encode()
        kept.sendall(request)
        self.assertIn("200", read_response(kept).split("\r\n", 1)[0])
        status, body = http_post(f"http://127.0.0.1:{gateway.admin_port}/reload")
        self.assertEqual(status, 200, body)
        kept.sendall(request)
        self.assertIn("200", read_response(kept).split("\r\n", 1)[0])
        self.assertIn("200", get(context, gateway.port, "/after-reload")[0])
        self.assertEqual(gateway.metric("portcullis_connections_accepted_total"), 7)
        # SIGTERM: the idle keep-alive connection is closed and the process exits cleanly well
        # within its 10 s grace, its port closed. (GracefulShutdown checks, with one io thread
        # too, that no connection is accepted while a request is still in flight.)
        gateway.proc.send_signal(signal.SIGTERM)
        self.assertEqual(kept.recv(1024), b"")
        self.assertEqual(gateway.proc.wait(9), 0)
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", gateway.port), timeout=5).close()

    def test_invalid_reload_keeps_serving_the_old_configuration(self):
        gateway = self.start()
        with open(gateway.config) as f:
            good = f.read()
        with open(gateway.config, "w") as f:
            f.write(good.replace("handshake_timeout: 5s", "handshake_timeout: soon"))
        status, body = http_post(f"http://127.0.0.1:{gateway.admin_port}/reload")
        self.assertEqual(status, 400)
        self.assertIn("handshake_timeout", body)
        self.assertIn("handshake_timeout", gateway.status()["last_reload_error"])
        self.assertGreaterEqual(gateway.metric('portcullis_config_reloads_total{result="failed"}'), 1)
        self.assertIn("200", get(self.pki.client_context(), gateway.port)[0])
        self.assertEqual(gateway.admin("/readyz")[0], 200)

    def test_changed_files_are_reloaded_without_a_signal_when_watching(self):
        live_dir = tempfile.mkdtemp(prefix="portcullis-ops-watch-", dir=self.pki.dir)
        chain = os.path.join(live_dir, "server-chain.pem")
        key = os.path.join(live_dir, "server.key")
        shutil.copy(self.pki.server["chain"], chain)
        shutil.copy(self.pki.server["key"], key)
        gateway = Gateway(chain, key, self.pki.truststore, self.upstream.port,
                          runtime_extra=", watch_interval: 100ms")
        self.addCleanup(gateway.stop)
        context = self.pki.client_context()
        self.assertEqual(fingerprint(get(context, gateway.port)[3]), file_fingerprint(self.pki.server["cert"]))
        # A certificate and key replaced on disk, with no signal and no admin call.
        shutil.copy(self.pki.server_next["key"], key + ".new")
        shutil.copy(self.pki.server_next["chain"], chain + ".new")
        os.replace(key + ".new", key)
        os.replace(chain + ".new", chain)
        new = file_fingerprint(self.pki.server_next["cert"])
        wait_for(lambda: fingerprint(get(context, gateway.port)[3]) == new, timeout=20,
                 what="the new certificate served after the files changed")
        self.assertEqual(gateway.metric('portcullis_config_reloads_total{result="ok"}'), 1)
        # A broken edit is refused like any reload, once, and the gateway serves on.
        with open(gateway.config) as f:
            good = f.read()
        with open(gateway.config, "w") as f:
            f.write(good.replace("handshake_timeout: 5s", "handshake_timeout: soon"))
        wait_for(lambda: gateway.metric('portcullis_config_reloads_total{result="failed"}') == 1,
                 timeout=20, what="the broken edit noticed")
        self.assertIn("200", get(context, gateway.port)[0])

    def test_certificate_rotation_reaches_new_connections_only(self):
        live_dir = tempfile.mkdtemp(prefix="portcullis-ops-cert-", dir=self.pki.dir)
        chain = os.path.join(live_dir, "server-chain.pem")
        key = os.path.join(live_dir, "server.key")
        shutil.copy(self.pki.server["chain"], chain)
        shutil.copy(self.pki.server["key"], key)
        gateway = Gateway(chain, key, self.pki.truststore, self.upstream.port)
        self.addCleanup(gateway.stop)
        old, new = file_fingerprint(self.pki.server["cert"]), file_fingerprint(self.pki.server_next["cert"])
        context = self.pki.client_context()
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as conn:
                request = f"GET /kept HTTP/1.1\r\nHost: localhost:{gateway.port}\r\n\r\n".encode()
                conn.sendall(request)
                self.assertIn("200", read_response(conn).split("\r\n", 1)[0])
                self.assertEqual(fingerprint(conn.getpeercert(binary_form=True)), old)

                shutil.copy(self.pki.server_next["chain"], chain)
                shutil.copy(self.pki.server_next["key"], key)
                self.assertEqual(http_post(f"http://127.0.0.1:{gateway.admin_port}/reload")[0], 200)

                self.assertEqual(fingerprint(get(context, gateway.port)[3]), new, "new connections see the new certificate")
                conn.sendall(request)
                self.assertIn("200", read_response(conn).split("\r\n", 1)[0], "the open connection keeps working")
                self.assertEqual(fingerprint(conn.getpeercert(binary_form=True)), old)


class RevocationOnReload(unittest.TestCase):
    """A reload re-reads local CRL files at once and verifies CRLs against the new truststore;
    a reload that changes the revocation settings is refused, not half applied."""

    def setUp(self):
        self.pki = Pki()
        self.addCleanup(self.pki.cleanup)
        self.upstream = EchoUpstream()
        self.addCleanup(self.upstream.stop)
        # A second CA, not trusted at first, whose CRL is already a configured source.
        self.partner = CertificateAuthority(self.pki.dir, "partner", "Ops Test Partner CA")
        self.partner_good = self.partner.issue("partner-good", "partner-good")
        self.partner_revoked = self.partner.issue("partner-revoked", "partner-revoked")
        self.partner.revoke(self.partner_revoked["cert"])
        self.partner_crl = os.path.join(self.pki.dir, "partner.crl")
        self.inter_crl = os.path.join(self.pki.dir, "inter.crl")
        self.later = self.pki.inter.issue("later", "client-revoked-later")
        for ca, path in ((self.partner, self.partner_crl), (self.pki.inter, self.inter_crl)):
            with open(path, "wb") as f:
                f.write(ca.crl())
        self.truststore = os.path.join(self.pki.dir, "live-truststore.pem")
        shutil.copy(self.pki.truststore, self.truststore)
        self.revocation = f"""revocation:
  mode: crl
  on_unknown: allow
  crl:
    sources: [ {{ file: {self.inter_crl} }}, {{ file: {self.partner_crl} }} ]
    refresh_interval: 1h
"""
        self.gateway = Gateway(self.pki.server["chain"], self.pki.server["key"], self.truststore,
                               self.upstream.port, extra=self.revocation)
        self.addCleanup(self.gateway.stop)
        # With on_unknown: allow the gateway is ready before its CRLs are read: the tests below
        # start from the CRL files as they are now.
        wait_for(lambda: crl_source_status(self.gateway, self.inter_crl)["loaded"],
                 what="the intermediate's CRL file read")

    def reload(self):
        return http_post(f"http://127.0.0.1:{self.gateway.admin_port}/reload")

    def status_of(self, client):
        return curl(self.gateway.port, client["chain"], client["key"], self.pki.root.cert)[1]

    def test_a_local_crl_file_is_read_again_on_reload(self):
        self.assertEqual(self.status_of(self.later), 200)
        old = crl_source_status(self.gateway, self.inter_crl)["crl_number"]
        self.pki.inter.revoke(self.later["cert"])
        with open(self.inter_crl, "wb") as f:
            f.write(self.pki.inter.crl())
        self.assertEqual(self.reload()[0], 200)
        wait_for(lambda: crl_source_status(self.gateway, self.inter_crl)["crl_number"] != old,
                 timeout=20, what="the CRL file read again")
        self.assertIsNone(self.status_of(self.later), "revoked by the CRL file read on reload")

    def test_crls_of_a_ca_added_by_reload_are_verified_and_enforced(self):
        source = crl_source_status(self.gateway, self.partner_crl)
        self.assertFalse(source["loaded"], "the partner CA is not trusted yet")
        self.assertIsNone(self.status_of(self.partner_good))
        with open(self.truststore, "a") as out, open(self.partner.cert) as ca:
            out.write(ca.read())
        self.assertEqual(self.reload()[0], 200)
        wait_for(lambda: crl_source_status(self.gateway, self.partner_crl)["loaded"], timeout=20,
                 what="the partner CRL verified against the new truststore")
        self.assertEqual(self.status_of(self.partner_good), 200)
        before = self.upstream.requests()
        self.assertIsNone(self.status_of(self.partner_revoked))
        self.assertEqual(self.upstream.requests(), before)

    def test_a_reload_that_changes_revocation_settings_is_refused(self):
        with open(self.gateway.config) as f:
            text = f.read()
        with open(self.gateway.config, "w") as f:
            f.write(text.replace("on_unknown: allow", "on_unknown: deny"))
        status, body = self.reload()
        self.assertEqual(status, 400)
        self.assertIn("revocation settings changed; restart", body)
        self.assertIn("revocation settings changed", self.gateway.status()["last_reload_error"])
        self.assertEqual(self.gateway.status()["revocation"]["on_unknown"], "allow")


if __name__ == "__main__":
    unittest.main()
