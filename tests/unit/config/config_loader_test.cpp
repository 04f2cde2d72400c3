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

namespace {

std::filesystem::path config_dir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "portcullis-cfg-XXXXXX").string();
  REQUIRE(::mkdtemp(pattern.data()));
  const std::filesystem::path dir = pattern;
  for (const char* name : {"cert.pem", "key.pem", "trust.pem"}) std::ofstream(dir / name) << "x";
  return dir;
}

std::string with_revocation(const std::string& revocation) {
  return R"(listeners:
  - name: public
    address: 127.0.0.1:8443
    tls: { certificate: cert.pem, private_key: key.pem }
    client_auth: { truststore: trust.pem }
    routes: [ { upstream: app } ]
upstreams:
  app: { endpoints: ["127.0.0.1:9000"] }
revocation:
)" + revocation;
}

}  // namespace

TEST_CASE("OCSP settings and per-issuer modes are read", "[config]") {
  using namespace std::chrono_literals;
  namespace config = portcullis::config;
  const auto dir = config_dir();
  const auto loaded = parse_config(with_revocation(R"(  mode: ocsp_then_crl
  on_unknown: allow
  issuers:
    - { subject: "CN=Partner CA", mode: ocsp, ocsp_responder: "http://127.0.0.1:8888/" }
    - { subject: "CN=Private Root", on_unknown: deny, mode: none }
  ocsp:
    timeout: 2s
    nonce: false
    method: get
    clock_skew: 0s
    min_ttl: 30s
    max_ttl: 2h
    failure_ttl: 3s
    refresh_recent: 0s
    max_entries: 500
    check_intermediates: true
)"),
                                   dir / "portcullis.yaml");
  const auto& r = loaded.config.revocation;
  CHECK(r.mode == config::RevocationMode::ocsp_then_crl);
  REQUIRE(r.issuers.size() == 2);
  CHECK(r.issuers[0].mode == config::RevocationMode::ocsp);
  CHECK(r.issuers[0].ocsp_responder == "http://127.0.0.1:8888/");
  CHECK(r.issuers[0].on_unknown == config::OnUnknown::allow);  // the global one when not written
  CHECK(r.issuers[1].mode == config::RevocationMode::none);
  CHECK(r.issuers[1].on_unknown == config::OnUnknown::deny);
  CHECK(r.ocsp.timeout == 2s);
  CHECK_FALSE(r.ocsp.nonce);
  CHECK(r.ocsp.get);
  CHECK(r.ocsp.clock_skew == 0s);
  CHECK(r.ocsp.min_ttl == 30s);
  CHECK(r.ocsp.max_ttl == 2h);
  CHECK(r.ocsp.failure_ttl == 3s);
  CHECK(r.ocsp.refresh_recent == 0s);
  CHECK(r.ocsp.max_entries == 500);
  CHECK(r.ocsp.check_intermediates);
}

TEST_CASE("bad OCSP settings name file, line and key", "[config]") {
  const auto dir = config_dir();
  const std::pair<const char*, const char*> cases[] = {
      {"  mode: ocsp\n  ocsp: { min_ttl: 2h, max_ttl: 1h }\n",
       "portcullis.yaml:11: revocation.ocsp.max_ttl: must not be shorter than min_ttl"},
      {"  mode: ocsp\n  ocsp: { method: put }\n", "revocation.ocsp.method: 'put' is not one of"},
      {"  mode: ocsp\n  ocsp: { max_entries: 0 }\n", "revocation.ocsp.max_entries: expected an"},
      {"  mode: ocsp\n  ocsp: { retries: 3 }\n", "revocation.ocsp.retries"},
      {"  mode: ocsp\n  issuers: [ { subject: \"CN=x\", ocsp_responder: \"https://x/\" } ]\n",
       "revocation.issuers[0].ocsp_responder: 'https://x/' is not an http:// URL"},
  };
  for (const auto& [revocation, message] : cases) {
    INFO(revocation);
    try {
      parse_config(with_revocation(revocation), dir / "portcullis.yaml");
      FAIL("accepted");
    } catch (const portcullis::config::ConfigError& e) {
      CHECK_THAT(e.what(), Catch::Matchers::Contains(message));
    }
  }
}

TEST_CASE("a key written twice is an error, not a silent choice", "[config]") {
  const auto dir = config_dir();
  try {
    parse_config(with_revocation("  mode: crl\n  on_unknown: allow\n  mode: none\n"),
                 dir / "portcullis.yaml");
    FAIL("accepted");
  } catch (const portcullis::config::ConfigError& e) {
    CHECK_THAT(e.what(),
               Catch::Matchers::Contains(
                   "portcullis.yaml:12: revocation.mode: duplicate key 'mode' (first written on "
                   "line 10)"));
  }
}

TEST_CASE("session resumption settings", "[config]") {
  const auto dir = config_dir();
  std::ofstream(dir / "tickets.keys") << "x";
  const auto tls = [&](const std::string& extra) {
    auto text = with_revocation("  mode: none\n");
    const std::string plain = "tls: { certificate: cert.pem, private_key: key.pem }";
    text.replace(text.find(plain), plain.size(),
                 "tls: { certificate: cert.pem, private_key: key.pem" + extra + " }");
    return parse_config(text, dir / "portcullis.yaml").config.listeners.at(0).tls;
  };
  SECTION("defaults: the session cache, stateless tickets only with shared keys") {
    const auto t = tls("");
    CHECK_FALSE(t.session_tickets.has_value());
    CHECK_FALSE(t.stateless_tickets());
    CHECK(t.session_cache_size == 20480);
    CHECK(tls(", session_ticket_keys: tickets.keys").stateless_tickets());
  }
  SECTION("written") {
    CHECK(tls(", session_tickets: true").stateless_tickets());
    CHECK_FALSE(
        tls(", session_tickets: false, session_ticket_keys: tickets.keys").stateless_tickets());
    CHECK(tls(", session_cache_size: 0").session_cache_size == 0);
  }
  SECTION("bad values name the key") {
    for (const auto& [extra, message] : {
             std::pair<std::string, std::string>{
                 ", session_cache_size: -1",
                 "listeners[0].tls.session_cache_size: expected an integer"},
             {", session_tickets: maybe",
              "listeners[0].tls.session_tickets: expected true or false"},
         }) {
      INFO(extra);
      try {
        tls(extra);
        FAIL("accepted");
      } catch (const portcullis::config::ConfigError& e) {
        CHECK_THAT(e.what(), Catch::Matchers::Contains(message));
        CHECK_THAT(e.what(), Catch::Matchers::Contains("portcullis.yaml:4:"));
      }
    }
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("the verified chain cache size", "[config]") {
  const auto dir = config_dir();
  const auto auth = [&](const std::string& extra) {
    auto text = with_revocation("  mode: none\n");
    const std::string plain = "client_auth: { truststore: trust.pem }";
    text.replace(text.find(plain), plain.size(),
                 "client_auth: { truststore: trust.pem" + extra + " }");
    return parse_config(text, dir / "portcullis.yaml").config.listeners.at(0).client_auth;
  };
  CHECK(auth("").chain_cache_size == 10000);
  CHECK(auth(", chain_cache_size: 0").chain_cache_size == 0);
  CHECK(auth(", chain_cache_size: 500").chain_cache_size == 500);
  for (const std::string bad : {", chain_cache_size: -1", ", chain_cache_size: many"}) {
    INFO(bad);
    try {
      auth(bad);
      FAIL("accepted");
    } catch (const portcullis::config::ConfigError& e) {
      CHECK_THAT(e.what(), Catch::Matchers::Contains(
                               "portcullis.yaml:5: listeners[0].client_auth.chain_cache_size: "
                               "expected an integer"));
    }
  }
  std::filesystem::remove_all(dir);
}
