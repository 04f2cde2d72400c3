#!/usr/bin/env python3
"""portcullis, NGINX and HAProxy side by side on 127.0.0.1 (started by bench/run-peers.sh).

One PKI (a P-256 root; an intermediate that issues the client certificates, which clients send
with their intermediate; ECDSA P-256 and RSA-2048 server certificates), one upstream (the
built-in echo upstream, plain HTTP) and the same worker count for every gateway, each run from
a scratch directory as the invoking user. In every round each scenario is run by every gateway
in turn before the next scenario starts; every figure is the median over the rounds, and each
goal the median of the rounds' own ratios. portcullis-bench measures:

  full mTLS handshakes (ECDSA P-256 and RSA-2048 server certificate), resumed handshakes
  (TLS 1.3 tickets), keep-alive requests with 1 KiB responses, p99 latency at half of each
  gateway's own keep-alive peak (open loop) against the upstream reached directly at the same
  rate, CRLs of 0 / 100k / 1M entries (handshakes, load and reload time, memory), and the RSS
  of 10,000 idle mTLS connections.

Server CPU time (user + sys of every process of the gateway, from /proc, over the run) per
operation is reported beside each wall-clock rate: other processes on a shared machine change
the rates, much less the CPU time. The crypto floor comes from `openssl speed`.

Writes results.json and results.md (and chart.dat for bench/chart.gp) to --out.
Standard library only; every wait is bounded.
"""

import argparse
import asyncio
import json
import os
import platform
import pwd
import resource
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from crl_scale import CA_EXT, ROOT, free_port, http, log, run, wait_for  # noqa: E402

GATEWAYS = ("portcullis", "nginx", "haproxy")
IDENTITY_HEADER = "x-client-cert-subject"


# --- /proc -------------------------------------------------------------------------------------

def proc_cpu_s(pids):
    """user + sys CPU seconds of these processes (all their threads)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError):
            pass
    return total


def proc_status_kib(pid, key="VmRSS"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


# --- PKI ---------------------------------------------------------------------------------------



class Pki:
    """root → intermediate → clients; root → servers (ec, rsa); CRLs of both CAs."""

    def __init__(self, d, crl_bench):
        self.d, self.crl_bench = d, crl_bench
        os.makedirs(d, exist_ok=True)
        ext = self.p("ext.cnf")
        with open(ext, "w") as f:
            f.write(CA_EXT)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        run("openssl", "req", "-x509", *ec, "-nodes", "-keyout", self.p("root.key"), "-out",
            self.p("root.pem"), "-days", "30", "-subj", "/O=portcullis bench/CN=Root CA",
            "-config", ext, "-extensions", "v3_ca")
        issued = (("int", ec, "root", "v3_ca", "/O=portcullis bench/CN=Client CA"),
                  ("server-ec", ec, "root", "server", "/CN=localhost"),
                  ("server-rsa", ["-newkey", "rsa:2048"], "root", "server", "/CN=localhost"),
                  ("client", ec, "int", "client", "/O=portcullis bench/CN=client"),
                  ("client-revoked", ec, "int", "client", "/O=portcullis bench/CN=revoked"))
        for name, key, issuer, section, subj in issued:
            run("openssl", "req", "-new", *key, "-nodes", "-keyout", self.p(f"{name}.key"),
                "-out", self.p(f"{name}.csr"), "-subj", subj)
            run("openssl", "x509", "-req", "-in", self.p(f"{name}.csr"), "-CA",
                self.p(f"{issuer}.pem"), "-CAkey", self.p(f"{issuer}.key"), "-CAcreateserial",
                "-days", "30", "-out", self.p(f"{name}.pem"), "-extfile", ext,
                "-extensions", section)
        for name in ("client", "client-revoked"):  # clients send their intermediate
            self.concat(f"{name}-chain.pem", f"{name}.pem", "int.pem")
        # portcullis takes the CAs whose CRLs it uses from its truststore: all three get the
        # root (the trust anchor) and the intermediate.
        self.concat("truststore.pem", "root.pem", "int.pem")
        for kind in ("ec", "rsa"):  # HAProxy takes certificate and key in one file
            self.concat(f"server-{kind}-bundle.pem", f"server-{kind}.pem", f"server-{kind}.key")
        serial = run("openssl", "x509", "-in", self.p("client-revoked.pem"), "-noout",
                     "-serial").stdout
        with open(self.p("revoked-serials.txt"), "w") as f:
            f.write(serial)
        self.crl("root-crl", "root", 0, 1)

    def p(self, name):
        return os.path.join(self.d, name)

    def concat(self, out, *names):
        with open(self.p(out), "w") as f:
            for n in names:
                with open(self.p(n)) as part:
                    f.write(part.read())

    def crl(self, name, ca, entries, number, listed=False):
        """DER `name.der` and PEM `name.pem` signed by `ca`, with `entries` random serials
        (plus client-revoked's when `listed`)."""
        args = [self.crl_bench, "generate", self.d, str(entries), "--ca", self.p(f"{ca}.pem"),
                "--ca-key", self.p(f"{ca}.key"), "--crl-number", str(number),
                "--out", self.p(f"{name}.der")]
        if listed:
            args += ["--serials", self.p("revoked-serials.txt")]
        run(*args)
        run("openssl", "crl", "-inform", "DER", "-in", self.p(f"{name}.der"), "-out",
            self.p(f"{name}.pem"))
        if ca != "root":
            # NGINX and HAProxy check every certificate of the chain: both CAs' CRLs in one file.
            self.concat(f"{name}-all.pem", "root-crl.pem", f"{name}.pem")


def make_crls(pki, sizes):
    """int-<size> CRLs (cRLNumber 2) and their successors for reloads (cRLNumber 3)."""
    for size in sorted({0, *sizes}):  # the small CRL is the one of every other scenario
        for number in (2, 3):
            pki.crl(f"int-{size}-{number}", "int", size, number, listed=True)


# --- gateways ----------------------------------------------------------------------------------

class Gateway:
    """A gateway process tree started in `dir`; `serving_pids()` are the processes that do
    handshakes (the only process, or the workers of a master)."""

    name = "?"

    def __init__(self, bins, pki, work, upstream_port, workers, server, crl_name):
        self.bins, self.pki, self.workers = bins, pki, workers
        self.port = free_port()
        self.upstream_port = upstream_port
        self.server = server  # "ec" or "rsa"
        self.crl_name = crl_name
        self.dir = tempfile.mkdtemp(prefix=f"{self.name}-", dir=work)
        self.log_path = os.path.join(self.dir, "stderr.log")
        self.proc = None

    def start(self):
        """Starts and waits until a client certificate gets an answer; returns seconds taken."""
        t0 = time.monotonic()
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(self.command(), stdout=self.log, stderr=self.log,
                                     cwd=self.dir, start_new_session=True)
        wait_for(lambda: self.proc.poll() is not None or self.answers(), 120,
                 f"{self.name} to answer")
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited: {self.log_text()}")
        return time.monotonic() - t0

    def answers(self):
        status, _ = request(self.port, self.pki, "client")
        return status == 200

    def all_pids(self):
        return [self.proc.pid] + children(self.proc.pid)

    def serving_pids(self):
        return [self.proc.pid]

    def log_text(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()[-4000:]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def reload_crl(self):
        """Puts the next CRL (cRLNumber 3) in place and reloads; returns seconds until the
        gateway serves with it."""
        raise NotImplementedError

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def crl_file(self, number):
        return self.pki.p(f"{self.crl_name}-{number}-all.pem")


class Portcullis(Gateway):
    name = "portcullis"

    def command(self):
        self.admin_port = free_port()
        shutil.copyfile(self.pki.p(f"{self.crl_name}-2.der"), os.path.join(self.dir, "int.der"))
        cfg = self.write("portcullis.yaml", f"""listeners:
  - name: public
    address: 127.0.0.1:{self.port}
    tls:
      certificate: {self.pki.p(f'server-{self.server}.pem')}
      private_key: {self.pki.p(f'server-{self.server}.key')}
    client_auth: {{ truststore: {self.pki.p('truststore.pem')} }}
    header_timeout: 5m
    idle_timeout: 5m
    max_connections: 30000
    routes:
      - match: {{ host: "*", path_prefix: / }}
        upstream: app
upstreams:
  app: {{ endpoints: ["127.0.0.1:{self.upstream_port}"] }}
revocation:
  mode: crl
  on_unknown: deny
  crl:
    sources: [ {{ file: {self.pki.p('root-crl.der')} }}, {{ file: {self.dir}/int.der }} ]
    refresh_interval: 1h
admin: {{ address: 127.0.0.1:{self.admin_port} }}
logging: {{ level: warn, access_log: off }}
runtime: {{ io_threads: {self.workers} }}
""")
        return [self.bins["portcullis"], "--config", cfg]

    def int_source(self):
        status = json.loads(http(f"http://127.0.0.1:{self.admin_port}/status")[1])
        return [s for s in status["revocation"]["sources"] if s["source"].endswith("/int.der")][0]

    def reload_crl(self):
        # A configuration reload (POST /reload) is documented to read local CRL files again,
        # but did not in this version; the refresh endpoint does.
        tmp = os.path.join(self.dir, "int.der.tmp")
        shutil.copyfile(self.pki.p(f"{self.crl_name}-3.der"), tmp)
        os.replace(tmp, os.path.join(self.dir, "int.der"))
        t0 = time.monotonic()
        status, body = http(f"http://127.0.0.1:{self.admin_port}/revocation/refresh", "POST")
        if status != 202:
            raise RuntimeError(f"portcullis refresh: {status} {body}")
        wait_for(lambda: self.int_source()["crl_number"].lstrip("0") == "3", 120,
                 "portcullis to publish cRLNumber 3")
        return time.monotonic() - t0


class MasterWorkers(Gateway):
    """NGINX and HAProxy: a master process and its workers."""

    reload_signal = signal.SIGHUP

    def serving_pids(self):
        return children(self.proc.pid)

    def start(self):
        taken = super().start()
        wait_for(lambda: len(self.serving_pids()) >= self.expected_workers(), 30,
                 f"{self.name} workers")
        return taken

    def expected_workers(self):
        return 1

    def reload_crl(self):
        shutil.copyfile(self.crl_file(3), os.path.join(self.dir, "crl.pem.tmp"))
        os.replace(os.path.join(self.dir, "crl.pem.tmp"), os.path.join(self.dir, "crl.pem"))
        old = set(self.serving_pids())
        t0 = time.monotonic()
        self.proc.send_signal(self.reload_signal)
        # Done when new workers serve and the old ones (idle: no connection is open) are gone.
        wait_for(lambda: (lambda now: now and not (now & old) and
                          len(now) >= self.expected_workers())(set(self.serving_pids())),
                 120, f"{self.name} workers to be replaced")
        wait_for(self.answers, 30, f"{self.name} to answer after reload")
        return time.monotonic() - t0

    def crl_in_dir(self):
        path = os.path.join(self.dir, "crl.pem")
        shutil.copyfile(self.crl_file(2), path)
        return path


class Nginx(MasterWorkers):
    name = "nginx"

    def expected_workers(self):
        return self.workers

    def command(self):
        crl = self.crl_in_dir()
        user = ""
        if os.geteuid() == 0:  # otherwise the workers would switch to "nobody"
            user = f"user {pwd.getpwuid(os.getuid()).pw_name};"
        temp = " ".join(f"{k}_temp_path {self.dir}/{k};" for k in
                        ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        headers = "\n".join(f"      proxy_set_header {h} {v};" for h, v in (
            ("X-Client-Cert-Subject", "$ssl_client_s_dn"),
            ("X-Client-Cert-Issuer", "$ssl_client_i_dn"),
            ("X-Client-Cert-Serial", "$ssl_client_serial"),
            ("X-Client-Cert-Fingerprint", "$ssl_client_fingerprint"),
            ("X-Client-Cert-Not-Before", '"$ssl_client_v_start"'),
            ("X-Client-Cert-Not-After", '"$ssl_client_v_end"'),
            ("Connection", '""')))
        cfg = self.write("nginx.conf", f"""{user}
worker_processes {self.workers};
worker_rlimit_nofile 65536;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 30000; }}
http {{
  access_log off;
  {temp}
  upstream app {{ server 127.0.0.1:{self.upstream_port}; keepalive 32; }}
  server {{
    listen 127.0.0.1:{self.port} ssl;
    ssl_certificate {self.pki.p(f'server-{self.server}.pem')};
    ssl_certificate_key {self.pki.p(f'server-{self.server}.key')};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_verify_client on;
    ssl_verify_depth 2;
    ssl_client_certificate {self.pki.p('truststore.pem')};
    ssl_crl {crl};
    ssl_session_tickets on;
    ssl_session_timeout 5m;
    client_header_timeout 300s;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
{headers}
    }}
  }}
}}
""")
        return ["nginx", "-p", self.dir, "-e", f"{self.dir}/error.log", "-c", cfg,
                "-g", "daemon off;"]


class Haproxy(MasterWorkers):
    name = "haproxy"
    reload_signal = signal.SIGUSR2

    def command(self):
        crl = self.crl_in_dir()
        headers = "\n".join(f"  http-request set-header {h} %[{v}]" for h, v in (
            ("X-Client-Cert-Subject", "ssl_c_s_dn"),
            ("X-Client-Cert-Issuer", "ssl_c_i_dn"),
            ("X-Client-Cert-Serial", "ssl_c_serial,hex"),
            ("X-Client-Cert-Fingerprint-SHA256", "ssl_c_der,sha2(256),hex"),
            ("X-Client-Cert-Not-Before", "ssl_c_notbefore"),
            ("X-Client-Cert-Not-After", "ssl_c_notafter")))
        # HAProxy sizes its descriptors for two a connection and by default refuses to start
        # when the limit is lower; idle connections have no server side, so it need not.
        cfg = self.write("haproxy.cfg", f"""global
  nbthread {self.workers}
  maxconn 30000
  no strict-limits
  log stderr format raw local0 warning
defaults
  mode http
  log global
  timeout connect 5s
  timeout client 300s
  timeout server 30s
  timeout http-request 300s
  timeout http-keep-alive 300s
frontend public
  bind 127.0.0.1:{self.port} ssl crt {self.pki.p(f'server-{self.server}-bundle.pem')} verify required ca-file {self.pki.p('truststore.pem')} crl-file {crl} ssl-min-ver TLSv1.2
{headers}
  default_backend app
backend app
  http-reuse always
  server s1 127.0.0.1:{self.upstream_port}
""")
        return ["haproxy", "-W", "-db", "-f", cfg]


GATEWAY_CLASSES = {"portcullis": Portcullis, "nginx": Nginx, "haproxy": Haproxy}


# --- clients -----------------------------------------------------------------------------------

def client_context(pki, cert):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(pki.p(f"{cert}-chain.pem"), pki.p(f"{cert}.key"))
    return ctx


def request(port, pki, cert, path="/", timeout=5):
    """One GET over a new mTLS connection: (status or None, body)."""
    import http.client
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout,
                                       context=client_context(pki, cert))
    try:
        conn.request("GET", path, headers={"Host": "localhost"})
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    except (OSError, ssl.SSLError, http.client.HTTPException):
        return None, ""
    finally:
        conn.close()


class Bench:
    def __init__(self, binary, pki, work, client_threads):
        self.binary, self.pki, self.work, self.threads, self.n = binary, pki, work, client_threads, 0

    def run(self, port, pids, seconds, mode, connections, rate=None, path="/bytes/1024",
            cert="client"):
        """portcullis-bench against `port`; adds the CPU of `pids` over the run."""
        self.n += 1
        out = os.path.join(self.work, f"bench-{self.n}.json")
        args = [self.binary, "--mode", mode, "--port", str(port), "--sni", "localhost",
                "--cert", self.pki.p(f"{cert}-chain.pem"), "--key", self.pki.p(f"{cert}.key"),
                "--connections", str(connections), "--threads", str(self.threads),
                "--timeout", "10", "--duration", str(seconds), "--path", path,
                "--json", out, "--quiet"]
        if rate:
            args += ["--rate", str(int(rate))]
        cpu0 = proc_cpu_s(pids)
        subprocess.run(args, timeout=seconds + 120, stdout=subprocess.DEVNULL)
        cpu = proc_cpu_s(pids) - cpu0
        with open(out) as f:
            r = json.load(f)
        r["server_cpu_all_s"] = cpu
        return r


def idle_connections(port, pki, count, pids):
    """Opens `count` mTLS connections that send nothing; returns (opened, RSS of `pids` in KiB
    while they are open)."""
    ctx = client_context(pki, "client")

    async def main():
        sem = asyncio.Semaphore(32)
        writers = []

        async def one():
            async with sem:
                try:
                    _, w = await asyncio.wait_for(asyncio.open_connection(
                        "127.0.0.1", port, ssl=ctx, server_hostname="localhost"), 10)
                    writers.append(w)
                except (OSError, ssl.SSLError, asyncio.TimeoutError):
                    pass

        await asyncio.gather(*(one() for _ in range(count)))
        # The server finishes each handshake after the client does: wait until it is idle.
        last, deadline = -1.0, time.monotonic() + 60
        while time.monotonic() < deadline:
            now = proc_cpu_s(pids)
            if now - last < 0.005:
                break
            last = now
            await asyncio.sleep(0.5)
        rss = sum(proc_status_kib(p) for p in pids)
        for w in writers:
            w.transport.abort()
        return len(writers), rss

    return asyncio.run(main())


# --- crypto floor ------------------------------------------------------------------------------

def crypto_floor(seconds):
    """Server-side cost of one full TLS 1.3 mTLS handshake if only public-key crypto cost time:
    one signature (CertificateVerify), one X25519 key generation and one X25519 derivation,
    three ECDSA P-256 verifications (the client's CertificateVerify, the leaf's signature by the
    intermediate, the intermediate's by the root)."""
    out = run("openssl", "speed", "-mr", "-seconds", str(seconds), "ecdsap256", "ecdhx25519",
              "rsa2048").stdout
    ops = {}
    for line in out.splitlines():
        parts = line.split(":")
        if line.startswith("+F2:") and parts[2] == "2048":
            ops["rsa2048_sign"], ops["rsa2048_verify"] = float(parts[3]), float(parts[4])
        elif line.startswith("+F4:") and parts[2] == "256":
            ops["ecdsap256_sign"], ops["ecdsap256_verify"] = float(parts[3]), float(parts[4])
        elif line.startswith("+F5:") and parts[2] == "253":
            ops["x25519"] = float(parts[3])
    us = {k: 1e6 / v for k, v in ops.items()}
    common = 2 * us["x25519"] + 3 * us["ecdsap256_verify"]
    floor = {"ec": us["ecdsap256_sign"] + common, "rsa": us["rsa2048_sign"] + common}
    return {"ops_per_s": ops, "us_per_handshake": floor,
            "handshakes_per_s": {k: 1e6 / v for k, v in floor.items()}}


# --- scenarios ---------------------------------------------------------------------------------

def summary(r, per="request"):
    ok = r["requests_ok"]
    ops = {"request": ok, "full": r["full_handshakes"], "resumed": r["resumed_handshakes"]}[per]
    rate = ops / r["wall_s"] if r["wall_s"] else 0.0
    cpu_us = r["server_cpu_all_s"] * 1e6 / ops if ops else None
    return {"per_s": rate, "server_cpu_us": cpu_us,
            "per_core_per_s": 1e6 / cpu_us if cpu_us else None,
            "errors": r["errors_total"], "error_kinds": r.get("errors", {}),
            "ok": ok, "p50_ms": r["latency"]["p50_ms"], "p99_ms": r["latency"]["p99_ms"],
            "client_cpu_us": r.get("client_cpu_us_per_request")}


def run_round(i, names, a, bins, pki, work, upstream_port, bench, direct_port):
    """One round: every scenario, each run by every gateway in turn before the next scenario,
    so that a slow minute of a shared machine falls on all gateways' figures of that scenario
    rather than on one gateway's. The gateway that goes first rotates from round to round."""
    order = names[i % len(names):] + names[:i % len(names)]
    res = {n: {} for n in names}
    d, conns = a.duration, a.connections

    def each(text, fn):
        for n in order:
            log(f"round {i + 1} of {a.rounds}: {n}: {text}")
            fn(n)

    class Started:
        """The gateways of `order`, each started with the same server certificate and CRL;
        stopped again on leaving."""

        def __init__(self, server, crl):
            self.server, self.crl, self.gws, self.started = server, crl, {}, {}

        def __enter__(self):
            try:
                for n in order:
                    gw = GATEWAY_CLASSES[n](bins, pki, work, upstream_port, a.workers,
                                            self.server, self.crl)
                    self.gws[n] = gw
                    # Start-up time and memory before any load (the CRL rows report them).
                    self.started[n] = {"load_s": gw.start(),
                                       "rss_kib": sum(proc_status_kib(p)
                                                      for p in gw.serving_pids()),
                                       "pss_all_kib": pss_kib(gw.all_pids())}
                    bench.run(gw.port, gw.serving_pids(), 1, "full", conns)  # warm-up
            except BaseException:
                self.__exit__()
                raise
            return self

        def __exit__(self, *_):
            for gw in self.gws.values():
                gw.stop()

        def raw(self, n, mode, connections=conns, rate=None):
            gw = self.gws[n]
            return bench.run(gw.port, gw.serving_pids(), d, mode, connections, rate)

        def run(self, n, mode, per, connections=conns, rate=None):
            return summary(self.raw(n, mode, connections, rate), per)

    with Started("ec", "int-0") as s:
        for n in order:
            res[n]["start_s"] = s.started[n]["load_s"]
            # Equivalence checks: identity header forwarded, revoked client refused.
            status, body = request(s.gws[n].port, pki, "client")
            headers = {k.lower(): v for k, v in json.loads(body)["headers"]}
            assert status == 200 and "client" in headers.get(IDENTITY_HEADER, ""), (status, body)
            res[n]["identity_header"] = headers[IDENTITY_HEADER]
            revoked, _ = request(s.gws[n].port, pki, "client-revoked")
            assert revoked != 200, f"{n} admitted a revoked client"

        each("full handshakes, ECDSA P-256",
             lambda n: res[n].update(full_ec=s.run(n, "full", "full")))

        def resumed(n):
            r = s.raw(n, "resume")
            res[n]["resumed"] = summary(r, "resumed") | {
                "not_resumed": r.get("not_resumed", 0), "full_handshakes": r["full_handshakes"]}
        each("resumed handshakes", resumed)
        each("keep-alive requests, 1 KiB responses",
             lambda n: res[n].update(keepalive=s.run(n, "keepalive", "request")))

        def p99(n):
            rate = max(1, int(res[n]["keepalive"]["per_s"] / 2))
            lat_conns = max(conns, 16)
            e = s.run(n, "keepalive", "request", connections=lat_conns, rate=rate)
            res[n]["p99_half_peak"] = e | {"rate": rate}
            res[n]["p99_direct"] = summary(bench.run(direct_port, [], d, "keepalive", lat_conns,
                                                     rate))
            res[n]["p99_added_ms"] = e["p99_ms"] - res[n]["p99_direct"]["p99_ms"]
        each("p99 at half the keep-alive peak, and direct to the upstream at that rate", p99)

    def idle(n):
        # A fresh process of its own, warmed by one second of handshakes: memory the scenarios
        # before left behind (sessions in a cache, allocator caches) is neither counted nor
        # reused, and no other gateway holds connections meanwhile.
        gw = GATEWAY_CLASSES[n](bins, pki, work, upstream_port, a.workers, "ec", "int-0")
        try:
            gw.start()
            pids = gw.serving_pids()
            bench.run(gw.port, pids, 1, "full", conns)
            before = sum(proc_status_kib(p) for p in pids)
            opened, during = idle_connections(gw.port, pki, a.idle, pids)
            res[n]["idle"] = {"connections": opened, "rss_before_kib": before,
                              "rss_during_kib": during,
                              "kib_per_connection": (during - before) / opened if opened else None}
        finally:
            gw.stop()
    if a.idle:
        each(f"{a.idle} idle mTLS connections", idle)

    with Started("rsa", "int-0") as s:
        each("full handshakes, RSA-2048", lambda n: res[n].update(full_rsa=s.run(n, "full", "full")))

    for size in a.crl_sizes:
        log(f"round {i + 1} of {a.rounds}: CRL of {size} entries: starting {', '.join(order)}")
        with Started("ec", f"int-{size}") as s:
            for n in order:
                res[n][f"crl_{size}"] = dict(s.started[n])
            each(f"full handshakes, CRL of {size} entries",
                 lambda n: res[n][f"crl_{size}"].update(s.run(n, "full", "full")))

            def reload(n):
                entry, gw = res[n][f"crl_{size}"], s.gws[n]
                entry["reload_s"] = gw.reload_crl()
                request(gw.port, pki, "client")
                entry["rss_after_reload_kib"] = sum(proc_status_kib(p) for p in gw.serving_pids())
                entry["pss_all_after_reload_kib"] = pss_kib(gw.all_pids())
            each(f"CRL of {size} entries: reload", reload)
    return res


def profile(a, bins, pki, work, upstream_port):
    """perf record -g of portcullis under --profile-mode load; the report goes to --out."""
    gw = Portcullis(bins, pki, work, upstream_port, a.workers, "ec", "int-0")
    try:
        gw.start()
        out = os.path.join(work, "bench-profile.json")
        load = subprocess.Popen([bins["portcullis-bench"], "--mode", a.profile_mode,
                                 "--port", str(gw.port),
                                 "--sni", "localhost", "--cert", pki.p("client-chain.pem"),
                                 "--key", pki.p("client.key"), "--connections",
                                 str(a.connections), "--duration", str(a.profile + 4),
                                 "--path", "/bytes/1024", "--json", out, "--quiet"],
                                stdout=subprocess.DEVNULL)
        data = os.path.join(work, "perf.data")
        time.sleep(2)  # past connection ramp-up: the profile is of the steady state
        # DWARF unwinding: Debian's libssl and libcrypto have no frame pointers.
        run("perf", "record", "-F", "999", "--call-graph", "dwarf,16384", "-p", str(gw.proc.pid),
            "-o", data, "--", "sleep", str(a.profile))
        load.wait(a.profile + 60)
        for name, extra in (("self", ["--no-children", "--sort", "dso,symbol", "-g", "none"]),
                            ("children", ["--children", "--sort", "symbol", "-g", "none"])):
            text = run("perf", "report", "-i", data, "--stdio", "--percent-limit", "0.5",
                       *extra).stdout
            text = "\n".join(" ".join(line.split()) for line in text.splitlines()) + "\n"
            with open(os.path.join(a.out, f"profile-{a.profile_mode}-{name}.txt"), "w") as f:
                f.write(text)
        log(f"profile written to {a.out}/profile-{a.profile_mode}-{{self,children}}.txt")
    finally:
        gw.stop()


# --- report ------------------------------------------------------------------------------------

def fmt(v, digits=0):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def ratio(a, b):
    return a / b if a and b else None


def goals(r):
    """The goals of the side-by-side issue, each with the measured value and met / not met.
    With several rounds the value is the median of the per-round values (each round's ratio
    compares runs of the same scenario made within seconds of each other); the value computed
    from the per-gateway medians is kept as `of_medians`, each round's as `rounds`."""
    floor, sizes = r["crypto_floor"]["handshakes_per_s"]["ec"], r["options"]["crl_sizes"]
    out = goals_of(r["gateways"], floor, sizes)
    rounds = r.get("rounds") or {}
    count = min((len(v) for v in rounds.values()), default=0)
    if count > 1:
        each = [goals_of({n: v[i] for n, v in rounds.items()}, floor, sizes)
                for i in range(count)]
        for k, x in enumerate(out):
            values = [e[k]["value"] for e in each]
            if None in values:
                continue
            x["of_medians"], x["rounds"] = x["value"], values
            x["value"] = statistics.median(values)
            x["met"] = x["value"] >= x["target"] if x["higher"] else x["value"] <= x["target"]
    return out


def goals_of(g, floor, crl_sizes):
    """The goals against one set of per-gateway results."""
    pc, ng, hp = g.get("portcullis", {}), g.get("nginx", {}), g.get("haproxy", {})
    cpu = lambda x, k: (x.get(k) or {}).get("server_cpu_us")
    per_core = lambda x, k: (x.get(k) or {}).get("per_core_per_s")
    out = []

    def goal(text, value, target, unit="×", higher=True):
        met = value is not None and (value >= target if higher else value <= target)
        out.append({"goal": text, "value": value, "target": target, "unit": unit,
                    "higher": higher, "met": met})

    goal("full handshakes/s per core vs HAProxy (ECDSA)", ratio(per_core(pc, "full_ec"),
                                                               per_core(hp, "full_ec")), 1.3)
    goal("full handshakes/s per core vs NGINX (ECDSA)", ratio(per_core(pc, "full_ec"),
                                                             per_core(ng, "full_ec")), 2.5)
    goal("server CPU per full handshake (ECDSA), µs", cpu(pc, "full_ec"), 265, "µs", False)
    goal("share of the crypto floor (ECDSA)", ratio(per_core(pc, "full_ec"), floor), 0.5)
    big = f"crl_{max(crl_sizes)}"
    goal(f"{big}: handshakes/s per core vs HAProxy", ratio(per_core(pc, big),
                                                            per_core(hp, big)), 1.3)
    goal(f"{big}: handshakes/s per core vs NGINX", ratio(per_core(pc, big),
                                                          per_core(ng, big)), 300)
    goal(f"{big}: per-core rate vs portcullis's own empty CRL", ratio(per_core(pc, big),
                                                                      per_core(pc, "crl_0")),
         0.9)
    best = max([x for x in (per_core(ng, "resumed"), per_core(hp, "resumed")) if x] or [0])
    goal("resumed handshakes/s per core vs the best of the two",
         ratio(per_core(pc, "resumed"), best), 1.0)
    goal("keep-alive requests/s per core vs NGINX", ratio(per_core(pc, "keepalive"),
                                                          per_core(ng, "keepalive")), 1.0)
    goal("keep-alive requests/s (wall clock) vs NGINX",
         ratio((pc.get("keepalive") or {}).get("per_s"), (ng.get("keepalive") or {}).get("per_s")),
         1.0)
    added = lambda x: x.get("p99_added_ms")
    goal("p99 added over direct, vs NGINX's", ratio(added(pc), added(ng))
         if added(pc) is not None and added(ng) and added(ng) > 0 else None, 1.2, "×", False)
    idle = lambda x: (x.get("idle") or {}).get("kib_per_connection")
    goal("RSS per idle connection vs NGINX's", ratio(idle(pc), idle(ng)), 1.0, "×", False)
    return out


def median_of_rounds(rounds):
    """One result from several rounds of the same gateway: the median of every number, the
    first round's value for anything else."""
    first = rounds[0]
    if isinstance(first, dict):
        return {k: median_of_rounds([x.get(k) for x in rounds if isinstance(x, dict)])
                for k in first}
    numbers = [x for x in rounds if isinstance(x, (int, float)) and not isinstance(x, bool)]
    if numbers and len(numbers) == len(rounds):
        return statistics.median(numbers)
    return first


def markdown(r):
    g = r["gateways"]
    names = [n for n in GATEWAYS if n in g]
    lines = [f"# Side by side: {', '.join(names)}", "",
             f"Run {r['started']} on {r['machine']} ({r['cores']} cores), OpenSSL "
             f"{r['openssl']}; {r['options']['workers']} worker(s) / io thread(s) per gateway, "
             f"{r['options']['duration']} s per scenario, "
             f"{'median of ' + str(r['options']['rounds']) + ' rounds (in each, every gateway runs a scenario before the next scenario starts), ' if r['options'].get('rounds', 1) > 1 else ''}"
             f"portcullis-bench with "
             f"{r['options']['client_threads']} thread(s) and {r['options']['connections']} "
             f"connections; load average {r['loadavg_start']} → {r['loadavg_end']}; "
             f"{r['versions']['nginx']}; {r['versions']['haproxy']}; portcullis at "
             f"{r['commit']}.", ""] + ([r["note"], ""] if r.get("note") else []) + [
             "Each cell: wall-clock rate, then server CPU per operation (user + sys of the "
             "gateway's processes over the run / operations) and the per-core rate it implies "
             "(10⁶ / CPU µs). The load generator and the upstream share the same cores, so the "
             "per-core figure is the one to compare.", "",
             "| scenario | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def row(title, key, per="/s"):
        cells = []
        for n in names:
            e = g[n].get(key)
            if not e or not e.get("ok"):
                cells.append("–")
                continue
            err = f", {e['errors']} errors" if e.get("errors") else ""
            cells.append(f"{fmt(e['per_s'])}{per}, {fmt(e['server_cpu_us'])} µs CPU "
                         f"({fmt(e['per_core_per_s'])}/s per core){err}")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")

    row("full mTLS handshakes, ECDSA P-256", "full_ec")
    row("full mTLS handshakes, RSA-2048", "full_rsa")
    row("resumed handshakes (TLS 1.3 tickets)", "resumed")
    row("keep-alive requests, 1 KiB responses", "keepalive")
    lines.append("| p99 at half the keep-alive peak (rate); direct to upstream; added | " + " | ".join(
        f"{fmt(g[n]['p99_half_peak']['p99_ms'], 2)} ms ({fmt(g[n]['p99_half_peak']['rate'])}/s); "
        f"{fmt(g[n]['p99_direct']['p99_ms'], 2)} ms; **{fmt(g[n]['p99_added_ms'], 2)} ms**"
        if "p99_half_peak" in g[n] else "–" for n in names) + " |")
    for size in r["options"]["crl_sizes"]:
        row(f"full handshakes, CRL of {size:,} entries", f"crl_{size}")
        lines.append(f"| CRL of {size:,}: load (start to first answer); reload; RSS / PSS of all "
                     "processes | " + " | ".join(
                         f"{fmt(g[n][f'crl_{size}']['load_s'], 2)} s; "
                         f"{fmt(g[n][f'crl_{size}']['reload_s'], 2)} s; "
                         f"{fmt(g[n][f'crl_{size}']['rss_kib'] / 1024, 1)} / "
                         f"{fmt(g[n][f'crl_{size}']['pss_all_kib'] / 1024, 1)} MiB"
                         if f"crl_{size}" in g[n] else "–" for n in names) + " |")
    lines.append("| idle mTLS connections: RSS before → during; per connection | " + " | ".join(
        f"{int(g[n]['idle']['connections']):,}: {fmt(g[n]['idle']['rss_before_kib'] / 1024, 1)} → "
        f"{fmt(g[n]['idle']['rss_during_kib'] / 1024, 1)} MiB; "
        f"**{fmt(g[n]['idle']['kib_per_connection'], 1)} KiB**"
        if g[n].get("idle") else "–" for n in names) + " |")
    cf = r["crypto_floor"]
    lines += ["", "Crypto floor (`openssl speed`, one core): "
              f"ECDSA P-256 server certificate {fmt(cf['us_per_handshake']['ec'])} µs = "
              f"{fmt(cf['handshakes_per_s']['ec'])} handshakes/s; RSA-2048 "
              f"{fmt(cf['us_per_handshake']['rsa'])} µs = {fmt(cf['handshakes_per_s']['rsa'])} "
              "handshakes/s (1 signature + 2 X25519 + 3 ECDSA P-256 verifications; ops/s: " +
              ", ".join(f"{k} {fmt(v)}" for k, v in cf["ops_per_s"].items()) + ").", "",
              "## Goals", ""]
    if any("rounds" in x for x in r["goals"]):
        lines += ["Measured: the median of the rounds' own values (each round's ratio compares "
                  "runs of one scenario made within seconds of each other), then their range, "
                  "then the value from the medians of the table above.", ""]
    lines += ["| goal | measured | target | |", "|---|---|---|---|"]
    for x in r["goals"]:
        unit = " µs" if x["unit"] == "µs" else "×"
        shown = fmt(x["value"], 2) + unit if x["value"] is not None else "–"
        if "rounds" in x:
            shown += (f" (rounds {fmt(min(x['rounds']), 2)}–{fmt(max(x['rounds']), 2)}; "
                      f"of the medians {fmt(x['of_medians'], 2)}{unit})")
        lines.append(f"| {x['goal']} | {shown} | {'≥' if x['higher'] else '≤'} {x['target']}{unit} "
                     f"| {'met' if x['met'] else '**not met**'} |")
    return "\n".join(lines) + "\n"


def chart_data(r, path):
    """Server CPU µs per operation, one row per scenario, one column per gateway."""
    g = r["gateways"]
    keys = [("full ECDSA", "full_ec"), ("full RSA", "full_rsa"), ("resumed", "resumed"),
            ("keep-alive req", "keepalive")] + [
        (f"CRL {s // 1000000}M" if s >= 1000000 else f"CRL {s // 1000}k" if s else "CRL 0",
         f"crl_{s}") for s in r["options"]["crl_sizes"]]
    with open(path, "w") as f:
        f.write("scenario " + " ".join(n for n in GATEWAYS if n in g) + "\n")
        for title, key in keys:
            vals = [(g[n].get(key) or {}).get("server_cpu_us") for n in GATEWAYS if n in g]
            f.write(f'"{title}" ' + " ".join(f"{v:.1f}" if v else "NaN" for v in vals) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build-bench"),
                    help="build directory holding portcullis, portcullis-bench, "
                         "portcullis-crl-bench (default build-bench)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"),
                    help="where results.json, results.md and chart.dat go (default bench/results)")
    ap.add_argument("--work", help="scratch directory, kept (default: a temporary one, removed)")
    ap.add_argument("--gateways", default=",".join(GATEWAYS),
                    help="which to run, comma-separated (default all three)")
    ap.add_argument("--workers", type=int, default=1,
                    help="io threads (portcullis), worker_processes (NGINX), nbthread (HAProxy)")
    ap.add_argument("--duration", type=int, help="seconds per scenario (default 8)")
    ap.add_argument("--rounds", type=int,
                    help="rounds, the gateways taking turns; every figure is the median over "
                         "rounds (default 3)")
    ap.add_argument("--connections", type=int, default=8, help="portcullis-bench slots")
    ap.add_argument("--client-threads", type=int, default=1, help="portcullis-bench io threads")
    ap.add_argument("--idle", type=int, help="idle connections (default 10000; 0: skip)")
    ap.add_argument("--crl-sizes", help="CRL entries, comma-separated (default 0,100000,1000000)")
    ap.add_argument("--speed-seconds", type=int, help="openssl speed per primitive (default 2)")
    ap.add_argument("--profile", type=int, default=0, metavar="SECONDS",
                    help="only profile portcullis (perf record -g) for this long")
    ap.add_argument("--profile-mode", default="full", choices=("full", "resume", "keepalive"),
                    help="the load while profiling (default full handshakes)")
    ap.add_argument("--note", help="a line about this run for results.md (e.g. what was built)")
    ap.add_argument("--quick", action="store_true",
                    help="2 s per scenario, 1000 idle connections, CRLs of 0 and 100k")
    a = ap.parse_args()
    # --quick changes the defaults; options given explicitly still win.
    defaults = (2, 1000, "0,100000", 1, 1) if a.quick else (5, 10000, "0,100000,1000000", 2, 3)
    for key, value in zip(("duration", "idle", "crl_sizes", "speed_seconds", "rounds"), defaults):
        if getattr(a, key) is None:
            setattr(a, key, value)
    a.crl_sizes = [int(x) for x in a.crl_sizes.split(",")]
    names = [n for n in a.gateways.split(",") if n]
    for n in names:
        if n not in GATEWAYS:
            ap.error(f"--gateways: unknown '{n}'")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(a.idle * 3 + 4096, soft)  # HAProxy sizes for two descriptors a connection
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    bins = {n: os.path.join(os.path.abspath(a.build), n) for n in ("portcullis", "portcullis-bench",
                                                   "portcullis-crl-bench")}
    work = a.work or tempfile.mkdtemp(prefix="portcullis-peers-")
    os.makedirs(work, exist_ok=True)
    os.makedirs(a.out, exist_ok=True)
    results = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": platform.machine(), "cores": os.cpu_count(),
               "openssl": run("openssl", "version").stdout.split()[1],
               "versions": {"nginx": run("nginx", "-v").stderr.strip(),
                            "haproxy": run("haproxy", "-v").stdout.splitlines()[0]},
               "commit": run("git", "-C", ROOT, "rev-parse", "--short", "HEAD").stdout.strip(),
               "options": {"workers": a.workers, "duration": a.duration,
                           "connections": a.connections, "client_threads": a.client_threads,
                           "rounds": a.rounds,
                           "idle": a.idle, "crl_sizes": a.crl_sizes},
               "loadavg_start": " ".join(open("/proc/loadavg").read().split()[:3]),
               "note": a.note, "gateways": {}}
    procs = []
    t0 = time.monotonic()
    try:
        if not a.profile:
            log(f"crypto floor: openssl speed, {a.speed_seconds} s per primitive")
            results["crypto_floor"] = crypto_floor(a.speed_seconds)
        log("PKI and CRLs")
        pki = Pki(os.path.join(work, "pki"), bins["portcullis-crl-bench"])
        make_crls(pki, [0] if a.profile else a.crl_sizes)
        upstream_port, direct_port = free_port(), free_port()
        procs.append(subprocess.Popen([bins["portcullis"], "echo-upstream", "--listen",
                                       f"127.0.0.1:{upstream_port}", "--threads",
                                       str(a.workers)], stdout=subprocess.DEVNULL))
        # The same upstream reached directly, over mTLS so portcullis-bench can talk to it.
        procs.append(subprocess.Popen([bins["portcullis"], "echo-upstream", "--listen",
                                       f"127.0.0.1:{direct_port}", "--threads", str(a.workers),
                                       "--tls-cert", pki.p("server-ec.pem"), "--tls-key",
                                       pki.p("server-ec.key"), "--require-client-ca",
                                       pki.p("root.pem")], stdout=subprocess.DEVNULL))
        wait_for(lambda: http(f"http://127.0.0.1:{upstream_port}/__stats")[0] == 200, 20,
                 "echo upstream")
        wait_for(lambda: request(direct_port, pki, "client")[0] == 200, 20, "direct upstream")
        if a.profile:
            profile(a, bins, pki, work, upstream_port)
            return
        bench = Bench(bins["portcullis-bench"], pki, work, a.client_threads)
        rounds = {n: [] for n in names}
        for i in range(a.rounds):
            r = run_round(i, names, a, bins, pki, work, upstream_port, bench, direct_port)
            for n in names:
                rounds[n].append(r[n])
        results["gateways"] = {n: median_of_rounds(rounds[n]) for n in names}
        if a.rounds > 1:
            results["rounds"] = rounds
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    results["loadavg_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
    results["elapsed_s"] = time.monotonic() - t0
    results["goals"] = goals(results)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    md = markdown(results)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(md)
    chart_data(results, os.path.join(a.out, "chart.dat"))
    print(md)
    log(f"done in {results['elapsed_s']:.0f} s; results in {a.out}")


if __name__ == "__main__":
    main()
