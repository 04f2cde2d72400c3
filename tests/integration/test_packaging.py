"""Packaging checked with the tools available here: the systemd unit passes `systemd-analyze
verify`, the YAML (examples, compose, Kubernetes) passes yamllint, the shell scripts pass
shellcheck, the container's runtime package list resolves from the real binary, and every
configuration shipped as an example passes `portcullis --check-config`."""

import os
import re
import shutil
import subprocess
import tempfile
import unittest

import yaml

from crl_fixtures import CertificateAuthority
from gateway_fixture import BIN

SOURCE = os.environ.get("PORTCULLIS_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))


def source(*parts):
    return os.path.join(SOURCE, *parts)


def run(*args, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)


class Pki:
    """The files the example configurations name, under the names they use."""

    def __init__(self, directory):
        root = CertificateAuthority(directory, "root", "Packaging Test Root CA")
        inter = CertificateAuthority(directory, "inter", "Packaging Test Intermediate CA", root)
        server = inter.issue("server", "localhost", extensions="server")
        self.files = {"server-chain.pem": server["chain"], "server.key": server["key"]}
        self.truststore = os.path.join(directory, "truststore.pem")
        with open(self.truststore, "w") as out:
            for ca in (root, inter):
                with open(ca.cert) as f:
                    out.write(f.read())
        self.files["truststore.pem"] = self.truststore
        self.files["root.crl"] = os.path.join(directory, "root.crl")
        with open(self.files["root.crl"], "wb") as f:
            f.write(root.crl())

    def place(self, directory):
        os.makedirs(directory, exist_ok=True)
        for name, path in self.files.items():
            shutil.copy(path, os.path.join(directory, name))


class Packaging(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="portcullis-packaging-")
        cls.pki = Pki(os.path.join(cls.dir, "pki-src"))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def check_config(self, config_path):
        p = run(BIN, "--check-config", "--config", config_path)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("configuration OK", p.stdout)
        return p.stderr

    def test_systemd_unit_verifies_clean_and_is_sandboxed(self):
        with open(source("config", "portcullis.service")) as f:
            unit = f.read()
        for setting in ("Type=notify", "NotifyAccess=main", "NoNewPrivileges=yes",
                        "ProtectSystem=strict", "User=portcullis",
                        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
                        "AmbientCapabilities=CAP_NET_BIND_SERVICE", "ExecReload=/bin/kill -HUP $MAINPID"):
            self.assertIn(setting + "\n", unit)
        # systemd-analyze checks that executables exist: point it at the binary under test.
        local = os.path.join(self.dir, "portcullis.service")
        with open(local, "w") as f:
            f.write(unit.replace("/usr/local/bin/portcullis", os.path.abspath(BIN)))
        p = run("systemd-analyze", "verify", local)
        self.assertEqual((p.returncode, p.stderr.strip()), (0, ""), p.stdout + p.stderr)

    def test_yaml_passes_yamllint(self):
        p = run("yamllint", "-s", "-c", source(".yamllint"), source("config"), source("docker"))
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_shell_scripts_pass_shellcheck(self):
        scripts = [source("scripts", n) for n in sorted(os.listdir(source("scripts"))) if n.endswith(".sh")]
        scripts += [source("docker", "runtime-packages.sh"), source(".ci", "run")]
        p = run("shellcheck", *scripts)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_container_runtime_packages_come_from_the_binary(self):
        p = run(source("docker", "runtime-packages.sh"), BIN)
        self.assertEqual(p.returncode, 0, p.stderr)
        packages = p.stdout.split()
        for expected in ("libssl3", "libyaml-cpp0.7", "libsystemd0", "libboost-url1.81.0"):
            self.assertIn(expected, packages)
        for package in packages:
            status = run("dpkg-query", "-W", "-f=${Status}", package).stdout
            self.assertIn("install ok installed", status, package)

    def test_dockerfile_is_multi_stage_non_root_with_a_health_check(self):
        with open(source("docker", "Dockerfile")) as f:
            text = f.read()
        stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
        self.assertGreaterEqual(len(stages), 2)
        runtime = text[text.rindex("\nFROM "):]
        self.assertRegex(runtime, r"\nUSER\s+[1-9][0-9]*")
        self.assertRegex(runtime, r"HEALTHCHECK[^\n]*\n[^\n]*/healthz")
        self.assertIn("runtime-packages.sh", text)
        self.assertIn("ARG DEBIAN_RELEASE=bookworm", text)
        for path in re.findall(r"^COPY\s+(?!--from)(\S+)\s", text, re.M):
            self.assertTrue(os.path.exists(source(path)), f"COPY source {path} does not exist")

    def test_example_configuration_passes_check_config(self):
        directory = os.path.join(self.dir, "example")
        self.pki.place(directory)
        config = os.path.join(directory, "portcullis.yaml")
        shutil.copy(source("config", "portcullis.example.yaml"), config)
        self.check_config(config)

    def test_compose_configuration_passes_check_config(self):
        directory = os.path.join(self.dir, "compose")
        self.pki.place(os.path.join(directory, "pki"))
        config = os.path.join(directory, "portcullis.yaml")
        shutil.copy(source("docker", "compose", "portcullis.yaml"), config)
        self.check_config(config)
        with open(source("docker", "compose", "compose.yaml")) as f:
            compose = yaml.safe_load(f)
        gateway = compose["services"]["portcullis"]
        self.assertIn("./portcullis.yaml:/etc/portcullis/portcullis.yaml:ro", gateway["volumes"])
        self.assertTrue(compose["networks"]["backend"]["internal"], "the service is reachable only through the gateway")

    def test_kubernetes_manifests_wire_probes_config_and_secrets(self):
        with open(source("docker", "kubernetes", "portcullis-sidecar.yaml")) as f:
            docs = {d["kind"]: d for d in yaml.safe_load_all(f) if d}
        self.assertEqual(set(docs), {"ConfigMap", "Secret", "Deployment", "Service"})
        pod = docs["Deployment"]["spec"]["template"]["spec"]
        sidecar = next(c for c in pod["containers"] if c["name"] == "portcullis")
        self.assertEqual(sidecar["livenessProbe"]["httpGet"], {"path": "/healthz", "port": "admin"})
        self.assertEqual(sidecar["readinessProbe"]["httpGet"], {"path": "/readyz", "port": "admin"})
        self.assertIn({"name": "admin", "containerPort": 9901}, sidecar["ports"])
        self.assertFalse(sidecar["securityContext"]["allowPrivilegeEscalation"])
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        mounts = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
        config_path = sidecar["args"][sidecar["args"].index("--config") + 1]
        self.assertEqual(os.path.dirname(config_path), mounts["config"])

        # The ConfigMap's configuration, with its absolute paths moved under a scratch root.
        root = os.path.join(self.dir, "k8s")
        text = docs["ConfigMap"]["data"]["portcullis.yaml"].replace("/etc/portcullis/", root + "/etc/portcullis/")
        text = text.replace("/var/lib/portcullis/", root + "/var/lib/portcullis/")
        self.pki.place(os.path.join(root, "etc", "portcullis", "tls"))
        tickets = os.path.join(root, "etc", "portcullis", "tickets")
        os.makedirs(tickets)
        with open(os.path.join(tickets, "tickets.keys"), "w") as f:
            f.write(run("sh", "-c", "openssl rand 80 | base64 -w0").stdout + "\n")
        config = os.path.join(root, "portcullis.yaml")
        with open(config, "w") as f:
            f.write(text)
        self.check_config(config)


if __name__ == "__main__":
    unittest.main()
