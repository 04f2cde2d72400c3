#!/usr/bin/env python3
"""Revocation at million-entry scale, measured end to end on 127.0.0.1.

Builds a PKI with openssl, a 1M-entry CRL signed by the CA that issued the client certificates
(portcullis-crl-bench generate --ca), serves it over HTTP from 127.0.0.1, runs two gateways
side by side (one with an empty CRL, one with the 1M-entry CRL) and portcullis-bench against
them, and prints a table (and --json FILE) of:

  fetch-to-published time through the real refresher, and which thread paid for it;
  gateway RSS with the 1M-entry CRL vs. the empty one (bytes per entry), fresh and after swaps;
  lookup cost (portcullis-crl-bench measure);
  full-handshake rate and server CPU per handshake, empty vs. 1M (alternating rounds);
  handshakes while new 1M-entry indexes are built and swapped in, p99 vs. a baseline.

Standard library only. Every run is bounded in time. See bench/README.md.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(*args, **kwargs):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kwargs)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def http(url, method="GET", timeout=5):
    req = urllib.request.Request(url, data=b"" if method == "POST" else None, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError:
        return None, ""


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def thread_cpu(pid):
    """CPU seconds (user+sys) of each thread of `pid`, by thread id."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError):
            pass
    return out


def schedstat(pid, tid):
    """(seconds on CPU, seconds runnable but waiting for a CPU) of one thread."""
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            run_ns, wait_ns, _ = (int(x) for x in f.read().split())
        return run_ns / 1e9, wait_ns / 1e9
    except OSError:
        return 0.0, 0.0


# --- PKI ---------------------------------------------------------------------------------------

CA_EXT = """[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[client]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[server]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def make_pki(d):
    """CA (P-256), server and two clients; returns paths. client-revoked goes on every CRL."""
    os.makedirs(d, exist_ok=True)
    ext = os.path.join(d, "ext.cnf")
    with open(ext, "w") as f:
        f.write(CA_EXT)
    p = lambda n: os.path.join(d, n)
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", p("ca.key"), "-out", p("ca.pem"), "-days", "30",
        "-subj", "/CN=portcullis bench CA", "-config", ext, "-extensions", "v3_ca")
    for name, section in (("server", "server"), ("client", "client"), ("client-revoked", "client")):
        run("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", p(f"{name}.key"), "-out", p(f"{name}.csr"), "-subj", f"/CN={name}")
        run("openssl", "x509", "-req", "-in", p(f"{name}.csr"), "-CA", p("ca.pem"), "-CAkey",
            p("ca.key"), "-CAcreateserial", "-days", "30", "-out", p(f"{name}.pem"),
            "-extfile", ext, "-extensions", section)
    with open(p("server-chain.pem"), "w") as f:
        f.write(open(p("server.pem")).read() + open(p("ca.pem")).read())
    serial = run("openssl", "x509", "-in", p("client-revoked.pem"), "-noout", "-serial").stdout
    with open(p("revoked-serials.txt"), "w") as f:
        f.write(serial)
    return p


# --- processes ---------------------------------------------------------------------------------

class Proc:
    def __init__(self, args, log_path=None, env=None):
        self.log = open(log_path, "w+") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log,
                                     env={**os.environ, **(env or {})})

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Gateway(Proc):
    env = {}  # extra environment for every gateway (--gateway-env)

    def __init__(self, binary, work, name, p, upstream_port, crl_url):
        self.port = free_port()
        self.admin_port = free_port()
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir, exist_ok=True)
        self.config = os.path.join(self.dir, "portcullis.yaml")
        with open(self.config, "w") as f:
            f.write(f"""listeners:
  - name: public
    address: 127.0.0.1:{self.port}
    tls: {{ certificate: {p('server-chain.pem')}, private_key: {p('server.key')} }}
    client_auth: {{ truststore: {p('ca.pem')} }}
    routes:
      - match: {{ host: "*", path_prefix: / }}
        upstream: app
upstreams:
  app: {{ endpoints: ["127.0.0.1:{upstream_port}"] }}
revocation:
  mode: crl
  on_unknown: deny
  crl:
    sources: [ {{ url: "{crl_url}" }} ]
    discover: false
    refresh_interval: 1h
admin: {{ address: 127.0.0.1:{self.admin_port} }}
logging: {{ level: info, access_log: off }}
runtime: {{ io_threads: 1 }}
""")
        self.log_path = os.path.join(self.dir, "stderr.log")
        super().__init__([binary, "--config", self.config], self.log_path, Gateway.env)
        wait_for(lambda: self.proc.poll() is not None or self.admin("/readyz")[0] == 200, 120,
                 f"{name} /readyz")
        if self.proc.poll() is not None:
            raise RuntimeError(f"gateway {name} exited: " + open(self.log_path).read())

    def admin(self, path, method="GET"):
        return http(f"http://127.0.0.1:{self.admin_port}{path}", method)

    def source(self):
        return json.loads(self.admin("/status")[1])["revocation"]["sources"][0]

    def log_text(self):
        self.log.flush()
        return open(self.log_path).read()


# --- measurements ------------------------------------------------------------------------------

class Bench:
    def __init__(self, binary, p, work):
        self.binary, self.p, self.work, self.n = binary, p, work, 0

    def run(self, gw, seconds, mode="full", connections=4, rate=None, cert="client", extra=()):
        self.n += 1
        out = os.path.join(self.work, f"bench-{self.n}.json")
        args = [self.binary, "--mode", mode, "--port", str(gw.port), "--sni", "localhost",
                "--cert", self.p(f"{cert}.pem"), "--key", self.p(f"{cert}.key"),
                "--connections", str(connections), "--threads", "1", "--timeout", "5",
                "--duration", str(seconds), "--server-pid", str(gw.pid), "--json", out, "--quiet",
                *extra]
        if rate:
            args += ["--rate", str(rate)]
        subprocess.run(args, timeout=seconds + 60, stdout=subprocess.DEVNULL)
        with open(out) as f:
            return json.load(f)


def publish(www, src, crl_number_path="crl.der"):
    """Atomically replaces the served CRL; a fresh mtime so If-Modified-Since sees a change."""
    dst = os.path.join(www, crl_number_path)
    tmp = dst + ".tmp"
    shutil.copyfile(src, tmp)
    now = time.time()
    os.utime(tmp, (now, now))
    os.replace(tmp, dst)


def refresh_and_wait(gw, crl_number, timeout=60, poll=0.01):
    """POST /revocation/refresh, then poll /status until `crl_number` is published."""
    t0 = time.monotonic()
    wall0 = time.time()
    gw.admin("/revocation/refresh", "POST")
    deadline = t0 + timeout
    while gw.source()["crl_number"].lstrip("0").lower() != f"{crl_number:x}":
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for crl_number {crl_number}")
        time.sleep(poll)
    return time.monotonic() - t0, wall0


def published_log_time(gw, crl_number):
    """The wall-clock time of the refresher's 'crl source=... crl_number=N' line."""
    import datetime
    for line in reversed(gw.log_text().splitlines()):
        if " crl source=" in line and f"CRL_NUMBER={crl_number:02X} " in line.upper():
            stamp = line.split(" ", 1)[0].rstrip("Z")
            return datetime.datetime.fromisoformat(stamp).replace(
                tzinfo=datetime.timezone.utc).timestamp()
    return None


def crl_bench_measure(binary, d):
    out = run(binary, "measure", d).stdout
    values = {}
    for line in out.splitlines():
        key, _, rest = line.partition("  ")
        values[key.strip()] = rest.strip()
    return out, values


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build-bench"),
                    help="build directory holding portcullis, portcullis-bench, portcullis-crl-bench")
    ap.add_argument("--work", help="scratch directory (default: a new temporary one, removed)")
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=10, help="length of each load run")
    ap.add_argument("--rounds", type=int, default=3, help="alternating empty/1M handshake rounds")
    ap.add_argument("--swap-rounds", type=int, default=2,
                    help="rounds of baseline / swaps / swaps with the refresher niced")
    ap.add_argument("--connections", type=int, default=4, help="closed-loop connection slots")
    ap.add_argument("--swap-every", type=float, default=2.5, help="seconds between swaps")
    ap.add_argument("--swap-load", type=float, default=0.4,
                    help="open-loop rate of the swap runs, as a fraction of the 1M handshake rate")
    ap.add_argument("--gateway-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the gateways, e.g. "
                         "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1048576")
    ap.add_argument("--json", help="write every figure here as JSON")
    a = ap.parse_args()
    Gateway.env = dict(kv.split("=", 1) for kv in a.gateway_env)

    bins = {n: os.path.join(a.build, n) for n in ("portcullis", "portcullis-bench",
                                                   "portcullis-crl-bench")}
    for b in bins.values():
        if not os.access(b, os.X_OK):
            sys.exit(f"missing {b}: build with cmake --build {a.build}")
    work = a.work or tempfile.mkdtemp(prefix="portcullis-crl-scale-")
    os.makedirs(work, exist_ok=True)
    www = os.path.join(work, "www")
    os.makedirs(www, exist_ok=True)
    procs = []
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "entries": a.entries,
               "cores": os.cpu_count(), "openssl": run("openssl", "version").stdout.strip(),
               "gateway_env": a.gateway_env,
               "loadavg_start": open("/proc/loadavg").read().split()[:3]}
    try:
        log(f"PKI and CRLs in {work}")
        p = make_pki(os.path.join(work, "pki"))
        gen = lambda n, number, out: run(
            bins["portcullis-crl-bench"], "generate", os.path.join(work, "crl"), str(n),
            "--ca", p("ca.pem"), "--ca-key", p("ca.key"), "--serials", p("revoked-serials.txt"),
            "--crl-number", str(number), "--out", out)
        os.makedirs(os.path.join(work, "crl"), exist_ok=True)
        gen(0, 1, os.path.join(www, "empty.der"))
        # Each swap run publishes about one CRL per (--swap-every + ~1 s to publish).
        swaps = 2 * a.swap_rounds * (int(a.seconds / a.swap_every) + 1)
        big = []
        for number in range(2, 3 + swaps):
            out = os.path.join(work, "crl", f"crl-{number}.der")
            gen(a.entries, number, out)
            big.append((number, out))
        shutil.copyfile(big[0][1], os.path.join(work, "crl", "crl.der"))
        results["crl_bytes"] = os.path.getsize(big[0][1])

        log("lookup cost: portcullis-crl-bench measure")
        text, values = crl_bench_measure(bins["portcullis-crl-bench"], os.path.join(work, "crl"))
        results["crl_bench_measure"] = text
        number_of = lambda key: float(values.get(key, "nan").split()[0])
        results["lookup_ns"] = number_of("lookup")
        results["lookup_cached_ns"] = number_of("lookup, cached")
        results["key_hash_ns"] = number_of("issuer key hash")
        results["lookup_from_x509_ns"] = number_of("lookup from X509")
        results["check_ns"] = number_of("check (verify path)")

        http_port = free_port()
        # The CRL server stands for a remote distribution point: niced, so that serving 35 MB
        # takes no CPU from the gateway it would not take on a real network.
        procs.append(Proc(["nice", "-n", "19", sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                           "--directory", www, str(http_port)]))
        wait_for(lambda: http(f"http://127.0.0.1:{http_port}/empty.der")[0] == 200, 20,
                 "CRL server")
        upstream_port = free_port()
        procs.append(Proc([bins["portcullis"], "echo-upstream", "--listen",
                           f"127.0.0.1:{upstream_port}", "--threads", "1"]))
        wait_for(lambda: http(f"http://127.0.0.1:{upstream_port}/__stats")[0] == 200, 20,
                 "echo upstream")

        url = lambda name: f"http://127.0.0.1:{http_port}/{name}"
        publish(www, os.path.join(www, "empty.der"))  # crl.der starts as the empty CRL (#1)
        gw_empty = Gateway(bins["portcullis"], work, "gw-empty", p, upstream_port, url("empty.der"))
        procs.append(gw_empty)
        gw_big = Gateway(bins["portcullis"], work, "gw-big", p, upstream_port, url("crl.der"))
        procs.append(gw_big)
        bench = Bench(bins["portcullis-bench"], p, work)

        # Sanity: the listed client is refused by both, the other admitted.
        for gw in (gw_empty, gw_big):
            r = bench.run(gw, 1, connections=1, cert="client-revoked")
            assert r["requests_ok"] == 0 and r["errors_total"] > 0, r["errors"]
        # Warm-up, so both processes have touched their buffers before RSS is read; the CPU
        # split of this run also identifies gw-big's io thread.
        before = thread_cpu(gw_big.pid)
        for gw in (gw_empty, gw_big):
            bench.run(gw, 2)
        after = thread_cpu(gw_big.pid)
        io_tid = max(after, key=lambda t: after[t] - before.get(t, 0))
        results["rss_empty_kib_before_load"] = rss_kib(gw_big.pid)

        log(f"fetch-to-published: {a.entries} entries through the refresher")
        number, path = big[0]
        publish(www, path)
        before = thread_cpu(gw_big.pid)
        elapsed, wall0 = refresh_and_wait(gw_big, number)
        after = thread_cpu(gw_big.pid)
        logged = published_log_time(gw_big, number)
        deltas = {tid: after.get(tid, 0) - before.get(tid, 0) for tid in after}
        worker = max(deltas, key=deltas.get)
        results["fetch_to_published_s"] = elapsed
        results["fetch_to_published_log_s"] = (logged - wall0) if logged else None
        results["refresh_cpu_by_thread_s"] = {str(t): round(v, 3) for t, v in deltas.items()}
        results["refresh_cpu_thread"] = worker
        results["io_thread"] = io_tid
        results["refresh_off_io_thread"] = worker != io_tid and deltas.get(io_tid, 0) < 0.05
        assert gw_big.source()["entries"] == a.entries + 1, gw_big.source()
        time.sleep(1)
        results["rss_1m_kib_after_first_load"] = rss_kib(gw_big.pid)

        log(f"full handshakes: {a.rounds} alternating rounds of {a.seconds}s, empty vs 1M")
        rounds = {"empty": [], "1m": []}
        for _ in range(a.rounds):
            for key, gw in (("empty", gw_empty), ("1m", gw_big)):
                r = bench.run(gw, a.seconds, connections=a.connections)
                rounds[key].append({k: r[k] for k in (
                    "full_handshakes_per_s", "server_cpu_us_per_full_handshake", "errors_total",
                    "client_cpu_us_per_request")} | {"p99_ms": r["latency"]["p99_ms"]})
                log(f"  {key}: {r['full_handshakes_per_s']:.0f}/s, "
                    f"{r['server_cpu_us_per_full_handshake']:.0f} us server CPU/handshake, "
                    f"{r['errors_total']} errors")
        results["handshake_rounds"] = rounds
        for key in rounds:
            results[f"handshakes_per_s_{key}"] = statistics.median(
                x["full_handshakes_per_s"] for x in rounds[key])
            results[f"server_cpu_us_per_handshake_{key}"] = statistics.median(
                x["server_cpu_us_per_full_handshake"] for x in rounds[key])
        results["rss_empty_kib"] = rss_kib(gw_empty.pid)
        results["rss_1m_kib"] = rss_kib(gw_big.pid)

        # Open loop well below the measured capacity: p99 then reflects the gateway, not a queue.
        rate = max(10, int(results["handshakes_per_s_1m"] * a.swap_load))
        results["swap_rate"] = rate
        log(f"swap: {a.swap_rounds} rounds of baseline / swaps every {a.swap_every}s / swaps with the "
            f"refresher thread at nice 19, open loop at {rate}/s")
        generations = iter(big[1:])
        refresher_tid = results["refresh_cpu_thread"]

        def swap_run(swapping, niced):
            os.setpriority(os.PRIO_PROCESS, refresher_tid, 19 if niced else 0)
            stop = threading.Event()
            swap_log = []

            def swapper():
                while not stop.wait(a.swap_every):
                    number, path = next(generations, (None, None))
                    if number is None:
                        swap_log.append({"error": "out of CRL generations"})
                        return
                    publish(www, path)
                    try:
                        took, _ = refresh_and_wait(gw_big, number, a.seconds + 30, poll=0.05)
                        swap_log.append({"crl_number": number, "published_after_s": took})
                    except RuntimeError as e:
                        swap_log.append({"crl_number": number, "error": str(e)})
                        return

            t = threading.Thread(target=swapper) if swapping else None
            io_before = schedstat(gw_big.pid, io_tid)
            ref_before = schedstat(gw_big.pid, refresher_tid)
            if t:
                t.start()
            r = bench.run(gw_big, a.seconds, connections=16, rate=rate)
            stop.set()
            if t:
                t.join(a.seconds + 60)
            io_after = schedstat(gw_big.pid, io_tid)
            ref_after = schedstat(gw_big.pid, refresher_tid)
            os.setpriority(os.PRIO_PROCESS, refresher_tid, 0)
            out = {k: r[k] for k in ("requests_ok", "errors", "latency", "handshake", "timeline")}
            out["swaps"] = swap_log
            out["io_thread_cpu_s"] = io_after[0] - io_before[0]
            out["io_thread_runqueue_wait_s"] = io_after[1] - io_before[1]
            out["refresher_cpu_s"] = ref_after[0] - ref_before[0]
            out["loadavg"] = open("/proc/loadavg").read().split()[:3]
            log(f"  {'swaps' if swapping else 'baseline'}{' (refresher niced)' if niced else ''}: "
                f"{len([x for x in swap_log if 'error' not in x])} swaps, "
                f"p99 handshake {r['handshake']['p99_ms']:.2f} ms, "
                f"{r['errors_total']} errors, io thread waited "
                f"{out['io_thread_runqueue_wait_s']:.2f}s for a CPU")
            return out

        swap_rounds = {"baseline": [], "swap": [], "swap_niced": []}
        for _ in range(a.swap_rounds):
            swap_rounds["baseline"].append(swap_run(False, False))
            swap_rounds["swap"].append(swap_run(True, False))
            swap_rounds["swap_niced"].append(swap_run(True, True))
        results["swap_rounds"] = swap_rounds
        for key, runs in swap_rounds.items():
            results[f"{key}_p99_handshake_ms"] = statistics.median(
                x["handshake"]["p99_ms"] for x in runs)
            results[f"{key}_errors"] = sum(sum(x["errors"].values()) for x in runs)
            results[f"{key}_swaps"] = sum(
                len([s for s in x["swaps"] if "error" not in s]) for x in runs)
        results["rss_1m_kib_after_swaps"] = rss_kib(gw_big.pid)
        time.sleep(2)
        results["rss_1m_kib_after_swaps_settled"] = rss_kib(gw_big.pid)

        log("RSS of a gateway started directly with the 1M-entry CRL")
        publish(www, big[-1][1])
        gw_fresh = Gateway(bins["portcullis"], work, "gw-fresh", p, upstream_port, url("crl.der"))
        procs.append(gw_fresh)
        bench.run(gw_fresh, 2)
        results["rss_1m_kib_fresh"] = rss_kib(gw_fresh.pid)
        results["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    finally:
        for proc in reversed(procs):
            proc.stop()
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)

    print_table(results)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


def print_table(r):
    n = r["entries"]
    per_entry = lambda kib: (kib - r["rss_empty_kib"]) * 1024 / n
    ratio = r["server_cpu_us_per_handshake_1m"] / r["server_cpu_us_per_handshake_empty"]
    rate_ratio = r["handshakes_per_s_1m"] / r["handshakes_per_s_empty"]
    p99_base = r["baseline_p99_handshake_ms"]
    p99_swap = r["swap_p99_handshake_ms"]
    p99_niced = r["swap_niced_p99_handshake_ms"]
    ok = lambda b: "met" if b else "NOT MET"
    rows = [
        ("CRL size", f"{r['crl_bytes'] / 1e6:.1f} MB DER, {n} entries", "", ""),
        ("fetch-to-published (refresh → /status)", f"{r['fetch_to_published_s'] * 1000:.0f} ms"
         + (f" (log line after {r['fetch_to_published_log_s'] * 1000:.0f} ms)"
            if r.get("fetch_to_published_log_s") else ""), "", ""),
        ("  refresher CPU, by thread", ", ".join(f"{v:.2f}s" for v in
                                                 r["refresh_cpu_by_thread_s"].values()),
         "off the io thread", ok(r["refresh_off_io_thread"])),
        ("RSS, empty CRL", f"{r['rss_empty_kib'] / 1024:.1f} MiB", "", ""),
        ("RSS, 1M entries (first load)", f"{r['rss_1m_kib_after_first_load'] / 1024:.1f} MiB, "
         f"{per_entry(r['rss_1m_kib_after_first_load']):.1f} B/entry", "", ""),
        ("RSS, 1M entries (after handshake runs)", f"{r['rss_1m_kib'] / 1024:.1f} MiB, "
         f"{per_entry(r['rss_1m_kib']):.1f} B/entry", "< 32 B/entry, < 64 MB",
         ok(per_entry(r["rss_1m_kib"]) < 32 and r["rss_1m_kib"] * 1024 < 64e6)),
        ("RSS, 1M entries (after swaps, settled)",
         f"{r['rss_1m_kib_after_swaps_settled'] / 1024:.1f} MiB, "
         f"{per_entry(r['rss_1m_kib_after_swaps_settled']):.1f} B/entry", "< 32 B/entry, < 64 MB",
         ok(per_entry(r["rss_1m_kib_after_swaps_settled"]) < 32 and
            r["rss_1m_kib_after_swaps_settled"] * 1024 < 64e6)),
        ("RSS, started with 1M entries", f"{r['rss_1m_kib_fresh'] / 1024:.1f} MiB, "
         f"{per_entry(r['rss_1m_kib_fresh']):.1f} B/entry", "< 32 B/entry, < 64 MB",
         ok(per_entry(r["rss_1m_kib_fresh"]) < 32 and r["rss_1m_kib_fresh"] * 1024 < 64e6)),
        ("lookup, random serials", f"{r['lookup_ns']:.0f} ns", "< 200 ns",
         ok(r["lookup_ns"] < 200)),
        ("  1000 cached serials", f"{r['lookup_cached_ns']:.0f} ns", "", ""),
        ("  issuer key hash / lookup from X509", f"{r['key_hash_ns']:.0f} / "
         f"{r['lookup_from_x509_ns']:.0f} ns", "", ""),
        ("  CrlChecker::check (verify path)", f"{r.get('check_ns', float('nan')):.0f} ns",
         "< 200 ns", ok(r.get("check_ns", 1e9) < 200)),
        ("full handshakes/s, empty → 1M", f"{r['handshakes_per_s_empty']:.0f} → "
         f"{r['handshakes_per_s_1m']:.0f} ({(rate_ratio - 1) * 100:+.1f}%)", "within 10%",
         ok(rate_ratio > 0.9)),
        ("server CPU/handshake, empty → 1M", f"{r['server_cpu_us_per_handshake_empty']:.0f} → "
         f"{r['server_cpu_us_per_handshake_1m']:.0f} µs ({(ratio - 1) * 100:+.1f}%)",
         "within 10%", ok(ratio < 1.1)),
        ("swaps during runs", f"{r['swap_swaps']} + {r['swap_niced_swaps']} (niced) published, "
         f"{r['swap_errors'] + r['swap_niced_errors']} handshake/request errors", "0 errors",
         ok(r["swap_errors"] + r["swap_niced_errors"] == 0)),
        ("p99 handshake, baseline → during swaps", f"{p99_base:.2f} → {p99_swap:.2f} ms",
         "≤ 2× baseline", ok(p99_swap <= 2 * p99_base)),
        ("  same, refresher thread at nice 19", f"{p99_base:.2f} → {p99_niced:.2f} ms",
         "≤ 2× baseline", ok(p99_niced <= 2 * p99_base)),
    ]
    w = [max(len(str(row[i])) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(str(c).ljust(w[i]) for i, c in enumerate(row)).rstrip())
    print(f"date {r['date']}, {r['cores']} cores, {r['openssl']}, "
          f"load average {' '.join(r['loadavg_start'])} → {' '.join(r['loadavg_end'])}")


if __name__ == "__main__":
    main()
