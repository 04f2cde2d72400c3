// EC_KEY builds a key with explicit curve parameters, as certificates of some old CAs carry.
#define OPENSSL_SUPPRESS_DEPRECATED 1

#include "portcullis/tls/library_context.hpp"
#include "portcullis/tls/builtin_ec_keys.hpp"
#include "portcullis/tls/openssl.hpp"
#include "portcullis/tls/pki_builder.hpp"

#include <openssl/decoder.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/provider.h>

#include <catch2/catch.hpp>

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

using namespace portcullis::tls;

namespace {

using LibCtxPtr = std::unique_ptr<OSSL_LIB_CTX, OpenSslDeleter<OSSL_LIB_CTX_free>>;

// "EC provider=default,fips=yes,input=der,structure=SubjectPublicKeyInfo", one per decoder.
std::vector<std::string> decoders(OSSL_LIB_CTX* libctx) {
  std::vector<std::string> out;
  OSSL_DECODER_do_all_provided(
      libctx,
      [](OSSL_DECODER* decoder, void* arg) {
        static_cast<std::vector<std::string>*>(arg)->push_back(
            std::string(OSSL_DECODER_get0_name(decoder)) + " " +
            OSSL_DECODER_get0_properties(decoder));
      },
      &out);
  return out;
}

std::vector<std::string> key_managers(OSSL_LIB_CTX* libctx) {
  std::vector<std::string> out;
  EVP_KEYMGMT_do_all_provided(
      libctx,
      [](EVP_KEYMGMT* keymgmt, void* arg) {
        static_cast<std::vector<std::string>*>(arg)->emplace_back(EVP_KEYMGMT_get0_name(keymgmt));
      },
      &out);
  return out;
}

std::string name_of(const std::string& decoder) {
  return decoder.substr(0, decoder.find(' '));
}

bool decodes_der_spki(const std::string& decoder) {
  return decoder.find("input=der") != std::string::npos &&
         decoder.find("structure=SubjectPublicKeyInfo") != std::string::npos;
}

bool contains(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

// Key types no TLS peer of OpenSSL 3.0 authenticates with.
const std::vector<std::string> not_for_tls = {"DH", "DHX", "X25519", "X448", "SM2"};

struct KeyCase {
  const char* name;
  EvpPkeyPtr key;
  const EVP_MD* digest;  // nullptr for EdDSA
};

// A certificate for `key`, as DER, made in the default context: self-signed, or signed by
// `signer`.
std::vector<unsigned char> self_signed_der(EVP_PKEY* key, const EVP_MD* digest,
                                           EVP_PKEY* signer = nullptr) {
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
  REQUIRE(X509_sign(cert.get(), signer ? signer : key, digest) > 0);
  unsigned char* der = nullptr;
  const int length = i2d_X509(cert.get(), &der);
  REQUIRE(length > 0);
  std::vector<unsigned char> out(der, der + length);
  OPENSSL_free(der);
  return out;
}

std::vector<unsigned char> spki_der(X509_PUBKEY* pub) {
  unsigned char* der = nullptr;
  const int length = i2d_X509_PUBKEY(pub, &der);
  REQUIRE(length > 0);
  std::vector<unsigned char> out(der, der + length);
  OPENSSL_free(der);
  return out;
}

// The key encoded afresh as a SubjectPublicKeyInfo, through its own method's encoder.
std::vector<unsigned char> encoded_spki(EVP_PKEY* key) {
  X509_PUBKEY* pub = nullptr;
  REQUIRE(X509_PUBKEY_set(&pub, key) == 1);
  auto out = spki_der(pub);
  X509_PUBKEY_free(pub);
  return out;
}

std::string printed(EVP_PKEY* key) {
  BioPtr out(BIO_new(BIO_s_mem()));
  REQUIRE(out);
  REQUIRE(EVP_PKEY_print_public(out.get(), key, 2, nullptr) == 1);
  char* data = nullptr;
  const long length = BIO_get_mem_data(out.get(), &data);
  return std::string(data, static_cast<std::size_t>(length));
}

EvpPkeyPtr dsa_key() {
  EvpPkeyCtxPtr params_ctx(EVP_PKEY_CTX_new_from_name(nullptr, "DSA", nullptr));
  EVP_PKEY* params = nullptr;
  if (!params_ctx || EVP_PKEY_paramgen_init(params_ctx.get()) != 1 ||
      EVP_PKEY_CTX_set_dsa_paramgen_bits(params_ctx.get(), 1024) != 1 ||
      EVP_PKEY_paramgen(params_ctx.get(), &params) != 1)
    return nullptr;
  EvpPkeyPtr owned_params(params);
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, params, nullptr));
  EVP_PKEY* key = nullptr;
  if (!ctx || EVP_PKEY_keygen_init(ctx.get()) != 1 || EVP_PKEY_generate(ctx.get(), &key) != 1)
    return nullptr;
  return EvpPkeyPtr(key);
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

TEST_CASE("the handshake context offers only the decoders of keys a certificate can sign with",
          "[library_context]") {
  // The test process runs Debian's configuration: the default provider alone.
  REQUIRE(runs_default_provider_only(nullptr));
  OSSL_LIB_CTX* trimmed = handshake_library_context();
  REQUIRE(trimmed != nullptr);
  CHECK(handshake_library_context() == trimmed);  // one for the process

  std::vector<std::string> expected;
  for (const auto& decoder : decoders(nullptr)) {
    if (decodes_der_spki(decoder) && !contains(not_for_tls, name_of(decoder)))
      expected.push_back(decoder);
  }
  const auto kept = decoders(trimmed);
  CHECK(kept == expected);
  CHECK(kept.size() < decoders(nullptr).size());
  std::vector<std::string> kept_names;
  for (const auto& decoder : kept) kept_names.push_back(name_of(decoder));
  // Every key type TLS signs with, and the generic decoder that reads the algorithm identifier.
  for (const char* name : {"EC", "RSA", "RSA-PSS", "ED25519", "ED448", "DSA", "DER"}) {
    INFO(name);
    CHECK(contains(kept_names, name));
  }
  for (const auto& name : not_for_tls) {
    INFO(name);
    CHECK_FALSE(contains(kept_names, name));
  }

  // The default provider is not loaded into it a second time, as a fallback would.
  CHECK(OSSL_PROVIDER_available(trimmed, "default") == 0);
  CHECK(OSSL_PROVIDER_available(trimmed, "portcullis-default") == 1);
}

TEST_CASE("the handshake context offers the key managers TLS uses, not the wrapped KDFs and MACs",
          "[library_context]") {
  OSSL_LIB_CTX* trimmed = handshake_library_context();
  REQUIRE(trimmed != nullptr);
  const std::vector<std::string> unused = {"DHX",    "SM2",     "TLS1-PRF", "HKDF",
                                           "SCRYPT", "SIPHASH", "POLY1305", "CMAC"};
  std::vector<std::string> expected;
  for (const auto& name : key_managers(nullptr)) {
    if (!contains(unused, name)) expected.push_back(name);
  }
  const auto kept = key_managers(trimmed);
  CHECK(kept == expected);
  CHECK(kept.size() < key_managers(nullptr).size());
  // Certificate keys, key exchange (ECDHE, X25519, X448, FFDHE) and the HMAC keys of PSK
  // binders and TLS 1.2 CBC record MACs.
  for (const char* name :
       {"EC", "RSA", "RSA-PSS", "ED25519", "ED448", "DSA", "X25519", "X448", "DH", "HMAC"}) {
    INFO(name);
    CHECK(contains(kept, name));
  }
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
  cases.push_back({"DSA", dsa_key(), EVP_sha256()});

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

TEST_CASE("a certificate for a key TLS does not sign with parses there without its key",
          "[library_context]") {
  OSSL_LIB_CTX* trimmed = handshake_library_context();
  REQUIRE(trimmed != nullptr);
  const EvpPkeyPtr issuer(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  for (const char* type : {"X25519", "X448", "SM2"}) {
    INFO(type);
    const EvpPkeyPtr key(EVP_PKEY_Q_keygen(nullptr, nullptr, type));
    REQUIRE(key);
    const auto der = self_signed_der(key.get(), EVP_sha256(), issuer.get());
    const auto plain = decode_in(nullptr, der);
    const auto cert = decode_in(trimmed, der);
    REQUIRE(plain);
    REQUIRE(EVP_PKEY_is_a(X509_get0_pubkey(plain.get()), type) == 1);
    // Its issuer's signature still checks; it has no key. X25519 and X448 could have signed
    // neither a CertificateVerify nor a certificate below it, SM2 no CertificateVerify in 3.0.
    REQUIRE(cert);
    CHECK(X509_get0_pubkey(cert.get()) == nullptr);
    CHECK(X509_verify(cert.get(), issuer.get()) == 1);
    ERR_clear_error();
  }
}

// Last in this file: built-in EC keys stay on for the rest of the process, and the cases above
// check the provider route, which a process with other providers or engines keeps.
TEST_CASE("with built-in EC keys on, EC certificates decode to built-in keys that verify as before",
          "[library_context][builtin_ec_keys]") {
  OSSL_LIB_CTX* trimmed = handshake_library_context();
  REQUIRE(trimmed != nullptr);
  REQUIRE(use_builtin_ec_keys());
  CHECK(use_builtin_ec_keys());  // once for the process
  // Curves by their short names, as libssl passes them for ECDHE.
  struct EcCase {
    const char* name;
    const char* curve;
    const EVP_MD* digest;
    int bits;
    int signature_size;  // the longest DER ECDSA signature
    EvpPkeyPtr key;
  };
  std::vector<EcCase> cases;
  cases.push_back({"EC P-256", "prime256v1", EVP_sha256(), 256, 72, nullptr});
  cases.push_back({"EC P-384", "secp384r1", EVP_sha384(), 384, 104, nullptr});
  cases.push_back({"EC P-521", "secp521r1", EVP_sha512(), 521, 139, nullptr});
  for (auto& c : cases) c.key.reset(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", c.curve));
  const EvpPkeyPtr stranger(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "prime256v1"));
  REQUIRE(stranger);
  for (const auto& c : cases) {
    INFO(c.name);
    REQUIRE(c.key);
    const auto der = self_signed_der(c.key.get(), c.digest);
    const auto cert = decode_in(trimmed, der);
    REQUIRE(cert);
    EVP_PKEY* key = X509_get0_pubkey(cert.get());
    REQUIRE(key != nullptr);
    CHECK(EVP_PKEY_get0_provider(key) == nullptr);  // libcrypto's own EC key
    CHECK(EVP_PKEY_get_base_id(key) == EVP_PKEY_EC);
    CHECK(EVP_PKEY_eq(key, c.key.get()) == 1);
    CHECK(EVP_PKEY_eq(key, stranger.get()) != 1);
    CHECK(X509_verify(cert.get(), key) == 1);
    CHECK(X509_verify(cert.get(), stranger.get()) != 1);
    const auto signature = sign(c.key.get(), c.digest, "handshake transcript");
    CHECK(verifies(trimmed, key, c.digest, signature, "handshake transcript"));
    CHECK_FALSE(verifies(trimmed, key, c.digest, signature, "another transcript"));
    const auto forged = sign(stranger.get(), c.digest, "handshake transcript");
    CHECK_FALSE(verifies(trimmed, key, c.digest, forged, "handshake transcript"));
    // The public-key functions of the gateway's EC method answer as libcrypto's own.
    CHECK(encoded_spki(key) == spki_der(X509_get_X509_PUBKEY(cert.get())));
    CHECK(EVP_PKEY_get_bits(key) == c.bits);
    CHECK(EVP_PKEY_get_size(key) == c.signature_size);
    const std::string text = printed(key);
    CHECK(text.find("  Public-Key: (" + std::to_string(c.bits) + " bit)\n  pub:\n      04:") == 0);
    CHECK(text.find("  ASN1 OID: " + std::string(c.curve) + "\n") != std::string::npos);
    ERR_clear_error();
  }

  // Keys on other curves, and keys with explicit curve parameters, decode as before too.
  {
    EC_KEY* ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    REQUIRE(ec);
    REQUIRE(EC_KEY_generate_key(ec) == 1);
    EC_KEY_set_asn1_flag(ec, OPENSSL_EC_EXPLICIT_CURVE);
    EvpPkeyPtr explicit_key(EVP_PKEY_new());
    REQUIRE(explicit_key);
    REQUIRE(EVP_PKEY_assign_EC_KEY(explicit_key.get(), ec) == 1);
    std::vector<std::pair<const char*, EvpPkeyPtr>> keys;
    keys.emplace_back("explicit P-256 parameters", std::move(explicit_key));
    keys.emplace_back("EC P-224",
                      EvpPkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "secp224r1")));
    for (auto& [name, original] : keys) {
      INFO(name);
      REQUIRE(original);
      const auto cert = decode_in(trimmed, self_signed_der(original.get(), EVP_sha256()));
      REQUIRE(cert);
      EVP_PKEY* key = X509_get0_pubkey(cert.get());
      REQUIRE(key != nullptr);
      CHECK(EVP_PKEY_eq(key, original.get()) == 1);
      CHECK(X509_verify(cert.get(), key) == 1);
      CHECK(encoded_spki(key) == spki_der(X509_get_X509_PUBKEY(cert.get())));
    }
    const auto explicit_cert =
        decode_in(trimmed, self_signed_der(keys[0].second.get(), EVP_sha256()));
    REQUIRE(explicit_cert);
    REQUIRE(X509_get0_pubkey(explicit_cert.get()) != nullptr);
    CHECK(printed(X509_get0_pubkey(explicit_cert.get())).find("Field Type: prime-field") !=
          std::string::npos);
    ERR_clear_error();
  }

  // A key whose point is not on its curve is refused.
  {
    auto der = self_signed_der(cases[0].key.get(), EVP_sha256());
    const auto spki = spki_der(X509_get_X509_PUBKEY(decode_in(trimmed, der).get()));
    const auto at = std::search(der.begin(), der.end(), spki.begin(), spki.end());
    REQUIRE(at != der.end());
    *(at + static_cast<std::ptrdiff_t>(spki.size()) - 1) ^= 0x01;  // the point's last byte
    const auto cert = decode_in(trimmed, der);
    CHECK((!cert || X509_get0_pubkey(cert.get()) == nullptr));
    ERR_clear_error();
  }

  // A key on the SM2 curve reads as an EC key; what it signs with SM2 does not verify with it.
  {
    const EvpPkeyPtr sm2(EVP_PKEY_Q_keygen(nullptr, nullptr, "SM2"));
    REQUIRE(sm2);
    const auto cert = decode_in(trimmed, self_signed_der(sm2.get(), EVP_sm3()));
    REQUIRE(cert);
    EVP_PKEY* key = X509_get0_pubkey(cert.get());
    REQUIRE(key != nullptr);
    CHECK(EVP_PKEY_get_base_id(key) == EVP_PKEY_EC);
    const auto child = decode_in(trimmed, self_signed_der(stranger.get(), EVP_sm3(), sm2.get()));
    REQUIRE(child);
    CHECK(X509_verify(child.get(), sm2.get()) == 1);  // as SM2 it does
    CHECK(X509_verify(child.get(), key) != 1);
    ERR_clear_error();
  }

  // Every other key type stays with the trimmed context's provider.
  std::vector<KeyCase> others;
  others.push_back({"RSA-2048",
                    EvpPkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048})),
                    EVP_sha256()});
  others.push_back(
      {"Ed25519", EvpPkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519")), nullptr});
  for (const auto& c : others) {
    INFO(c.name);
    REQUIRE(c.key);
    const auto cert = decode_in(trimmed, self_signed_der(c.key.get(), c.digest));
    REQUIRE(cert);
    EVP_PKEY* key = X509_get0_pubkey(cert.get());
    REQUIRE(key != nullptr);
    REQUIRE(EVP_PKEY_get0_provider(key) != nullptr);
    CHECK(std::string_view(OSSL_PROVIDER_get0_name(EVP_PKEY_get0_provider(key))) ==
          "portcullis-default");
    CHECK(X509_verify(cert.get(), key) == 1);
  }
}
