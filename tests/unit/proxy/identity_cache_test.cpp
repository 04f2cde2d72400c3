#include "portcullis/proxy/identity_cache.hpp"

#include "../tls/test_support.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <catch2/catch.hpp>

using portcullis::proxy::IdentityCache;
using namespace portcullis::tls;
using namespace portcullis::tls::testing;

namespace {

// A TLS 1.3 handshake in memory whose server requires and verifies a client certificate;
// returns the server's end.
struct Pki {
  Issued root = issue_certificate(ca_spec("Cache Root"), nullptr);
  Issued intermediate = issue_certificate(ca_spec("Cache Intermediate"), &root);
  Issued server = issue_certificate(leaf_spec("localhost", Eku::server_auth), &intermediate);

  SslPtr handshake(const Issued* client) const {
    SslCtxPtr server_ctx(SSL_CTX_new(TLS_server_method()));
    SslCtxPtr client_ctx(SSL_CTX_new(TLS_client_method()));
    REQUIRE(SSL_CTX_use_certificate(server_ctx.get(), server.cert.get()) == 1);
    REQUIRE(SSL_CTX_use_PrivateKey(server_ctx.get(), server.key.get()) == 1);
    X509_STORE_add_cert(SSL_CTX_get_cert_store(server_ctx.get()), root.cert.get());
    SSL_CTX_set_verify(server_ctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                       nullptr);
    if (client) {
      REQUIRE(SSL_CTX_use_certificate(client_ctx.get(), client->cert.get()) == 1);
      REQUIRE(SSL_CTX_use_PrivateKey(client_ctx.get(), client->key.get()) == 1);
      REQUIRE(SSL_CTX_add1_chain_cert(client_ctx.get(), intermediate.cert.get()) == 1);
    }
    SslPtr s(SSL_new(server_ctx.get()));
    SslPtr c(SSL_new(client_ctx.get()));
    REQUIRE(connect_in_memory(c.get(), s.get()));
    for (int i = 0; i < 20 && !(SSL_is_init_finished(s.get()) && SSL_is_init_finished(c.get()));
         ++i) {
      SSL_do_handshake(c.get());
      SSL_do_handshake(s.get());
    }
    ERR_clear_error();
    return s;
  }
};

std::string render(const PeerIdentity& id) {
  // The DER is still there when the lines are made; the cached identity drops it.
  CHECK_FALSE(id.leaf_der.empty());
  return "X-Subject: " + id.subject + "\r\n";
}

}  // namespace

TEST_CASE("a returning client gets the identity and header lines it got before",
          "[identity_cache]") {
  const Pki pki;
  const auto alice = issue_certificate(leaf_spec("alice"), &pki.intermediate);
  const auto bob = issue_certificate(leaf_spec("bob"), &pki.intermediate);
  IdentityCache cache(10, render);

  const auto first = cache.get(pki.handshake(&alice).get());
  REQUIRE(first.identity);
  CHECK(first.identity->subject == "CN=alice");
  CHECK(*first.header_lines == "X-Subject: CN=alice\r\n");
  CHECK(first.identity->leaf_der.empty());
  CHECK(first.identity->chain_der.empty());
  CHECK(cache.misses() == 1);

  // Another connection of the same client: the same objects, shared.
  const auto again = cache.get(pki.handshake(&alice).get());
  CHECK(again.identity == first.identity);
  CHECK(again.header_lines == first.header_lines);
  CHECK(cache.hits() == 1);

  // Another client under the same chain: its own entry.
  const auto other = cache.get(pki.handshake(&bob).get());
  CHECK(other.identity->subject == "CN=bob");
  CHECK(*other.header_lines == "X-Subject: CN=bob\r\n");
  CHECK(cache.misses() == 2);
  CHECK(cache.size() == 2);
}

TEST_CASE("the identity cache keeps at most its capacity, least recently used out first",
          "[identity_cache]") {
  const Pki pki;
  const auto a = issue_certificate(leaf_spec("a"), &pki.intermediate);
  const auto b = issue_certificate(leaf_spec("b"), &pki.intermediate);
  const auto c = issue_certificate(leaf_spec("c"), &pki.intermediate);
  IdentityCache cache(2, render);
  cache.get(pki.handshake(&a).get());
  cache.get(pki.handshake(&b).get());
  cache.get(pki.handshake(&a).get());  // a is now the most recent: b goes next
  cache.get(pki.handshake(&c).get());
  CHECK(cache.size() == 2);
  CHECK(cache.hits() == 1);
  cache.get(pki.handshake(&a).get());
  CHECK(cache.hits() == 2);
  cache.get(pki.handshake(&b).get());
  CHECK(cache.hits() == 2);
  CHECK(cache.misses() == 4);
}

TEST_CASE("capacity 0 or no peer certificate: extracted every time, nothing kept",
          "[identity_cache]") {
  const Pki pki;
  const auto a = issue_certificate(leaf_spec("a"), &pki.intermediate);
  IdentityCache none(0, render);
  const auto one = none.get(pki.handshake(&a).get());
  const auto two = none.get(pki.handshake(&a).get());
  CHECK(one.identity->subject == "CN=a");
  CHECK(one.identity != two.identity);
  CHECK(none.size() == 0);
  CHECK(none.hits() == 0);

  IdentityCache cache(10, [](const PeerIdentity& id) { return "X-Subject: " + id.subject; });
  const auto anonymous = cache.get(pki.handshake(nullptr).get());
  REQUIRE(anonymous.identity);
  CHECK(anonymous.identity->subject.empty());
  CHECK(cache.size() == 0);
}
