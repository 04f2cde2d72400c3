#include "portcullis/proxy/snapshot.hpp"

#include "../tls/test_support.hpp"

#include <catch2/catch.hpp>

#include <fmt/format.h>

using portcullis::config::ConfigError;
using portcullis::config::parse_config;
using portcullis::proxy::build_snapshot;
using namespace portcullis::tls;
using namespace portcullis::tls::testing;

namespace {

// Line 6: private_key, line 8: truststore.
std::string config_text(const std::string& key, const std::string& truststore) {
  return fmt::format(R"(listeners:
  - name: public
    address: 127.0.0.1:0
    tls:
      certificate: server-chain.pem
      private_key: {}
    client_auth:
      truststore: {}
    routes:
      - upstream: app
upstreams:
  app: {{ endpoints: ["127.0.0.1:9000"] }}
)",
                     key, truststore);
}

struct Files {
  TempDir dir;
  Files() {
    const auto root = issue_certificate(ca_spec("Snapshot Test Root"), nullptr);
    auto server_spec = leaf_spec("localhost", Eku::server_auth);
    server_spec.sans = {"DNS:localhost"};
    const auto server = issue_certificate(server_spec, &root);
    const auto other = issue_certificate(leaf_spec("other"), &root);
    write_file(dir / "server-chain.pem", pem_of({&server, &root}));
    write_file(dir / "server.key", to_pem(server.key.get()), true);
    write_file(dir / "other.key", to_pem(other.key.get()), true);
    write_file(dir / "truststore.pem", pem_of({&root}));
    write_file(dir / "empty.pem", "");
  }

  ConfigError build_error(const std::string& key, const std::string& truststore) {
    const auto file = dir / "portcullis.yaml";
    try {
      build_snapshot(parse_config(config_text(key, truststore), file), nullptr);
    } catch (const ConfigError& e) {
      return e;
    }
    FAIL("the snapshot was built");
    throw;
  }
};

}  // namespace

TEST_CASE("a snapshot builds from a valid configuration", "[proxy][snapshot]") {
  Files files;
  const auto snapshot = build_snapshot(
      parse_config(config_text("server.key", "truststore.pem"), files.dir / "portcullis.yaml"),
      nullptr);
  REQUIRE(snapshot->listeners.size() == 1);
  CHECK(snapshot->listeners[0]->truststore->summary().roots == 1);
}

TEST_CASE("a truststore that does not load is reported at its config line", "[proxy][snapshot]") {
  Files files;
  const auto error = files.build_error("server.key", "empty.pem");
  REQUIRE(error.errors().size() == 1);
  const auto& d = error.errors()[0];
  CHECK(d.file == (files.dir / "portcullis.yaml").string());
  CHECK(d.line == 8);
  CHECK(d.key == "listeners[0].client_auth.truststore");
  CHECK_THAT(d.message, Catch::Contains("no certificates"));
}

TEST_CASE("a TLS context failure is reported at the line of the key it names",
          "[proxy][snapshot]") {
  Files files;
  const auto error = files.build_error("other.key", "truststore.pem");
  REQUIRE(error.errors().size() == 1);
  const auto& d = error.errors()[0];
  CHECK(d.line == 6);
  CHECK(d.key == "listeners[0].tls.private_key");
  CHECK_THAT(d.message, Catch::Contains("does not match the certificate"));
  CHECK_THAT(d.to_string(), Catch::StartsWith((files.dir / "portcullis.yaml").string() +
                                              ":6: listeners[0].tls.private_key: "));
}
