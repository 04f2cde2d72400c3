"""OCSP fixtures: a CA whose certificates name an OCSP responder in their Authority Information
Access, and that responder: an HTTP server on 127.0.0.1 answering each request (POST, or GET
per RFC 6960 A.1) by running `openssl ocsp -index` once (so the CA's index is read fresh every
time), with switches for the failure modes a checker must survive."""

import base64
import http.server
import os
import subprocess
import tempfile
import threading
import urllib.parse

from crl_fixtures import CA_CONFIG, CertificateAuthority, run


class OcspResponder:
    """Answers for CA with `openssl ocsp`. `mode`: ok | garbage | error (HTTP 500) | foreign
    (signed by a key unrelated to the CA) | delegate (signed by `delegate`, a responder
    certificate the CA issued) | hang (answers nothing until `release` is set) | replay (sends
    `replay_body`, whatever was asked). `validity` is the `openssl ocsp` arguments that set
    nextUpdate (none: no nextUpdate). With `hold` set to an Event, every answer waits for it."""

    def __init__(self):
        self.ca = None
        self.mode = "ok"
        self.validity = ["-ndays", "1"]
        self.delegate = None  # {"cert": ..., "key": ...}
        self.replay_body = b""
        self.hold = None
        self.release = threading.Event()
        self.requests = 0
        self.methods = []
        self.dir = tempfile.mkdtemp(prefix="portcullis-ocsp-")
        self.foreign_key = os.path.join(self.dir, "foreign.key")
        self.foreign_cert = os.path.join(self.dir, "foreign.pem")
        run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", self.foreign_key, "-out", self.foreign_cert, "-days", "30",
            "-subj", "/CN=Unrelated OCSP Signer")
        lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, method, body):
                with lock:
                    server.requests += 1
                    server.methods.append(method)
                if server.hold is not None:
                    server.hold.wait(30)
                if server.mode == "hang":
                    server.release.wait(30)
                    return
                with lock:
                    status, answer = server.answer(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/ocsp-response")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def do_POST(self):
                self.reply("POST", self.rfile.read(int(self.headers.get("Content-Length", "0"))))

            def do_GET(self):
                encoded = urllib.parse.unquote(self.path.lstrip("/"))
                self.reply("GET", base64.b64decode(encoded))

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, request):
        if self.mode == "error":
            return 500, b""
        if self.mode == "garbage":
            return 200, b"this is not an OCSP response" * 4
        if self.mode == "replay":
            return 200, self.replay_body
        req = os.path.join(self.dir, "req.der")
        resp = os.path.join(self.dir, "resp.der")
        with open(req, "wb") as f:
            f.write(request)
        signer, key = self.ca.cert, self.ca.key
        if self.mode == "foreign":
            signer, key = self.foreign_cert, self.foreign_key
        elif self.mode == "delegate":
            signer, key = self.delegate["cert"], self.delegate["key"]
        run("openssl", "ocsp", "-index", os.path.join(self.ca.dir, "index.txt"), "-rsigner",
            signer, "-rkey", key, "-CA", self.ca.cert, "-reqin", req, "-respout", resp,
            *self.validity)
        with open(resp, "rb") as f:
            return 200, f.read()

    def response_for(self, cert):
        """A response for CERT as the responder would sign it now, asked without a nonce (what a
        replayed, pre-signed answer looks like)."""
        req = os.path.join(self.dir, "replay-req.der")
        run("openssl", "ocsp", "-issuer", self.ca.cert, "-cert", cert, "-no_nonce", "-reqout", req)
        with open(req, "rb") as f:
            return self.answer(f.read())[1]

    def stop(self):
        self.release.set()
        if self.hold is not None:
            self.hold.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class OcspCertificateAuthority(CertificateAuthority):
    """Issues "server_ocsp" and "client_ocsp" certificates (the server or client profile plus an
    AIA OCSP URI), and "ocsp_signer" (a delegated responder: id-kp-OCSPSigning) or
    "not_ocsp_signer" (the same without that EKU) certificates."""

    SIGNER = ("basicConstraints = CA:FALSE\nkeyUsage = critical,digitalSignature\n"
              "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n")

    def __init__(self, base, name, common_name, ocsp_url, parent=None):
        self.ocsp_url = ocsp_url
        super().__init__(base, name, common_name, parent)

    def extension_args(self, section, cdp):
        if section in ("ocsp_signer", "not_ocsp_signer"):
            body = self.SIGNER + ("extendedKeyUsage = OCSPSigning\n" if section == "ocsp_signer"
                                  else "extendedKeyUsage = clientAuth\n")
        elif section in ("server_ocsp", "client_ocsp"):
            profile = section.split("_")[0]
            body = CA_CONFIG.split(f"[ {profile} ]\n", 1)[1].split("\n[", 1)[0]
            body += f"\nauthorityInfoAccess = OCSP;URI:{self.ocsp_url}\n"
        else:
            return super().extension_args(section, cdp)
        path = os.path.join(self.dir, f"ext-{section}.cnf")
        with open(path, "w") as f:
            f.write(f"[ ext ]\n{body}")
        return ["-extfile", path, "-extensions", "ext"]

    def forget(self, cert_path):
        """Drops CERT from the CA's index, so the responder answers "unknown" for it."""
        serial = run("openssl", "x509", "-in", cert_path, "-noout", "-serial").stdout
        serial = serial.strip().split("=", 1)[1].upper()
        index = os.path.join(self.dir, "index.txt")
        with open(index) as f:
            lines = [line for line in f if line.split("\t")[3].upper() != serial]
        with open(index, "w") as f:
            f.writelines(lines)


def s_client_status(port, client):
    """`openssl s_client -status` output (stdout) for a handshake with the client certificate."""
    p = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
         "-status", "-cert", client["cert"], "-key", client["key"]],
        input="", capture_output=True, text=True, timeout=15)
    return p.stdout
