"""A short soak (tests/soak/soak.py, 40 s): mixed traffic with CRL swaps and reloads underneath.
scripts/soak.sh runs the same for 10 minutes."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from gateway_fixture import BIN

SOAK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "soak", "soak.py")


class ShortSoak(unittest.TestCase):
    def test_forty_seconds_of_mixed_traffic_with_crl_swaps_and_reloads(self):
        out = tempfile.mkdtemp(prefix="portcullis-soak-test-")
        self.addCleanup(shutil.rmtree, out, ignore_errors=True)
        p = subprocess.run([sys.executable, SOAK, "--bin", BIN, "--duration", "40", "--clients",
                            "3", "--out", out], capture_output=True, text=True, timeout=300)
        print(p.stdout[-4000:], p.stderr[-4000:])
        self.assertEqual(p.returncode, 0, p.stdout[-4000:] + p.stderr[-4000:])
        with open(os.path.join(out, "soak.json")) as f:
            result = json.load(f)
        self.assertTrue(result["passed"])
        self.assertTrue(all(result["checks"].values()), result["checks"])
        outcomes = result["outcomes"]
        # Every kind of traffic ran, and each was answered the way it must be.
        self.assertGreater(result["verified_requests_served"], 50)
        self.assertEqual(result["verified_requests_lost"], 0)
        for kind in ("revoked", "foreign", "no_cert", "plaintext"):
            self.assertGreater(outcomes.get(f"{kind}:refused", 0), 0, kind)
            self.assertEqual([k for k in outcomes if k.startswith(f"{kind}:2")], [], kind)
        self.assertGreater(outcomes.get("malformed:4xx", 0), 0)
        self.assertGreaterEqual(len(result["crl_swaps"]), 3)
        self.assertEqual(outcomes.get("revoked_keepalive:refused", 0), len(result["crl_swaps"]))
        self.assertGreaterEqual(result["reloads"]["sighup"] + result["reloads"]["post"], 3)
        self.assertEqual(result["violations"], [])


if __name__ == "__main__":
    unittest.main()
