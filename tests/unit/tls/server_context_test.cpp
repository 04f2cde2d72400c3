#include "portcullis/tls/server_context.hpp"

#include "portcullis/tls/builtin_ec_keys.hpp"
#include "portcullis/tls/library_context.hpp"
#include "portcullis/tls/pki_builder.hpp"
#include "portcullis/tls/truststore.hpp"
#include "test_support.hpp"

#include <openssl/err.h>
#include <openssl/provider.h>
#include <catch2/catch.hpp>

#include <ctime>
#include <memory>
#include <vector>

using namespace portcullis;
using namespace portcullis::tls;
using namespace portcullis::tls::testing;
using Catch::Matchers::Contains;

namespace {

using SslSessionPtr = std::unique_ptr<SSL_SESSION, OpenSslDeleter<SSL_SESSION_free>>;

// Answers from a fixed table and remembers what it was asked.
class StubChecker : public revocation::Checker {
 public:
  struct Call {
    std::string subject, issuer;
  };
  revocation::Status leaf_status = revocation::Status::good;
  revocation::Status ca_status = revocation::Status::good;
  bool whole_chain = false;
  mutable std::vector<Call> calls;

  revocation::Verdict check(X509* cert, X509* issuer) const noexcept override {
    calls.push_back({subject_of(cert), issuer ? subject_of(issuer) : ""});
    const bool is_ca = X509_check_ca(cert) != 0;
    const auto status = is_ca ? ca_status : leaf_status;
    return {status, status == revocation::Status::good ? "" : "stub"};
  }
  bool check_whole_chain() const noexcept override { return whole_chain; }
};

// A StubChecker whose data has a generation, as CrlChecker's does: stamps hold while it stays.
class GenerationChecker : public StubChecker {
 public:
  std::uint64_t current = 7;
  bool defers = false;

  std::uint64_t generation() const noexcept override { return current; }
  bool may_defer() const noexcept override { return defers; }
  bool unchanged_since(std::uint64_t generation,
                       std::chrono::system_clock::time_point) const noexcept override {
    return generation == current;
  }
};

struct Outcome {
  bool server_ok = false;
  bool client_ok = false;
  std::string reason;     // verify_failure_reason() on the server side
  int client_alert = -1;  // alert description the client received
  std::string alpn;
  int version = 0;
  bool resumed = false;
  std::uint64_t checked_generation = 0;  // revocation_checked_generation() on the server side
  bool stamp_held = false;               // resumed_under_stamp() on the server side
  long client_verify_result = -1;        // the client's verification of the server chain
  std::vector<std::string> ca_names;
  SslSessionPtr session;
  std::vector<X509Ptr> server_peer_chain;  // SSL_get_peer_cert_chain() on the server side
  X509Ptr server_peer;                     // SSL_get1_peer_certificate() on the server side
};

void on_client_info(const SSL* ssl, int where, int ret) {
  if ((where & SSL_CB_READ_ALERT) == SSL_CB_READ_ALERT) {
    auto* outcome = static_cast<Outcome*>(SSL_get_app_data(ssl));
    if (outcome->client_alert < 0) outcome->client_alert = ret & 0xff;
  }
}

bool step(SSL* ssl, bool& done, bool& failed) {
  if (done || failed) return false;
  const int rc = SSL_do_handshake(ssl);
  if (rc == 1) {
    done = true;
    return true;
  }
  const int error = SSL_get_error(ssl, rc);
  if (error != SSL_ERROR_WANT_READ && error != SSL_ERROR_WANT_WRITE) failed = true;
  return false;
}

// Both ends in memory over a BIO pair, driven in lock step until neither can move.
// `alpn` empty = the client sends no ALPN extension.
Outcome handshake(SSL_CTX* server_ctx, SSL_CTX* client_ctx, int version = TLS1_3_VERSION,
                  const std::vector<std::string>& alpn = {}, SSL_SESSION* resume = nullptr) {
  ERR_clear_error();
  Outcome outcome;
  SslPtr server(SSL_new(server_ctx));
  SslPtr client(SSL_new(client_ctx));
  REQUIRE(server);
  REQUIRE(client);
  REQUIRE(connect_in_memory(client.get(), server.get()));
  SSL_set_app_data(client.get(), &outcome);
  SSL_set_info_callback(client.get(), on_client_info);
  SSL_set_min_proto_version(client.get(), version);
  SSL_set_max_proto_version(client.get(), version);
  if (!alpn.empty()) {
    std::string wire;
    for (const auto& proto : alpn) wire += static_cast<char>(proto.size()) + proto;
    REQUIRE(SSL_set_alpn_protos(client.get(), reinterpret_cast<const unsigned char*>(wire.data()),
                                static_cast<unsigned>(wire.size())) == 0);
  }
  if (resume) SSL_set_session(client.get(), resume);

  bool server_done = false, server_failed = false, client_done = false, client_failed = false;
  for (int round = 0; round < 50; ++round) {
    const bool moved = step(client.get(), client_done, client_failed) |
                       step(server.get(), server_done, server_failed);
    if ((server_done || server_failed) && (client_done || client_failed) && !moved) break;
  }
  // TLS 1.3 clients finish before the server has looked at their certificate: the verdict (or
  // the alert) arrives with the first read.
  if (client_done) {
    if (server_done) REQUIRE(SSL_write(server.get(), "ok", 2) == 2);
    char buf[8];
    const int n = SSL_read(client.get(), buf, sizeof(buf));
    if (n != 2) client_done = false;
  }
  // A clean close keeps the session resumable (OpenSSL drops sessions of aborted connections).
  if (client_done && server_done) {
    SSL_shutdown(client.get());
    SSL_shutdown(server.get());
  }
  outcome.server_ok = server_done && !server_failed;
  outcome.client_ok = client_done;
  outcome.reason = std::string(verify_failure_reason(server.get()));
  const unsigned char* selected = nullptr;
  unsigned selected_len = 0;
  SSL_get0_alpn_selected(client.get(), &selected, &selected_len);
  outcome.alpn.assign(reinterpret_cast<const char*>(selected), selected_len);
  outcome.version = SSL_version(client.get());
  outcome.resumed = SSL_session_reused(server.get()) == 1;
  outcome.checked_generation = revocation_checked_generation(server.get());
  outcome.stamp_held = resumed_under_stamp(server.get());
  outcome.client_verify_result = SSL_get_verify_result(client.get());
  if (const STACK_OF(X509_NAME)* names = SSL_get0_peer_CA_list(client.get())) {
    for (int i = 0; i < sk_X509_NAME_num(names); ++i) {
      char buf[256];
      X509_NAME_oneline(sk_X509_NAME_value(names, i), buf, sizeof(buf));
      outcome.ca_names.emplace_back(buf);
    }
  }
  outcome.session.reset(SSL_get1_session(client.get()));
  outcome.server_peer.reset(SSL_get1_peer_certificate(server.get()));
  if (STACK_OF(X509)* chain = SSL_get_peer_cert_chain(server.get())) {
    for (int i = 0; i < sk_X509_num(chain); ++i) {
      X509* cert = sk_X509_value(chain, i);
      X509_up_ref(cert);
      outcome.server_peer_chain.emplace_back(cert);
    }
  }
  ERR_clear_error();
  return outcome;
}

struct Fixture {
  // As the gateway runs: EC keys through libcrypto's built-in code, before any key is made.
  bool builtin_ec_keys = use_builtin_ec_keys();
  TempDir dir;
  Issued root = issue_certificate(ca_spec("Test Root"), nullptr);
  Issued intermediate = issue_certificate(ca_spec("Test Intermediate"), &root);
  config::Listener listener;
  std::shared_ptr<const Truststore> truststore;

  Fixture() {
    write_file(dir / "root.pem", to_pem(root.cert.get()));
    write_file(dir / "truststore.pem", pem_of({&root, &intermediate}));
    use_server_certificate(KeyType::ec_p256);
    listener.name = "public";
    listener.client_auth.truststore = dir / "truststore.pem";
    truststore = Truststore::load(listener.client_auth.truststore);
  }

  void use_server_certificate(KeyType key) {
    auto spec = leaf_spec("localhost", Eku::server_auth);
    spec.key = key;
    spec.sans = {"DNS:localhost"};
    const auto server = issue_certificate(spec, &intermediate);
    write_file(dir / "server-chain.pem", pem_of({&server, &intermediate}));
    write_file(dir / "server.key", to_pem(server.key.get()), true);
    listener.tls.certificate = dir / "server-chain.pem";
    listener.tls.private_key = dir / "server.key";
  }

  SslCtxPtr server_context(std::shared_ptr<const revocation::Checker> checker = nullptr,
                           std::string session_id_context = "ctx-1") const {
    ServerContextOptions options;
    options.listener = &listener;
    options.truststore = truststore;
    options.revocation = std::move(checker);
    options.session_id_context = std::move(session_id_context);
    return build_server_context(options);
  }

  // A client presenting `leaf` plus `chain`; it trusts the test root for the server.
  SslCtxPtr client_context(const Issued* leaf, std::vector<const Issued*> chain = {}) const {
    SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
    REQUIRE(ctx);
    X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx.get()), root.cert.get());
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
    if (leaf) {
      REQUIRE(SSL_CTX_use_certificate(ctx.get(), leaf->cert.get()) == 1);
      REQUIRE(SSL_CTX_use_PrivateKey(ctx.get(), leaf->key.get()) == 1);
      for (const auto* ca : chain) REQUIRE(SSL_CTX_add1_chain_cert(ctx.get(), ca->cert.get()) == 1);
    }
    return ctx;
  }

  Issued client(CertSpec spec) const { return issue_certificate(spec, &intermediate); }

  // The truststore's own object for the intermediate.
  X509* truststore_intermediate() const {
    STACK_OF(X509_OBJECT)* objects = X509_STORE_get0_objects(truststore->store());
    for (int i = 0; i < sk_X509_OBJECT_num(objects); ++i) {
      X509* cert = X509_OBJECT_get0_X509(sk_X509_OBJECT_value(objects, i));
      if (cert && X509_cmp(cert, intermediate.cert.get()) == 0) return cert;
    }
    return nullptr;
  }
};

// Gives every context the same fixed ticket keys, so a ticket one made decrypts in the others.
void share_ticket_keys(std::initializer_list<SSL_CTX*> contexts) {
  unsigned char keys[80];
  for (unsigned i = 0; i < sizeof(keys); ++i) keys[i] = static_cast<unsigned char>(i);
  for (SSL_CTX* ctx : contexts)
    REQUIRE(SSL_CTX_set_tlsext_ticket_keys(ctx, keys, sizeof(keys)) == 1);
}

std::string build_error(const Fixture& fixture) {
  try {
    fixture.server_context();
  } catch (const TlsError& e) {
    return e.what();
  }
  return "no error";
}

// The listener's verified chain cache: it must have one.
ChainCacheStats cache_of(const SSL_CTX* ctx) {
  const auto stats = chain_cache_stats(ctx);
  REQUIRE(stats);
  return *stats;
}

// The name of the provider that decoded the certificate's public key, "built-in" for a key of
// libcrypto's own EC code.
std::string key_provider(X509* cert) {
  EVP_PKEY* key = cert ? X509_get0_pubkey(cert) : nullptr;
  if (!key) return "";
  const OSSL_PROVIDER* provider = EVP_PKEY_get0_provider(key);
  return provider ? OSSL_PROVIDER_get0_name(provider) : "built-in";
}

constexpr int alert_handshake_failure = 40;
constexpr int alert_unsupported_certificate = 43;
constexpr int alert_certificate_revoked = 44;
constexpr int alert_certificate_expired = 45;
constexpr int alert_certificate_unknown = 46;
constexpr int alert_unknown_ca = 48;
constexpr int alert_certificate_required = 116;

}  // namespace

TEST_CASE("a client with a good certificate is accepted", "[server_context]") {
  Fixture f;
  const auto version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
  INFO("version " << std::hex << version);
  const auto server_key = GENERATE(KeyType::ec_p256, KeyType::rsa2048);
  f.use_server_certificate(server_key);
  auto client_spec = leaf_spec("client-1");
  client_spec.key = GENERATE(KeyType::ec_p256, KeyType::rsa2048);
  const auto client = f.client(client_spec);
  const auto server_ctx = f.server_context();
  const auto client_ctx = f.client_context(&client, {&f.intermediate});

  const auto outcome = handshake(server_ctx.get(), client_ctx.get(), version, {"h2", "http/1.1"});
  CHECK(outcome.server_ok);
  CHECK(outcome.client_ok);
  CHECK(outcome.reason.empty());
  CHECK(outcome.version == version);
  CHECK(outcome.alpn == "http/1.1");
  // The server sends its chain file: the client builds a path to the root.
  CHECK(outcome.client_verify_result == X509_V_OK);
  CHECK(outcome.ca_names == std::vector<std::string>{"/CN=Test Root"});
  // The client's certificate was decoded in the trimmed handshake context, an EC key by
  // libcrypto's built-in code.
  REQUIRE(f.builtin_ec_keys);
  CHECK(key_provider(outcome.server_peer.get()) ==
        (client_spec.key == KeyType::ec_p256 ? "built-in" : "portcullis-default"));
}

TEST_CASE("ALPN: http/1.1 or nothing, never a failure", "[server_context]") {
  Fixture f;
  const auto client = f.client(leaf_spec("client-1"));
  const auto server_ctx = f.server_context();
  const auto client_ctx = f.client_context(&client, {&f.intermediate});

  const auto none = handshake(server_ctx.get(), client_ctx.get(), TLS1_3_VERSION, {});
  CHECK(none.server_ok);
  CHECK(none.client_ok);
  CHECK(none.alpn.empty());

  const auto h2_only = handshake(server_ctx.get(), client_ctx.get(), TLS1_3_VERSION, {"h2"});
  CHECK(h2_only.server_ok);
  CHECK(h2_only.client_ok);
  CHECK(h2_only.alpn.empty());
}

TEST_CASE("a client without a certificate is refused: no_certificate", "[server_context]") {
  Fixture f;
  const auto version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
  const auto server_ctx = f.server_context();
  const auto client_ctx = f.client_context(nullptr);
  const auto outcome = handshake(server_ctx.get(), client_ctx.get(), version);
  CHECK_FALSE(outcome.server_ok);
  CHECK_FALSE(outcome.client_ok);
  CHECK(outcome.reason == "no_certificate");
  CHECK(outcome.client_alert ==
        (version == TLS1_3_VERSION ? alert_certificate_required : alert_handshake_failure));
}

TEST_CASE("verification failures are refused with a stable reason", "[server_context]") {
  Fixture f;
  const auto version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
  INFO("version " << std::hex << version);
  const auto server_ctx = f.server_context();

  SECTION("foreign CA: unknown_ca") {
    const auto foreign_root = issue_certificate(ca_spec("Foreign Root"), nullptr);
    const auto foreign = issue_certificate(leaf_spec("client-foreign"), &foreign_root);
    const auto client_ctx = f.client_context(&foreign);
    const auto outcome = handshake(server_ctx.get(), client_ctx.get(), version);
    CHECK_FALSE(outcome.server_ok);
    CHECK_FALSE(outcome.client_ok);
    CHECK(outcome.reason == "unknown_ca");
    CHECK(outcome.client_alert == alert_unknown_ca);
  }
  SECTION("foreign CA that sends its own root: unknown_ca") {
    const auto foreign_root = issue_certificate(ca_spec("Test Root"), nullptr);  // same name
    const auto foreign = issue_certificate(leaf_spec("client-foreign"), &foreign_root);
    const auto client_ctx = f.client_context(&foreign, {&foreign_root});
    const auto outcome = handshake(server_ctx.get(), client_ctx.get(), version);
    CHECK_FALSE(outcome.server_ok);
    CHECK(outcome.reason == "unknown_ca");
  }
  SECTION("expired") {
    auto spec = leaf_spec("client-expired");
    spec.not_before_offset = -std::chrono::hours(48);
    spec.not_after_offset = -std::chrono::hours(24);
    const auto expired = f.client(spec);
    const auto client_ctx = f.client_context(&expired, {&f.intermediate});
    const auto outcome = handshake(server_ctx.get(), client_ctx.get(), version);
    CHECK_FALSE(outcome.server_ok);
    CHECK_FALSE(outcome.client_ok);
    CHECK(outcome.reason == "expired");
    CHECK(outcome.client_alert == alert_certificate_expired);
  }
  SECTION("not yet valid") {
    auto spec = leaf_spec("client-future");
    spec.not_before_offset = std::chrono::hours(24);
    const auto future = f.client(spec);
    const auto client_ctx = f.client_context(&future, {&f.intermediate});
    const auto outcome = handshake(server_ctx.get(), client_ctx.get(), version);
    CHECK_FALSE(outcome.server_ok);
    CHECK(outcome.reason == "not_yet_valid");
  }
  SECTION("serverAuth-only leaf: bad_purpose") {
    const auto noeku = f.client(leaf_spec("client-noeku", Eku::server_auth));
    const auto client_ctx = f.client_context(&noeku, {&f.intermediate});
    const auto outcome = handshake(server_ctx.get(), client_ctx.get(), version);
    CHECK_FALSE(outcome.server_ok);
    CHECK_FALSE(outcome.client_ok);
    CHECK(outcome.reason == "bad_purpose");
    CHECK(outcome.client_alert == alert_unsupported_certificate);
  }
  SECTION("a leaf without EKU is accepted (clientAuth is only required when an EKU is present)") {
    const auto plain = f.client(leaf_spec("client-plain", Eku::none));
    const auto client_ctx = f.client_context(&plain, {&f.intermediate});
    const auto outcome = handshake(server_ctx.get(), client_ctx.get(), version);
    CHECK(outcome.server_ok);
    CHECK(outcome.client_ok);
    CHECK(outcome.reason.empty());
  }
}

TEST_CASE("max_chain_depth counts intermediates: chain_too_long", "[server_context]") {
  Fixture f;
  f.listener.client_auth.max_chain_depth = 1;
  const auto server_ctx = f.server_context();

  // root -> intermediate -> leaf: one intermediate, allowed.
  const auto ok = f.client(leaf_spec("client-short"));
  const auto ok_ctx = f.client_context(&ok, {&f.intermediate});
  const auto accepted = handshake(server_ctx.get(), ok_ctx.get());
  CHECK(accepted.server_ok);
  CHECK(accepted.client_ok);

  // root -> intermediate -> sub -> leaf: two intermediates, one too many.
  const auto sub = issue_certificate(ca_spec("Test Sub CA"), &f.intermediate);
  const auto deep = issue_certificate(leaf_spec("client-deep"), &sub);
  const auto deep_ctx = f.client_context(&deep, {&sub, &f.intermediate});
  const auto refused = handshake(server_ctx.get(), deep_ctx.get());
  CHECK_FALSE(refused.server_ok);
  CHECK_FALSE(refused.client_ok);
  CHECK(refused.reason == "chain_too_long");

  // The same chain passes with a larger limit.
  f.listener.client_auth.max_chain_depth = 2;
  const auto deeper_ctx = f.server_context();
  CHECK(handshake(deeper_ctx.get(), deep_ctx.get()).server_ok);
}

TEST_CASE("the intermediate may come from the client or from the truststore", "[server_context]") {
  Fixture f;
  const auto client = f.client(leaf_spec("client-1"));
  const auto leaf_only = f.client_context(&client);
  const auto with_chain = f.client_context(&client, {&f.intermediate});

  SECTION("truststore holds root and intermediate, client sends its leaf only") {
    const auto server_ctx = f.server_context();
    const auto outcome = handshake(server_ctx.get(), leaf_only.get());
    CHECK(outcome.server_ok);
    CHECK(outcome.client_ok);
  }
  SECTION("truststore holds root and intermediate, client sends both") {
    const auto version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    // Without a verified chain cache too, and served from the cache (twice).
    f.listener.client_auth.chain_cache_size = GENERATE(0, 10000);
    const int handshakes = GENERATE(1, 2);
    INFO("version " << std::hex << version << " chain_cache_size " << std::dec
                    << f.listener.client_auth.chain_cache_size << " handshakes " << handshakes);
    const auto server_ctx = f.server_context();
    if (handshakes == 2) REQUIRE(handshake(server_ctx.get(), with_chain.get(), version).server_ok);
    const auto outcome = handshake(server_ctx.get(), with_chain.get(), version);
    CHECK(outcome.server_ok);
    // The session keeps the truststore's intermediate, not a decoded copy of the client's.
    REQUIRE(outcome.server_peer_chain.size() == 1);
    CHECK(X509_cmp(outcome.server_peer_chain[0].get(), f.intermediate.cert.get()) == 0);
    CHECK(outcome.server_peer_chain[0].get() == f.truststore_intermediate());
  }
  SECTION("truststore holds the root only, client sends the intermediate") {
    f.truststore = Truststore::load(f.dir / "root.pem");
    const auto server_ctx = f.server_context();
    const auto outcome = handshake(server_ctx.get(), with_chain.get());
    CHECK(outcome.server_ok);
    CHECK(outcome.client_ok);
    // Without the intermediate from either side there is no path.
    const auto missing = handshake(server_ctx.get(), leaf_only.get());
    CHECK_FALSE(missing.server_ok);
    CHECK(missing.reason == "unknown_ca");
  }
}

TEST_CASE("the revocation hook", "[server_context][revocation]") {
  Fixture f;
  const auto version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
  INFO("version " << std::hex << version);
  const auto client = f.client(leaf_spec("client-1"));
  const auto client_ctx = f.client_context(&client, {&f.intermediate});
  auto checker = std::make_shared<StubChecker>();
  const auto server_ctx = f.server_context(checker);

  SECTION("good: the leaf is checked against its issuer, CAs are not") {
    const auto outcome = handshake(server_ctx.get(), client_ctx.get(), version);
    CHECK(outcome.server_ok);
    CHECK(outcome.client_ok);
    REQUIRE(checker->calls.size() == 1);
    CHECK(checker->calls[0].subject == "CN=client-1");
    CHECK(checker->calls[0].issuer == "CN=Test Intermediate");
  }
  SECTION("revoked leaf: certificate_revoked alert") {
    checker->leaf_status = revocation::Status::revoked;
    const auto outcome = handshake(server_ctx.get(), client_ctx.get(), version);
    CHECK_FALSE(outcome.server_ok);
    CHECK_FALSE(outcome.client_ok);
    CHECK(outcome.reason == "revoked");
    CHECK(outcome.client_alert == alert_certificate_revoked);
  }
  SECTION("unknown status under a denying policy") {
    checker->leaf_status = revocation::Status::unknown;
    const auto outcome = handshake(server_ctx.get(), client_ctx.get(), version);
    CHECK_FALSE(outcome.server_ok);
    CHECK_FALSE(outcome.client_ok);
    CHECK(outcome.reason == "revocation_unknown");
    CHECK(outcome.client_alert == alert_certificate_unknown);
  }
  SECTION("whole chain: intermediates are checked, the anchor is not") {
    checker->whole_chain = true;
    const auto good = handshake(server_ctx.get(), client_ctx.get(), version);
    CHECK(good.server_ok);
    REQUIRE(checker->calls.size() == 2);
    CHECK(checker->calls[0].subject == "CN=Test Intermediate");
    CHECK(checker->calls[0].issuer == "CN=Test Root");
    CHECK(checker->calls[1].subject == "CN=client-1");

    checker->ca_status = revocation::Status::revoked;
    const auto revoked = handshake(server_ctx.get(), client_ctx.get(), version);
    CHECK_FALSE(revoked.server_ok);
    CHECK(revoked.reason == "revoked");
    CHECK(revoked.client_alert == alert_certificate_revoked);
  }
  SECTION("leaf only: a revoked intermediate is not looked at") {
    checker->ca_status = revocation::Status::revoked;
    const auto outcome = handshake(server_ctx.get(), client_ctx.get(), version);
    CHECK(outcome.server_ok);
  }
  SECTION("the first failure wins") {
    checker->leaf_status = revocation::Status::revoked;
    auto spec = leaf_spec("client-expired");
    spec.not_after_offset = -std::chrono::hours(1);
    const auto expired = f.client(spec);
    const auto expired_ctx = f.client_context(&expired, {&f.intermediate});
    const auto outcome = handshake(server_ctx.get(), expired_ctx.get(), version);
    CHECK(outcome.reason == "expired");
    CHECK(checker->calls.empty());
  }
}

TEST_CASE("a client's chain is verified once; revocation is checked every time",
          "[server_context][revocation]") {
  Fixture f;
  const auto version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
  INFO("version " << std::hex << version);
  const auto client = f.client(leaf_spec("client-1"));
  const auto client_ctx = f.client_context(&client, {&f.intermediate});
  auto checker = std::make_shared<StubChecker>();

  SECTION("the second handshake is served from the cache") {
    const auto server_ctx = f.server_context(checker);
    const auto first = handshake(server_ctx.get(), client_ctx.get(), version);
    const auto second = handshake(server_ctx.get(), client_ctx.get(), version);
    CHECK(first.server_ok);
    CHECK(second.server_ok);
    CHECK(second.client_ok);
    CHECK_FALSE(second.resumed);
    CHECK(cache_of(server_ctx.get()) == ChainCacheStats{1, 1, 1});  // chains, hits, misses
    // The leaf was checked for revocation in both, against its issuer.
    REQUIRE(checker->calls.size() == 2);
    CHECK(checker->calls[1].subject == "CN=client-1");
    CHECK(checker->calls[1].issuer == "CN=Test Intermediate");
    // The session holds the truststore's intermediate, as after a full verification, and the
    // first handshake's decoded leaf instead of a copy of its own.
    REQUIRE(second.server_peer_chain.size() == 1);
    CHECK(second.server_peer_chain[0].get() == f.truststore_intermediate());
    REQUIRE(second.server_peer);
    CHECK(second.server_peer.get() == first.server_peer.get());
    CHECK(X509_cmp(second.server_peer.get(), client.cert.get()) == 0);

    // Revoked since: refused from the cache with the certificate_revoked alert.
    checker->leaf_status = revocation::Status::revoked;
    const auto revoked = handshake(server_ctx.get(), client_ctx.get(), version);
    CHECK_FALSE(revoked.server_ok);
    CHECK_FALSE(revoked.client_ok);
    CHECK(revoked.reason == "revoked");
    CHECK(revoked.client_alert == alert_certificate_revoked);
    // The whole chain, when the checker asks for it.
    checker->leaf_status = revocation::Status::good;
    checker->ca_status = revocation::Status::revoked;
    checker->whole_chain = true;
    checker->calls.clear();
    const auto ca_revoked = handshake(server_ctx.get(), client_ctx.get(), version);
    CHECK_FALSE(ca_revoked.server_ok);
    CHECK(ca_revoked.reason == "revoked");
    REQUIRE(checker->calls.size() == 1);
    CHECK(checker->calls[0].subject == "CN=Test Intermediate");
    CHECK(cache_of(server_ctx.get()) == ChainCacheStats{1, 3, 1});
  }
  SECTION("an intermediate only the client sends") {
    f.truststore = Truststore::load(f.dir / "root.pem");
    const auto server_ctx = f.server_context(checker);
    const auto first = handshake(server_ctx.get(), client_ctx.get(), version);
    const auto second = handshake(server_ctx.get(), client_ctx.get(), version);
    CHECK(first.server_ok);
    CHECK(second.server_ok);
    // Both sessions share one decoded leaf and one decoded intermediate: the first's.
    REQUIRE(first.server_peer);
    REQUIRE(first.server_peer_chain.size() == 1);
    REQUIRE(second.server_peer_chain.size() == 1);
    CHECK(second.server_peer.get() == first.server_peer.get());
    CHECK(second.server_peer_chain[0].get() == first.server_peer_chain[0].get());
    CHECK(X509_cmp(second.server_peer_chain[0].get(), f.intermediate.cert.get()) == 0);
    CHECK(second.server_peer_chain[0].get() != f.intermediate.cert.get());
    // Another client's leaf is its own.
    const auto other = f.client(leaf_spec("client-2"));
    const auto other_ctx = f.client_context(&other, {&f.intermediate});
    const auto third = handshake(server_ctx.get(), other_ctx.get(), version);
    CHECK(third.server_ok);
    REQUIRE(third.server_peer);
    CHECK(third.server_peer.get() != first.server_peer.get());
    CHECK(X509_cmp(third.server_peer.get(), other.cert.get()) == 0);
    // ... and the intermediate both send is one object for both clients' sessions.
    REQUIRE(third.server_peer_chain.size() == 1);
    CHECK(third.server_peer_chain[0].get() == first.server_peer_chain[0].get());
    // Sending the leaf alone is another key, and there is no path without the intermediate.
    const auto leaf_only = f.client_context(&client);
    const auto missing = handshake(server_ctx.get(), leaf_only.get(), version);
    CHECK_FALSE(missing.server_ok);
    CHECK(missing.reason == "unknown_ca");
    CHECK(cache_of(server_ctx.get()) == ChainCacheStats{2, 1, 3});
  }
  SECTION("a refused chain is not kept: expired, again and again") {
    auto spec = leaf_spec("client-expired");
    spec.not_before_offset = -std::chrono::hours(48);
    spec.not_after_offset = -std::chrono::hours(24);
    const auto expired = f.client(spec);
    const auto expired_ctx = f.client_context(&expired, {&f.intermediate});
    const auto server_ctx = f.server_context(checker);
    for (int i = 0; i < 2; ++i) {
      const auto outcome = handshake(server_ctx.get(), expired_ctx.get(), version);
      CHECK_FALSE(outcome.server_ok);
      CHECK(outcome.reason == "expired");
    }
    CHECK(cache_of(server_ctx.get()) == ChainCacheStats{0, 0, 2});
  }
  SECTION("chain_cache_size: 0 verifies every chain afresh") {
    f.listener.client_auth.chain_cache_size = 0;
    const auto server_ctx = f.server_context(checker);
    CHECK(handshake(server_ctx.get(), client_ctx.get(), version).server_ok);
    CHECK(handshake(server_ctx.get(), client_ctx.get(), version).server_ok);
    CHECK_FALSE(chain_cache_stats(server_ctx.get()));
    CHECK(checker->calls.size() == 2);
  }
}

TEST_CASE("sessions resume only under the same session id context", "[server_context]") {
  Fixture f;
  const auto version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
  INFO("version " << std::hex << version);
  // Stateless tickets with shared keys, as a reload keeps them: only the session id context
  // differs. (Sessions in a context's own cache never reach another context.)
  f.listener.tls.session_tickets = true;
  const auto client = f.client(leaf_spec("client-1"));
  const auto client_ctx = f.client_context(&client, {&f.intermediate});
  const auto first_ctx = f.server_context(nullptr, "trust-a");
  const auto same_ctx = f.server_context(nullptr, "trust-a");
  const auto other_ctx = f.server_context(nullptr, "trust-b");
  share_ticket_keys({first_ctx.get(), same_ctx.get(), other_ctx.get()});

  const auto first = handshake(first_ctx.get(), client_ctx.get(), version);
  REQUIRE(first.server_ok);
  REQUIRE(first.session);
  CHECK_FALSE(first.resumed);

  const auto self = handshake(first_ctx.get(), client_ctx.get(), version, {}, first.session.get());
  CHECK(self.resumed);
  const auto again = handshake(same_ctx.get(), client_ctx.get(), version, {}, first.session.get());
  CHECK(again.server_ok);
  CHECK(again.resumed);

  const auto other = handshake(other_ctx.get(), client_ctx.get(), version, {}, first.session.get());
  CHECK(other.server_ok);
  CHECK_FALSE(other.resumed);
}

TEST_CASE("context settings", "[server_context]") {
  Fixture f;
  SECTION("defaults") {
    const auto ctx = f.server_context();
    CHECK(SSL_CTX_get_min_proto_version(ctx.get()) == TLS1_2_VERSION);
    CHECK(SSL_CTX_get_max_proto_version(ctx.get()) == TLS1_3_VERSION);
    const auto options = SSL_CTX_get_options(ctx.get());
    CHECK((options & SSL_OP_NO_RENEGOTIATION) != 0);
    CHECK((options & SSL_OP_CIPHER_SERVER_PREFERENCE) != 0);
    CHECK((options & SSL_OP_NO_COMPRESSION) != 0);
    CHECK(SSL_CTX_get_verify_mode(ctx.get()) ==
          (SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT));
    CHECK(SSL_CTX_get_verify_depth(ctx.get()) == 4);
    // Made in the trimmed handshake context: certificates it reads decode there (the server's
    // P-256 key by libcrypto's built-in EC code, an RSA key by the trimmed context's provider).
    REQUIRE(handshake_library_context() != nullptr);
    CHECK(key_provider(SSL_CTX_get0_certificate(ctx.get())) == "built-in");
    f.use_server_certificate(KeyType::rsa2048);
    CHECK(key_provider(SSL_CTX_get0_certificate(f.server_context().get())) == "portcullis-default");
    // Without shared ticket keys sessions stay in the context's cache; a TLS 1.3 ticket names one.
    // Expired sessions go by remove_expired_sessions, not OpenSSL's walk every 255 handshakes.
    CHECK(SSL_CTX_get_session_cache_mode(ctx.get()) ==
          (SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_AUTO_CLEAR));
    CHECK(SSL_CTX_sess_get_cache_size(ctx.get()) == 20480);
    CHECK((options & SSL_OP_NO_TICKET) != 0);
    CHECK(SSL_CTX_get_num_tickets(ctx.get()) == 1);
    // TLS 1.2 suites: ECDHE with AEAD only.
    SslPtr ssl(SSL_new(ctx.get()));
    STACK_OF(SSL_CIPHER)* ciphers = SSL_get_ciphers(ssl.get());
    for (int i = 0; i < sk_SSL_CIPHER_num(ciphers); ++i) {
      const SSL_CIPHER* cipher = sk_SSL_CIPHER_value(ciphers, i);
      INFO(SSL_CIPHER_get_name(cipher));
      if (std::string(SSL_CIPHER_get_version(cipher)) == "TLSv1.3") continue;
      CHECK(SSL_CIPHER_get_kx_nid(cipher) == NID_kx_ecdhe);
      CHECK(SSL_CIPHER_is_aead(cipher) == 1);
    }
  }
  SECTION("remove_expired_sessions removes only the sessions past their lifetime") {
    const auto ctx = f.server_context();
    const auto client = f.client(leaf_spec("client-1"));
    const auto client_ctx = f.client_context(&client, {&f.intermediate});
    REQUIRE(handshake(ctx.get(), client_ctx.get(), TLS1_2_VERSION).server_ok);
    REQUIRE(SSL_CTX_sess_number(ctx.get()) == 1);
    // One more, made 10 minutes ago with the default 5-minute lifetime.
    SslSessionPtr old(SSL_SESSION_new());
    const unsigned char id[32] = {1, 2, 3};
    REQUIRE(SSL_SESSION_set1_id(old.get(), id, sizeof(id)) == 1);
    REQUIRE(SSL_SESSION_set_timeout(old.get(), 300) == 1);
    REQUIRE(SSL_SESSION_set_time(old.get(), static_cast<long>(std::time(nullptr)) - 600) != 0);
    REQUIRE(SSL_CTX_add_session(ctx.get(), old.get()) == 1);
    REQUIRE(SSL_CTX_sess_number(ctx.get()) == 2);
    CHECK(remove_expired_sessions(ctx.get()) == 1);
    CHECK(SSL_CTX_sess_number(ctx.get()) == 1);
    CHECK(remove_expired_sessions(ctx.get()) == 0);
    CHECK(remove_expired_sessions(nullptr) == 0);
  }
  SECTION("shared ticket keys: stateless tickets") {
    f.listener.tls.session_ticket_keys = f.dir / "tickets.keys";
    write_file(f.listener.tls.session_ticket_keys, std::string(107, 'A') + "=\n");
    const auto ctx = f.server_context();
    CHECK((SSL_CTX_get_options(ctx.get()) & SSL_OP_NO_TICKET) == 0);
    CHECK(SSL_CTX_get_num_tickets(ctx.get()) == 1);
    f.listener.tls.session_tickets = false;  // explicit: the cache, keys or not
    CHECK((SSL_CTX_get_options(f.server_context().get()) & SSL_OP_NO_TICKET) != 0);
  }
  SECTION("no cache and no tickets: nothing resumes, no ticket is sent") {
    f.listener.tls.session_cache_size = 0;
    const auto ctx = f.server_context();
    CHECK(SSL_CTX_get_session_cache_mode(ctx.get()) == SSL_SESS_CACHE_OFF);
    CHECK(SSL_CTX_get_num_tickets(ctx.get()) == 0);
    const auto client = f.client(leaf_spec("client-1"));
    const auto client_ctx = f.client_context(&client, {&f.intermediate});
    for (const int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
      INFO("version " << std::hex << version);
      const auto first = handshake(ctx.get(), client_ctx.get(), version);
      REQUIRE(first.server_ok);
      if (!first.session) continue;  // TLS 1.3: no ticket, so no session to offer
      CHECK_FALSE(handshake(ctx.get(), client_ctx.get(), version, {}, first.session.get()).resumed);
    }
  }
  SECTION("a smaller cache") {
    f.listener.tls.session_cache_size = 100;
    CHECK(SSL_CTX_sess_get_cache_size(f.server_context().get()) == 100);
  }
  SECTION("min_version 1.3") {
    f.listener.tls.min_version = "1.3";
    const auto ctx = f.server_context();
    CHECK(SSL_CTX_get_min_proto_version(ctx.get()) == TLS1_3_VERSION);
    const auto client = f.client(leaf_spec("client-1"));
    const auto client_ctx = f.client_context(&client, {&f.intermediate});
    CHECK_FALSE(handshake(ctx.get(), client_ctx.get(), TLS1_2_VERSION).server_ok);
    CHECK(handshake(ctx.get(), client_ctx.get(), TLS1_3_VERSION).server_ok);
  }
  SECTION("unsupported min_version") {
    f.listener.tls.min_version = "1.1";
    CHECK_THAT(build_error(f), Contains("tls.min_version: '1.1' is not supported"));
  }
  SECTION("groups") {
    f.listener.tls.groups = {"X25519", "P-256"};
    const auto ctx = f.server_context();
    const auto client = f.client(leaf_spec("client-1"));
    const auto client_ctx = f.client_context(&client, {&f.intermediate});
    CHECK(handshake(ctx.get(), client_ctx.get()).server_ok);
  }
  SECTION("every key exchange a listener can be given works in the handshake context") {
    f.listener.tls.groups = {"X25519", "X448", "P-256", "P-384", "P-521", "ffdhe2048"};
    const auto ctx = f.server_context();
    const auto client = f.client(leaf_spec("client-1"));
    // TLS 1.3, where the client's one group is the one used (TLS 1.2 would also need the
    // server certificate's curve in the list).
    for (const char* group : {"X25519", "X448", "P-256", "P-384", "P-521", "ffdhe2048"}) {
      INFO(group);
      const auto client_ctx = f.client_context(&client, {&f.intermediate});
      REQUIRE(SSL_CTX_set1_groups_list(client_ctx.get(), group) == 1);
      const auto outcome = handshake(ctx.get(), client_ctx.get(), TLS1_3_VERSION);
      CHECK(outcome.server_ok);
      CHECK(outcome.client_ok);
    }
  }
  SECTION("a TLS 1.2 CBC cipher, whose record MAC is an HMAC key") {
    f.listener.tls.ciphers = "ECDHE-ECDSA-AES128-SHA256";
    const auto ctx = f.server_context();
    const auto client = f.client(leaf_spec("client-1"));
    const auto client_ctx = f.client_context(&client, {&f.intermediate});
    const auto outcome = handshake(ctx.get(), client_ctx.get(), TLS1_2_VERSION);
    CHECK(outcome.server_ok);
    CHECK(outcome.client_ok);
  }
  SECTION("send_ca_names off") {
    f.listener.client_auth.send_ca_names = false;
    const auto ctx = f.server_context();
    const auto client = f.client(leaf_spec("client-1"));
    const auto client_ctx = f.client_context(&client, {&f.intermediate});
    const auto outcome = handshake(ctx.get(), client_ctx.get());
    CHECK(outcome.server_ok);
    CHECK(outcome.ca_names.empty());
  }
  SECTION("custom ciphers and ciphersuites") {
    f.listener.tls.ciphers = "ECDHE-ECDSA-AES256-GCM-SHA384";
    f.listener.tls.ciphersuites = "TLS_CHACHA20_POLY1305_SHA256";
    const auto ctx = f.server_context();
    SslPtr ssl(SSL_new(ctx.get()));
    std::vector<std::string> names;
    STACK_OF(SSL_CIPHER)* ciphers = SSL_get_ciphers(ssl.get());
    for (int i = 0; i < sk_SSL_CIPHER_num(ciphers); ++i) {
      names.emplace_back(SSL_CIPHER_get_name(sk_SSL_CIPHER_value(ciphers, i)));
    }
    CHECK(names == std::vector<std::string>{"TLS_CHACHA20_POLY1305_SHA256",
                                            "ECDHE-ECDSA-AES256-GCM-SHA384"});
  }
}

TEST_CASE("configuration errors name the file or key", "[server_context]") {
  Fixture f;
  SECTION("key does not match the certificate") {
    const auto other = issue_certificate(leaf_spec("other"), nullptr);
    write_file(f.dir / "other.key", to_pem(other.key.get()), true);
    f.listener.tls.private_key = f.dir / "other.key";
    const auto message = build_error(f);
    CHECK_THAT(message, Contains("listener 'public': tls.private_key: ") &&
                            Contains((f.dir / "other.key").string()) &&
                            Contains((f.dir / "server-chain.pem").string()) &&
                            Contains("does not match"));
  }
  SECTION("key of a different type") {
    auto spec = leaf_spec("rsa");
    spec.key = KeyType::rsa2048;
    const auto other = issue_certificate(spec, nullptr);
    write_file(f.dir / "rsa.key", to_pem(other.key.get()), true);
    f.listener.tls.private_key = f.dir / "rsa.key";
    CHECK_THAT(build_error(f),
               Contains((f.dir / "rsa.key").string()) && Contains("does not match"));
  }
  SECTION("an encrypted key is refused, without asking for a passphrase") {
    EvpPkeyPtr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "prime256v1"));
    REQUIRE(key);
    BioPtr bio(BIO_new(BIO_s_mem()));
    static char passphrase[] = "secret";
    REQUIRE(PEM_write_bio_PKCS8PrivateKey(bio.get(), key.get(), EVP_aes_256_cbc(), passphrase,
                                          sizeof(passphrase) - 1, nullptr, nullptr) == 1);
    char* data = nullptr;
    const long length = BIO_get_mem_data(bio.get(), &data);
    write_file(f.dir / "encrypted.key", std::string(data, static_cast<std::size_t>(length)), true);
    f.listener.tls.private_key = f.dir / "encrypted.key";
    CHECK_THAT(build_error(f), Contains((f.dir / "encrypted.key").string()) &&
                                   Contains("is not an unencrypted PEM private key"));
  }
  SECTION("missing certificate file") {
    f.listener.tls.certificate = f.dir / "nope.pem";
    CHECK_THAT(build_error(f), Contains("tls.certificate: file not found: ") &&
                                   Contains((f.dir / "nope.pem").string()));
  }
  SECTION("certificate file that is not PEM") {
    write_file(f.dir / "junk.pem", "junk\n");
    f.listener.tls.certificate = f.dir / "junk.pem";
    CHECK_THAT(build_error(f), Contains("tls.certificate: ") &&
                                   Contains((f.dir / "junk.pem").string()) &&
                                   Contains("not a PEM certificate chain"));
  }
  SECTION("key file that is not a key") {
    write_file(f.dir / "junk.key", "junk\n");
    f.listener.tls.private_key = f.dir / "junk.key";
    CHECK_THAT(build_error(f),
               Contains("tls.private_key: ") && Contains((f.dir / "junk.key").string()));
  }
  SECTION("unknown group") {
    f.listener.tls.groups = {"X25519", "NoSuchGroup", "P-256"};
    CHECK_THAT(build_error(f),
               Contains("listener 'public': tls.groups: group 'NoSuchGroup' is not available in "
                        "OpenSSL 3."));
  }
  SECTION("post-quantum group on an OpenSSL without it") {
    f.listener.tls.groups = {"X25519MLKEM768", "X25519"};
    CHECK_THAT(build_error(f), Contains("tls.groups: group 'X25519MLKEM768' is not available in "
                                        "OpenSSL 3.0.") &&
                                   Contains("(it needs OpenSSL 3.5 or a provider that offers it)"));
  }
  SECTION("the listener's config key, when given, prefixes the message") {
    f.listener.tls.groups = {"X25519MLKEM768"};
    ServerContextOptions options;
    options.listener = &f.listener;
    options.truststore = f.truststore;
    options.config_key = "listeners[0]";
    CHECK_THROWS_WITH(build_server_context(options),
                      Contains("listeners[0].tls.groups: group 'X25519MLKEM768' is not available "
                               "in OpenSSL 3.0.") &&
                          Contains("(it needs OpenSSL 3.5 or a provider that offers it)"));
  }
  SECTION("invalid cipher list") {
    f.listener.tls.ciphers = "NOT-A-CIPHER";
    CHECK_THAT(build_error(f), Contains("tls.ciphers: 'NOT-A-CIPHER'"));
  }
  SECTION("a negative chain cache size") {
    f.listener.client_auth.chain_cache_size = -1;
    CHECK_THAT(build_error(f), Contains("client_auth.chain_cache_size: -1 is negative"));
  }
  SECTION("no truststore") {
    ServerContextOptions options;
    options.listener = &f.listener;
    CHECK_THROWS_WITH(build_server_context(options), Contains("client_auth.truststore"));
  }
}

TEST_CASE("verify_failure_reason of a null or fresh connection is empty", "[server_context]") {
  Fixture f;
  CHECK(verify_failure_reason(nullptr).empty());
  const auto ctx = f.server_context();
  SslPtr ssl(SSL_new(ctx.get()));
  CHECK(verify_failure_reason(ssl.get()).empty());
}

TEST_CASE("a resumed session skips the chain check only while its stamp holds",
          "[server_context][revocation][resumption]") {
  Fixture f;
  const auto version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
  // Stateless tickets (OpenSSL's own key, or a key file), or sessions in the context's cache
  // (session ids; TLS 1.3 tickets that name a cached session).
  const std::string mode = GENERATE(as<std::string>{}, "tickets", "key file", "cache");
  INFO("version " << std::hex << version << ", " << mode);
  const bool stateless = mode != "cache";
  f.listener.tls.session_tickets = stateless;
  if (mode == "key file") {
    f.listener.tls.session_ticket_keys = f.dir / "tickets.keys";
    write_file(f.listener.tls.session_ticket_keys, std::string(107, 'B') + "=\n");
  }
  const auto client = f.client(leaf_spec("client-1"));
  const auto client_ctx = f.client_context(&client, {&f.intermediate});
  auto checker = std::make_shared<GenerationChecker>();
  const auto server_ctx = f.server_context(checker);

  const auto first = handshake(server_ctx.get(), client_ctx.get(), version);
  REQUIRE(first.server_ok);
  CHECK_FALSE(first.resumed);
  CHECK(first.checked_generation == 7);
  REQUIRE(checker->calls.size() == 1);

  SECTION("unchanged data: resumed with the stamp, the chain is not looked at again") {
    const auto again =
        handshake(server_ctx.get(), client_ctx.get(), version, {}, first.session.get());
    CHECK(again.resumed);
    CHECK(again.checked_generation == 7);
    CHECK(again.stamp_held);
    CHECK(checker->calls.size() == 1);
  }
  SECTION("changed data: the stamp does not hold") {
    checker->current = 8;
    const auto again =
        handshake(server_ctx.get(), client_ctx.get(), version, {}, first.session.get());
    CHECK(again.resumed);
    CHECK_FALSE(again.stamp_held);
    if (version == TLS1_3_VERSION || stateless) {
      // A new ticket is made after a fresh check of the rebuilt chain, and carries it.
      CHECK(again.checked_generation == 8);
      CHECK(checker->calls.size() == 2);
      const auto later =
          handshake(server_ctx.get(), client_ctx.get(), version, {}, again.session.get());
      CHECK(later.resumed);
      CHECK(later.stamp_held);
      CHECK(later.checked_generation == 8);
      CHECK(checker->calls.size() == 2);
    } else {
      // A TLS 1.2 session id keeps its cached session: the connection must check the chain.
      CHECK(again.checked_generation == 0);
    }
  }
  SECTION("changed data and a revoked client: no stamp, the connection refuses it") {
    checker->current = 8;
    checker->leaf_status = revocation::Status::revoked;
    const auto again =
        handshake(server_ctx.get(), client_ctx.get(), version, {}, first.session.get());
    CHECK(again.checked_generation == 0);
  }
  SECTION("a ticket from another context carries no stamp that counts there") {
    if (mode != "tickets") return;  // the shared keys below are OpenSSL's own
    const auto other_ctx = f.server_context(checker);
    share_ticket_keys({server_ctx.get(), other_ctx.get()});
    const auto issued = handshake(server_ctx.get(), client_ctx.get(), version);
    REQUIRE(issued.server_ok);
    const auto calls = checker->calls.size();
    const auto there =
        handshake(other_ctx.get(), client_ctx.get(), version, {}, issued.session.get());
    CHECK(there.resumed);
    CHECK(checker->calls.size() == calls + 1);  // checked again as the new ticket was made
    const auto here =
        handshake(server_ctx.get(), client_ctx.get(), version, {}, issued.session.get());
    CHECK(here.resumed);
    CHECK(here.checked_generation == 7);
    CHECK(here.stamp_held);
    CHECK_FALSE(there.stamp_held);
    CHECK(checker->calls.size() == calls + 1);
  }
}

TEST_CASE("a checker that defers gets no stamps", "[server_context][revocation][resumption]") {
  Fixture f;
  const auto client = f.client(leaf_spec("client-1"));
  const auto client_ctx = f.client_context(&client, {&f.intermediate});
  auto checker = std::make_shared<GenerationChecker>();
  checker->defers = true;
  const auto server_ctx = f.server_context(checker);
  const auto first = handshake(server_ctx.get(), client_ctx.get());
  REQUIRE(first.server_ok);
  const auto again =
      handshake(server_ctx.get(), client_ctx.get(), TLS1_3_VERSION, {}, first.session.get());
  CHECK(again.resumed);
  CHECK(again.checked_generation == 0);
  CHECK_FALSE(again.stamp_held);
}
