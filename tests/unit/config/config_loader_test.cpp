#include "portcullis/config/config.hpp"

#include <catch2/catch.hpp>

#include <cstdlib>
#include <fstream>

using portcullis::config::parse_config;

TEST_CASE("the line of every key is kept for errors found after loading", "[config]") {
  // Only the existence of the referenced files is checked while loading.
  std::string pattern = (std::filesystem::temp_directory_path() / "portcullis-cfg-XXXXXX").string();
  REQUIRE(::mkdtemp(pattern.data()));
  const std::filesystem::path dir = pattern;
  for (const char* name : {"cert.pem", "key.pem", "trust.pem"}) std::ofstream(dir / name) << "x";

  const auto loaded = parse_config(R"(listeners:
  - name: public
    address: 127.0.0.1:8443
    tls:
      certificate: cert.pem
      private_key: key.pem
    client_auth:
      truststore: trust.pem
    routes:
      - upstream: app
upstreams:
  app: { endpoints: ["127.0.0.1:9000"] }
)",
                                   dir / "portcullis.yaml");
  const auto& cfg = loaded.config;
  CHECK(cfg.line_of("listeners") == 1);
  CHECK(cfg.line_of("listeners[0].address") == 3);
  CHECK(cfg.line_of("listeners[0].tls.private_key") == 6);
  CHECK(cfg.line_of("listeners[0].client_auth.truststore") == 8);
  CHECK(cfg.line_of("upstreams.app.endpoints") == 12);
  // A key that was not written falls back to the closest enclosing one.
  CHECK(cfg.line_of("listeners[0].tls.groups") == 4);
  CHECK(cfg.line_of("listeners[3].tls") == 1);
  CHECK(cfg.line_of("nothing") == 0);
  std::filesystem::remove_all(dir);
}
