#!/usr/bin/env python3
"""Soak run of the real gateway: mixed traffic for a bounded time while CRLs are re-published
and the configuration is reloaded underneath, with the gateway's memory and descriptors sampled
throughout.

Traffic, from several client threads at once:
  good       a verified client, a new connection (full handshake) per request
  keepalive  a verified client on one long-lived connection, request after request
  revoked    a client whose revocation the gateway has already loaded
  foreign    a client certificate from a CA outside the truststore
  no_cert    TLS without a client certificate
  malformed  a verified client sending a request-smuggling case (tests/integration/test_smuggling.py)
  plaintext  HTTP without TLS on the TLS port

Underneath, every `swap` seconds one more client is revoked, a new CRL is published and the
gateway told to fetch it; a keep-alive connection that client opened before must then be refused.
Every `reload` seconds the configuration is reloaded, by SIGHUP and POST /reload in turn.

The run fails (exit 1) when a revoked, foreign, certificate-less or plaintext client, or a
malformed request, is ever answered 2xx; when a verified client's request is lost; when the
upstream received a request no client got an answer for; or when RSS or descriptors grow
beyond a tolerance between the first and last third of the run. A JSON and a text summary are
written to --out.

    tests/soak/soak.py --bin build/portcullis --duration 600 --out build/soak
"""

import argparse
import collections
import datetime
import json
import os
import random
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))

import ssl  # noqa: E402

from core_fixtures import TlsConnection, client_context, get, memory_kib  # noqa: E402
from crl_fixtures import CertificateAuthority, CrlServer  # noqa: E402
from fault_fixtures import cpu_seconds, fd_count, sanitized  # noqa: E402
import gateway_fixture  # noqa: E402

WEIGHTS = {"good": 40, "revoked": 15, "foreign": 10, "no_cert": 5, "malformed": 20, "plaintext": 10}
REFUSED_KINDS = ("revoked", "foreign", "no_cert", "plaintext")


class Pki:
    """A root CA in the truststore issuing the server, good clients and the clients to be
    revoked one by one; an unrelated CA issuing the foreign client."""

    def __init__(self, candidates):
        self.dir = tempfile.mkdtemp(prefix="portcullis-soak-pki-")
        self.root = CertificateAuthority(self.dir, "root", "Soak Root CA", crl_days=1)
        self.server = self.root.issue("server", "localhost", extensions="server")
        self.good = [self.root.issue(f"good-{i}", f"client-good-{i}") for i in range(3)]
        self.candidates = [self.root.issue(f"cand-{i}", f"client-to-revoke-{i}")
                           for i in range(candidates)]
        self.first_revoked = self.root.issue("revoked-0", "client-revoked-0")
        self.root.revoke(self.first_revoked["cert"])
        foreign = CertificateAuthority(self.dir, "foreign", "Soak Foreign CA")
        self.foreign = foreign.issue("foreign", "client-foreign")
        self.truststore = self.root.cert


class Tally:
    """Outcome counters shared by the client threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.outcomes = collections.Counter()  # "kind:outcome" -> n
        self.violations = []
        self.answered_2xx = 0  # every 2xx any client got: what the upstream may have seen

    def add(self, kind, outcome, violation=None):
        with self.lock:
            self.outcomes[f"{kind}:{outcome}"] += 1
            if outcome == "200":
                self.answered_2xx += 1
            if violation and len(self.violations) < 100:
                self.violations.append(violation)

    def count(self, prefix):
        with self.lock:
            return sum(n for key, n in self.outcomes.items() if key.startswith(prefix))


class Soak:
    def __init__(self, args):
        self.args = args
        self.duration = args.duration
        self.swap_every = args.swap_interval or max(5.0, min(20.0, self.duration / 6))
        self.reload_every = args.reload_interval or max(4.0, min(15.0, self.duration / 8))
        self.sample_every = args.sample_interval or max(1.0, min(5.0, self.duration / 30))
        swaps = int(self.duration / self.swap_every) + 2
        self.pki = Pki(swaps)
        self.crls = CrlServer()
        self.crls.files["root.crl"] = self.pki.root.crl()
        self.crl_url = self.crls.url("root.crl")
        self.upstream = gateway_fixture.EchoUpstream()
        self.gateway = gateway_fixture.Gateway(
            self.pki.server["chain"], self.pki.server["key"], self.pki.truststore,
            self.upstream.port, log_level="warn", access_log="off",
            listener_extra="header_timeout: 5s\n", extra=f"""revocation:
  mode: crl
  on_unknown: deny
  crl:
    sources: [ {{ url: "{self.crl_url}" }} ]
    refresh_interval: 60s
    fetch_timeout: 5s
""")
        self.pid = self.gateway.proc.pid
        self.sanitized = sanitized(gateway_fixture.BIN)
        self.contexts = {}
        self.revoked = [self.pki.first_revoked]  # revocations the gateway has loaded
        self.revoked_lock = threading.Lock()
        self.tally = Tally()
        self.stop = threading.Event()
        self.samples = []
        self.swaps = []
        self.reloads = {"sighup": 0, "post": 0, "failed": 0}
        self.upstream_before = self.upstream.requests()

    # --- clients ----------------------------------------------------------------------------

    def context(self, client):
        key = client["cert"] if client else None
        if key not in self.contexts:
            self.contexts[key] = client_context(self.pki, client)
        return self.contexts[key]

    def one_request(self, client, raw):
        """Status of the answer to `raw` on a new TLS connection; raises on a refusal."""
        with TlsConnection(self.gateway.port, self.context(client), timeout=30) as conn:
            conn.send(raw)
            status, headers = conn.read_head()
            if status < 300:
                conn.read_body(headers)
            return status

    def refused(self, kind, client, raw):
        """A client the handshake must refuse: any answer at all is a violation."""
        try:
            status = self.one_request(client, raw)
        except TimeoutError:
            self.tally.add(kind, "timeout")
            return
        except (ssl.SSLError, ConnectionError):
            self.tally.add(kind, "refused")
            return
        self.tally.add(kind, str(status), f"{kind} client answered {status}")

    def plaintext(self):
        try:
            with socket.create_connection(("127.0.0.1", self.gateway.port), timeout=30) as s:
                s.sendall(get("/plain"))
                data = s.recv(4096)
        except ConnectionError:
            data = b""
        except TimeoutError:
            self.tally.add("plaintext", "timeout")
            return
        if data.startswith(b"HTTP/1.1 2"):
            self.tally.add("plaintext", "200", "a plaintext request was answered 2xx")
        else:
            self.tally.add("plaintext", "refused")

    def run_one(self, rng, kind, corpus):
        if kind == "good":
            client = rng.choice(self.pki.good)
            try:
                status = self.one_request(client, get(f"/good/{rng.randrange(1 << 30)}"))
                self.tally.add(kind, str(status), None)
                if status != 200:
                    self.tally.add(kind, "lost", f"good client answered {status}")
            except (OSError, ssl.SSLError) as e:
                self.tally.add(kind, f"lost:{type(e).__name__}", f"good request lost: {e!r}")
        elif kind == "revoked":
            with self.revoked_lock:
                client = rng.choice(self.revoked)
            self.refused(kind, client, get("/revoked"))
        elif kind == "foreign":
            self.refused(kind, self.pki.foreign, get("/foreign"))
        elif kind == "no_cert":
            self.refused(kind, None, get("/no-cert"))
        elif kind == "plaintext":
            self.plaintext()
        elif kind == "malformed":
            name, raw, _ = rng.choice(corpus)
            try:
                status = self.one_request(rng.choice(self.pki.good), raw)
            except (OSError, ssl.SSLError):
                self.tally.add(kind, "closed")
                return
            if 400 <= status < 500:
                self.tally.add(kind, "4xx")
            else:
                self.tally.add(kind, str(status), f"malformed request {name} answered {status}")

    def client_thread(self, seed, corpus):
        rng = random.Random(seed)
        kinds = list(WEIGHTS)
        weights = [WEIGHTS[k] for k in kinds]
        while not self.stop.is_set():
            self.run_one(rng, rng.choices(kinds, weights)[0], corpus)

    def keepalive_thread(self):
        """One verified client on one connection for the whole run, reconnecting only if the
        gateway closed it (counted: it should never happen)."""
        client = self.pki.good[0]
        conn = None
        n = 0
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = TlsConnection(self.gateway.port, self.context(client), timeout=30)
                status, _, _ = conn.request(get(f"/keepalive/{n}"))
                n += 1
                self.tally.add("keepalive", str(status))
                if status != 200:
                    self.tally.add("keepalive", "lost", f"keep-alive request answered {status}")
            except (OSError, ssl.SSLError) as e:
                self.tally.add("keepalive", f"lost:{type(e).__name__}", f"keep-alive lost: {e!r}")
                if conn:
                    conn.close()
                conn = None
        if conn:
            conn.close()

    # --- underneath -------------------------------------------------------------------------

    def source_status(self):
        for source in self.gateway.status()["revocation"]["sources"]:
            if source["source"] == self.crl_url:
                return source
        raise RuntimeError("CRL source missing from /status")

    def swap_crl(self, index):
        """Revokes one more client while it holds a keep-alive connection, publishes the new CRL
        and waits until the gateway enforces it."""
        client = self.pki.candidates[index]
        held = TlsConnection(self.gateway.port, self.context(client), timeout=30)
        try:
            first = held.request(get("/before-revocation"))[0]
            self.tally.add("to_be_revoked", str(first))
            number = self.source_status()["crl_number"]
            started = time.monotonic()
            self.pki.root.revoke(client["cert"])
            self.crls.files["root.crl"] = self.pki.root.crl()
            gateway_fixture.http_post(
                f"http://127.0.0.1:{self.gateway.admin_port}/revocation/refresh")
            gateway_fixture.wait_for(lambda: self.source_status()["crl_number"] != number,
                                     timeout=60, what="the new CRL loaded")
            took = time.monotonic() - started
            with self.revoked_lock:
                self.revoked.append(client)
            # The connection opened before the revocation must not be served any more.
            try:
                status = held.request(get("/after-revocation"))[0]
            except (OSError, ssl.SSLError):
                status = None
            if status is None or status == 403:
                self.tally.add("revoked_keepalive", "refused")
            else:
                self.tally.add("revoked_keepalive", str(status),
                               f"keep-alive connection of a revoked client answered {status}")
            self.swaps.append({"at": round(self.elapsed(), 1), "crl_number": number,
                               "seconds_to_enforce": round(took, 3)})
        finally:
            held.close()

    def reload(self, index):
        metric = 'portcullis_config_reloads_total{result="ok"}'
        before = self.gateway.metric(metric)
        if index % 2 == 0:
            self.gateway.proc.send_signal(signal.SIGHUP)
            self.reloads["sighup"] += 1
        else:
            status, _ = gateway_fixture.http_post(
                f"http://127.0.0.1:{self.gateway.admin_port}/reload", timeout=30)
            self.reloads["post"] += 1
            if status != 200:
                self.reloads["failed"] += 1
        gateway_fixture.wait_for(lambda: self.gateway.metric(metric) > before, timeout=60,
                                 what="the reload counted")

    def sample(self):
        rss, hwm = memory_kib(self.pid)
        self.samples.append({
            "t": round(self.elapsed(), 1), "rss_kib": rss, "hwm_kib": hwm,
            "fds": fd_count(self.pid), "cpu_s": round(cpu_seconds(self.pid), 2),
            "served": self.tally.count("good:200") + self.tally.count("keepalive:200"),
        })
        s = self.samples[-1]
        print(f"{s['t']:7.1f} s  RSS {s['rss_kib'] / 1024:6.1f} MiB  fds {s['fds']:3}  "
              f"served {s['served']}  violations {len(self.tally.violations)}", flush=True)

    def elapsed(self):
        return time.monotonic() - self.started

    # --- the run ----------------------------------------------------------------------------

    def run(self):
        from test_smuggling import CORPUS
        self.started = time.monotonic()
        self.sample()
        threads = [threading.Thread(target=self.client_thread, args=(i, CORPUS), daemon=True)
                   for i in range(self.args.clients)]
        threads.append(threading.Thread(target=self.keepalive_thread, daemon=True))
        for t in threads:
            t.start()
        next_sample = self.sample_every
        next_swap = self.swap_every
        next_reload = self.reload_every / 2
        swaps = reloads = 0
        while self.elapsed() < self.duration:
            now = self.elapsed()
            if now >= next_sample:
                self.sample()
                next_sample += self.sample_every
            if now >= next_swap:
                self.swap_crl(swaps)
                swaps += 1
                next_swap = next_swap + self.swap_every if swaps < len(self.pki.candidates) \
                    else float("inf")
            if now >= next_reload:
                self.reload(reloads)
                reloads += 1
                next_reload += self.reload_every
            self.stop.wait(max(0.0, min(next_sample, next_swap, next_reload, self.duration)
                               - self.elapsed()))
        self.stop.set()
        for t in threads:
            t.join(60)
        self.sample()
        return self.report()

    def report(self):
        metrics = self.gateway.admin("/metrics")[1]
        upstream_seen = self.upstream.requests() - self.upstream_before
        alive = self.gateway.proc.poll() is None
        exit_code = self.gateway.stop()
        self.crls.stop()
        self.upstream.stop()

        warm = [s for s in self.samples if s["t"] >= self.duration * 0.2] or self.samples
        third = max(1, len(warm) // 3)

        def trend(key):
            head = statistics.median(s[key] for s in warm[:third])
            tail = statistics.median(s[key] for s in warm[-third:])
            return {"first": self.samples[0][key], "last": self.samples[-1][key],
                    "max": max(s[key] for s in self.samples), "early_median": head,
                    "late_median": tail, "growth": tail - head}

        outcomes = dict(sorted(self.tally.outcomes.items()))
        served = self.tally.count("good:200") + self.tally.count("keepalive:200")
        lost = self.tally.count("good:lost") + self.tally.count("keepalive:lost")
        rss, fds = trend("rss_kib"), trend("fds")
        checks = {
            "no revoked, foreign, certificate-less or plaintext client served":
                all(self.tally.count(f"{k}:2") == 0 for k in REFUSED_KINDS),
            "no malformed request answered 2xx": self.tally.count("malformed:2") == 0,
            "no revoked keep-alive connection served": self.tally.count("revoked_keepalive:2") == 0,
            "no verified request lost": lost == 0,
            "no refused client left hanging": sum(
                n for k, n in outcomes.items() if k.endswith(":timeout")) == 0,
            "upstream saw only requests answered 2xx": upstream_seen == self.tally.answered_2xx,
            # A sanitizer's quarantine and shadow memory grow RSS by design.
            f"RSS growth under {self.args.rss_tolerance_mib} MiB"
            + (" (not checked: sanitizer build)" if self.sanitized else ""):
                self.sanitized or rss["growth"] < self.args.rss_tolerance_mib * 1024,
            f"descriptor growth under {self.args.fd_tolerance}": fds["growth"] < self.args.fd_tolerance,
            "CRL swaps made, each enforced": len(self.swaps) >= 1,
            "every reload succeeded": self.reloads["failed"] == 0 and
                f'portcullis_config_reloads_total{{result="failed"}} 0' in metrics,
            "gateway alive at the end and exited 0 on SIGTERM": alive and exit_code == 0,
        }
        result = {
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "duration_s": round(self.elapsed(), 1),
            "client_threads": self.args.clients + 1,
            "sanitized": self.sanitized,
            "verified_requests_served": served,
            "verified_requests_per_s": round(served / max(self.elapsed(), 1), 1),
            "verified_requests_lost": lost,
            "upstream_requests": upstream_seen,
            "outcomes": outcomes,
            "violations": self.tally.violations,
            "crl_swaps": self.swaps,
            "reloads": self.reloads,
            "rss_kib": rss,
            "fds": fds,
            "cpu_s": self.samples[-1]["cpu_s"] - self.samples[0]["cpu_s"],
            "samples": self.samples,
            "checks": checks,
            "passed": all(checks.values()),
        }
        return result


def text_summary(r):
    lines = [f"soak: {r['duration_s']} s, {r['client_threads']} client threads, "
             f"{'PASSED' if r['passed'] else 'FAILED'}",
             f"verified requests served: {r['verified_requests_served']} "
             f"({r['verified_requests_per_s']}/s), lost: {r['verified_requests_lost']}, "
             f"upstream requests: {r['upstream_requests']}",
             f"CRL swaps: {len(r['crl_swaps'])} (seconds to enforce, max "
             f"{max([s['seconds_to_enforce'] for s in r['crl_swaps']] or [0])}), reloads: "
             f"{r['reloads']['sighup']} by SIGHUP, {r['reloads']['post']} by POST /reload, "
             f"failed: {r['reloads']['failed']}",
             f"gateway CPU: {r['cpu_s']:.1f} s",
             "outcomes:"]
    lines += [f"  {key:32} {n}" for key, n in r["outcomes"].items()]
    for key, unit, scale in (("rss_kib", "MiB", 1024), ("fds", "", 1)):
        t = r[key]
        lines.append(f"{key.split('_')[0]}: first {t['first'] / scale:.1f}{unit}, last "
                     f"{t['last'] / scale:.1f}{unit}, max {t['max'] / scale:.1f}{unit}, "
                     f"growth (late - early median) {t['growth'] / scale:+.1f}{unit}")
    lines.append("samples (t s, RSS MiB, fds, CPU s, served):")
    lines += [f"  {s['t']:7.1f} {s['rss_kib'] / 1024:7.1f} {s['fds']:4} {s['cpu_s']:7.2f} "
              f"{s['served']:8}" for s in r["samples"]]
    lines.append("checks:")
    lines += [f"  {'ok  ' if ok else 'FAIL'} {name}" for name, ok in r["checks"].items()]
    lines += [f"  violation: {v}" for v in r["violations"]]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds (default 600)")
    parser.add_argument("--bin", default=os.environ.get("PORTCULLIS_BIN", "build/portcullis"))
    parser.add_argument("--out", default=None, help="directory for soak.json and soak.txt")
    parser.add_argument("--clients", type=int, default=4, help="mixed-traffic threads")
    parser.add_argument("--swap-interval", type=float, default=0)
    parser.add_argument("--reload-interval", type=float, default=0)
    parser.add_argument("--sample-interval", type=float, default=0)
    parser.add_argument("--rss-tolerance-mib", type=float, default=16)
    parser.add_argument("--fd-tolerance", type=int, default=8)
    args = parser.parse_args()
    gateway_fixture.BIN = os.path.abspath(args.bin) if os.sep in args.bin else args.bin
    out = args.out or tempfile.mkdtemp(prefix="portcullis-soak-")
    os.makedirs(out, exist_ok=True)

    soak = Soak(args)
    try:
        result = soak.run()
    finally:
        if soak.gateway.proc.poll() is None:
            soak.gateway.stop()
    with open(os.path.join(out, "soak.json"), "w") as f:
        json.dump(result, f, indent=1)
    text = text_summary(result)
    with open(os.path.join(out, "soak.txt"), "w") as f:
        f.write(text)
    print(text, end="")
    print(f"written: {out}/soak.json, {out}/soak.txt")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
