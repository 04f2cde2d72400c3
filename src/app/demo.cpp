#include "portcullis/app/demo.hpp"

#include "portcullis/app/gateway.hpp"
#include "portcullis/echo/echo_server.hpp"
#include "portcullis/tls/pki_builder.hpp"

#include <fmt/format.h>
#include <boost/asio/io_context.hpp>

#include <fstream>
#include <iostream>
#include <thread>

namespace portcullis::app {

namespace fs = std::filesystem;

namespace {

std::string demo_config(const DemoOptions& o) {
  return fmt::format(
      R"(# Written by `portcullis demo`. Every key is described in config/portcullis.example.yaml.
listeners:
  - name: demo
    address: 127.0.0.1:{}
    tls:
      certificate: server-chain.pem
      private_key: server.key
      min_version: "1.2"
    client_auth:
      truststore: truststore.pem
      max_chain_depth: 4
    identity_headers: default
    routes:
      - match: {{ host: "*", path_prefix: / }}
        upstream: echo
upstreams:
  echo:
    endpoints: ["127.0.0.1:{}"]
admin:
  address: 127.0.0.1:{}
logging:
  level: info
  access_log: stdout
)",
      o.port, o.upstream_port, o.admin_port);
}

void print_instructions(const DemoOptions& o, const fs::path& dir) {
  const auto d = dir.string();
  const auto base = fmt::format("https://localhost:{}", o.port);
  const auto curl = fmt::format("curl --cacert {}/root-ca.pem", d);
  std::cout << fmt::format(R"(
portcullis demo is running.
  PKI and config:  {d}
  gateway:         {base}   (mTLS required)
  echo upstream:   http://127.0.0.1:{up}   (answers with the request it received, as JSON)
  admin:           http://127.0.0.1:{ad}/healthz  /readyz  /metrics  /status

Try, from another terminal:

  # a good client: 200, and the upstream sees X-Client-Cert-* identity headers
  {curl} --cert {d}/client.pem --key {d}/client.key {base}/hello

  # a client trying to forge its identity: the forged header never reaches the upstream
  {curl} --cert {d}/client.pem --key {d}/client.key -H 'X-Client-Cert-Subject: CN=admin' {base}/

  # no client certificate: the handshake is refused
  {curl} {base}/

  # expired, foreign-CA and serverAuth-only certificates: refused as well
  {curl} --cert {d}/client-expired.pem --key {d}/client-expired.key {base}/
  {curl} --cert {d}/client-foreign.pem --key {d}/client-foreign.key {base}/
  {curl} --cert {d}/client-noeku.pem --key {d}/client-noeku.key {base}/

  # why: handshake results by reason
  curl -s http://127.0.0.1:{ad}/metrics | grep portcullis_handshakes_total

Press Ctrl-C to stop.
)",
                           fmt::arg("d", d), fmt::arg("base", base), fmt::arg("curl", curl),
                           fmt::arg("up", o.upstream_port), fmt::arg("ad", o.admin_port))
            << std::flush;
}

}  // namespace

int run_demo(const DemoOptions& options) {
  const auto dir = fs::absolute(options.dir);
  fs::create_directories(dir);
  tls::write_demo_pki(dir);
  const auto config_file = dir / "portcullis.yaml";
  std::ofstream(config_file) << demo_config(options);

  boost::asio::io_context echo_io{1};
  echo::EchoServer echo(echo_io.get_executor(),
                        config::HostPort{"127.0.0.1", options.upstream_port});
  echo.start();
  std::thread echo_thread([&echo_io] { echo_io.run(); });

  int code = 1;
  try {
    Gateway gateway(config::load_config(config_file));
    code = gateway.run([&] { print_instructions(options, dir); });
  } catch (const std::exception& e) {
    std::cerr << "demo: " << e.what() << "\n";
  }
  echo.stop();
  echo_io.stop();
  echo_thread.join();
  return code;
}

}  // namespace portcullis::app
