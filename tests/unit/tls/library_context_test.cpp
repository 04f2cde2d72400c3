#include "portcullis/tls/library_context.hpp"
#include "portcullis/tls/openssl.hpp"
#include "portcullis/tls/pki_builder.hpp"

#include <openssl/decoder.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/provider.h>

#include <catch2/catch.hpp>

#include <string>
#include <string_view>
#include <vector>

using namespace portcullis::tls;

namespace {

using LibCtxPtr = std::unique_ptr<OSSL_LIB_CTX, OpenSslDeleter<OSSL_LIB_CTX_free>>;

std::vector<std::string> decoder_properties(OSSL_LIB_CTX* libctx) {
  std::vector<std::string> out;
  OSSL_DECODER_do_all_provided(
      libctx,
      [](OSSL_DECODER* decoder, void* arg) {
        static_cast<std::vector<std::string>*>(arg)->emplace_back(
            OSSL_DECODER_get0_properties(decoder));
      },
      &out);
  return out;
}

bool decodes_der_spki(const std::string& properties) {
  return properties.find("input=der") != std::string::npos &&
         properties.find("structure=SubjectPublicKeyInfo") != std::string::npos;
}

struct KeyCase {
  const char* name;
  EvpPkeyPtr key;
  const EVP_MD* digest;  // nullptr for EdDSA
};

// A self-signed certificate for `key`, as DER, made in the default context.
std::vector<unsigned char> self_signed_der(EVP_PKEY* key, const EVP_MD* digest) {
  X509Ptr cert(X509_new());
  REQUIRE(cert);
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(cert.get()), "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("key test"), -1, -1, 0);
  X509_set_issuer_name(cert.get(), X509_get_subject_name(cert.get()));
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), 0);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 3600);
  REQUIRE(X509_set_pubkey(cert.get(), key) == 1);
  REQUIRE(X509_sign(cert.get(), key, digest) > 0);
  unsigned char* der = nullptr;
  const int length = i2d_X509(cert.get(), &der);
  REQUIRE(length > 0);
  std::vector<unsigned char> out(der, der + length);
  OPENSSL_free(der);
  return out;
}

EvpPkeyPtr generate(const char* type) {
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
  EVP_PKEY* key = nullptr;
  if (!ctx || EVP_PKEY_keygen_init(ctx.get()) != 1 || EVP_PKEY_generate(ctx.get(), &key) != 1)
    return nullptr;
  return EvpPkeyPtr(key);
}

X509Ptr decode_in(OSSL_LIB_CTX* libctx, const std::vector<unsigned char>& der) {
  X509* cert = X509_new_ex(libctx, nullptr);
  REQUIRE(cert);
  const unsigned char* p = der.data();
  if (!d2i_X509(&cert, &p, static_cast<long>(der.size()))) {
    X509_free(cert);
    return nullptr;
  }
  return X509Ptr(cert);
}

std::vector<unsigned char> sign(EVP_PKEY* key, const EVP_MD* digest, std::string_view data) {
  EvpMdCtxPtr md(EVP_MD_CTX_new());
  REQUIRE(EVP_DigestSignInit(md.get(), nullptr, digest, nullptr, key) == 1);
  std::size_t length = 0;
  const auto* bytes = reinterpret_cast<const unsigned char*>(data.data());
  REQUIRE(EVP_DigestSign(md.get(), nullptr, &length, bytes, data.size()) == 1);
  std::vector<unsigned char> signature(length);
  REQUIRE(EVP_DigestSign(md.get(), signature.data(), &length, bytes, data.size()) == 1);
  signature.resize(length);
  return signature;
}

bool verifies(OSSL_LIB_CTX* libctx, EVP_PKEY* key, const EVP_MD* digest,
              const std::vector<unsigned char>& signature, std::string_view data) {
  EvpMdCtxPtr md(EVP_MD_CTX_new());
  const char* digest_name = digest ? EVP_MD_get0_name(digest) : nullptr;
  if (EVP_DigestVerifyInit_ex(md.get(), nullptr, digest_name, libctx, nullptr, key, nullptr) != 1)
    return false;
  return EVP_DigestVerify(md.get(), signature.data(), signature.size(),
                          reinterpret_cast<const unsigned char*>(data.data()), data.size()) == 1;
}

}  // namespace

TEST_CASE("the handshake context offers only the DER SubjectPublicKeyInfo decoders",
          "[library_context]") {
  // The test process runs Debian's configuration: the default provider alone.
  REQUIRE(runs_default_provider_only(nullptr));
  OSSL_LIB_CTX* trimmed = handshake_library_context();
  REQUIRE(trimmed != nullptr);
  CHECK(handshake_library_context() == trimmed);  // one for the process

  std::vector<std::string> expected;
  for (const auto& properties : decoder_properties(nullptr)) {
    if (decodes_der_spki(properties)) expected.push_back(properties);
  }
  REQUIRE(expected.size() >= 6);  // RSA, RSA-PSS, EC, Ed25519, Ed448 and the generic one at least
  const auto kept = decoder_properties(trimmed);
  CHECK(kept == expected);
  CHECK(kept.size() < decoder_properties(nullptr).size());

  // The default provider is not loaded into it a second time, as a fallback would.
  CHECK(OSSL_PROVIDER_available(trimmed, "default") == 0);
  CHECK(OSSL_PROVIDER_available(trimmed, "portcullis-default") == 1);
}

TEST_CASE("certificates decode to the same keys in the handshake context", "[library_context]") {
  OSSL_LIB_CTX* trimmed = handshake_library_context();
  REQUIRE(trimmed != nullptr);
  std::vector<KeyCase> cases;
  cases.push_back(
      {"EC P-256", EvpPkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256")), EVP_sha256()});
  cases.push_back(
      {"EC P-384", EvpPkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-384")), EVP_sha384()});
  cases.push_back({"RSA-2048", EvpPkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048})),
                   EVP_sha256()});
  cases.push_back({"RSA-PSS", generate("RSA-PSS"), EVP_sha256()});
  cases.push_back({"Ed25519", EvpPkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519")), nullptr});
  cases.push_back({"Ed448", EvpPkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED448")), nullptr});

  for (const auto& c : cases) {
    INFO(c.name);
    REQUIRE(c.key);
    const auto der = self_signed_der(c.key.get(), c.digest);
    const auto plain = decode_in(nullptr, der);
    const auto cert = decode_in(trimmed, der);
    REQUIRE(plain);
    REQUIRE(cert);
    EVP_PKEY* key = X509_get0_pubkey(cert.get());
    REQUIRE(key != nullptr);
    CHECK(EVP_PKEY_eq(key, X509_get0_pubkey(plain.get())) == 1);
    CHECK(EVP_PKEY_eq(key, c.key.get()) == 1);
    CHECK(std::string_view(OSSL_PROVIDER_get0_name(EVP_PKEY_get0_provider(key))) ==
          "portcullis-default");
    // The certificate's own signature checks out through the trimmed context's algorithms,
    CHECK(X509_verify(cert.get(), key) == 1);
    // and so does a fresh signature, as a CertificateVerify is checked; a changed message fails.
    const auto signature = sign(c.key.get(), c.digest, "handshake transcript");
    CHECK(verifies(trimmed, key, c.digest, signature, "handshake transcript"));
    CHECK_FALSE(verifies(trimmed, key, c.digest, signature, "another transcript"));
    ERR_clear_error();
  }
}

TEST_CASE("runs_default_provider_only: other providers or FIPS mode keep the default context",
          "[library_context]") {
  LibCtxPtr ctx(OSSL_LIB_CTX_new());
  REQUIRE(ctx);
  struct Loaded {
    std::vector<OSSL_PROVIDER*> providers;
    ~Loaded() {
      for (auto* p : providers) OSSL_PROVIDER_unload(p);
    }
    bool operator()(OSSL_PROVIDER* p) {
      if (p) providers.push_back(p);
      return p != nullptr;
    }
  } load;
  SECTION("nothing loaded: the fallback is the default provider") {
    CHECK(runs_default_provider_only(ctx.get()));
  }
  SECTION("default and base") {
    REQUIRE(load(OSSL_PROVIDER_load(ctx.get(), "default")));
    REQUIRE(load(OSSL_PROVIDER_load(ctx.get(), "base")));
    CHECK(runs_default_provider_only(ctx.get()));
  }
  SECTION("default and legacy") {
    REQUIRE(load(OSSL_PROVIDER_load(ctx.get(), "default")));
    REQUIRE(load(OSSL_PROVIDER_load(ctx.get(), "legacy")));  // Debian's libssl3 ships it
    CHECK_FALSE(runs_default_provider_only(ctx.get()));
  }
  SECTION("base alone") {
    REQUIRE(load(OSSL_PROVIDER_load(ctx.get(), "base")));
    CHECK_FALSE(runs_default_provider_only(ctx.get()));
  }
  SECTION("FIPS mode asked for by default") {
    REQUIRE(load(OSSL_PROVIDER_load(ctx.get(), "default")));
    REQUIRE(EVP_default_properties_enable_fips(ctx.get(), 1) == 1);
    CHECK_FALSE(runs_default_provider_only(ctx.get()));
  }
}
