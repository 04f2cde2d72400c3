#include "portcullis/tls/library_context.hpp"
#include "portcullis/tls/openssl.hpp"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>

#include <catch2/catch.hpp>

#include <optional>
#include <string>
#include <vector>

using namespace portcullis::tls;

namespace {

using Bytes = std::vector<unsigned char>;
using KdfPtr = std::unique_ptr<EVP_KDF, OpenSslDeleter<EVP_KDF_free>>;
using KdfCtxPtr = std::unique_ptr<EVP_KDF_CTX, OpenSslDeleter<EVP_KDF_CTX_free>>;

Bytes hex(const std::string& text) {
  Bytes out;
  for (std::size_t i = 0; i + 1 < text.size(); i += 2)
    out.push_back(static_cast<unsigned char>(std::stoi(text.substr(i, 2), nullptr, 16)));
  return out;
}

Bytes random_bytes(std::size_t n) {
  Bytes out(n);
  if (n) REQUIRE(RAND_bytes(out.data(), static_cast<int>(n)) == 1);
  return out;
}

struct Input {
  int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
  std::string digest = "SHA2-256";
  std::optional<Bytes> key, salt, data;
  std::string prefix = "tls13 ", label = "key";
  std::size_t out_size = 32;
};

// The KDF's output, or nothing when it refuses; the mode as a name when mode_name is set.
std::optional<Bytes> derive(OSSL_LIB_CTX* libctx, Input in, const char* mode_name = nullptr) {
  KdfPtr kdf(EVP_KDF_fetch(libctx, OSSL_KDF_NAME_TLS1_3_KDF, nullptr));
  REQUIRE(kdf);
  KdfCtxPtr ctx(EVP_KDF_CTX_new(kdf.get()));
  REQUIRE(ctx);
  std::vector<OSSL_PARAM> params;
  params.push_back(mode_name ? OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_MODE,
                                                                const_cast<char*>(mode_name), 0)
                             : OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &in.mode));
  if (!in.digest.empty())
    params.push_back(OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, in.digest.data(), 0));
  for (auto& [name, value] :
       {std::pair{OSSL_KDF_PARAM_KEY, &in.key}, std::pair{OSSL_KDF_PARAM_SALT, &in.salt},
        std::pair{OSSL_KDF_PARAM_DATA, &in.data}}) {
    if (*value)
      params.push_back(OSSL_PARAM_construct_octet_string(name, (*value)->data(), (*value)->size()));
  }
  params.push_back(
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PREFIX, in.prefix.data(), in.prefix.size()));
  params.push_back(
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_LABEL, in.label.data(), in.label.size()));
  params.push_back(OSSL_PARAM_construct_end());
  Bytes out(in.out_size);
  const bool ok = EVP_KDF_derive(ctx.get(), out.data(), out.size(), params.data()) == 1;
  ERR_clear_error();
  if (!ok) return std::nullopt;
  return out;
}

OSSL_LIB_CTX* handshake_context() {
  OSSL_LIB_CTX* ctx = handshake_library_context();
  REQUIRE(ctx != nullptr);
  return ctx;
}

}  // namespace

TEST_CASE("the handshake context's TLS13-KDF is the gateway's own", "[tls13_kdf]") {
  KdfPtr ours(EVP_KDF_fetch(handshake_context(), OSSL_KDF_NAME_TLS1_3_KDF, nullptr));
  KdfPtr openssl(EVP_KDF_fetch(nullptr, OSSL_KDF_NAME_TLS1_3_KDF, nullptr));
  REQUIRE(ours);
  REQUIRE(openssl);
  CHECK(EVP_KDF_settable_ctx_params(ours.get()) != EVP_KDF_settable_ctx_params(openssl.get()));
  // Every other KDF is the default provider's, through the passthrough.
  KdfPtr hkdf(EVP_KDF_fetch(handshake_context(), OSSL_KDF_NAME_HKDF, nullptr));
  KdfPtr prf(EVP_KDF_fetch(handshake_context(), OSSL_KDF_NAME_TLS1_PRF, nullptr));
  CHECK(hkdf);
  CHECK(prf);
}

TEST_CASE("TLS13-KDF gives RFC 8448's key schedule", "[tls13_kdf]") {
  // RFC 8448 section 3, a simple 1-RTT handshake, SHA-256.
  Input early;
  early.mode = EVP_KDF_HKDF_MODE_EXTRACT_ONLY;
  early.label = "derived";
  const auto early_secret = derive(handshake_context(), early);
  REQUIRE(early_secret);
  CHECK(*early_secret == hex("33ad0a1c607ec03b09e6cd9893680ce210adf300aa1f2660e1b22e10f170f92a"));

  Input handshake = early;
  handshake.salt = *early_secret;
  handshake.key = hex("8bd4054fb55b9d63fdfbacf9f04b9f0d35e6d63f537563efd46272900f89492d");
  CHECK(derive(handshake_context(), handshake) ==
        hex("1dc826e93606aa6fdc0aadc12f741b01046aa6b99f691ed221a9f0ca043fbeac"));

  // The server's handshake traffic key and IV from its traffic secret.
  Input key;
  key.key = hex("b67b7d690cc16c4e75e54213cb2d37b4e9c912bcded9105d42befd59d391ad38");
  key.data = Bytes{};
  key.label = "key";
  key.out_size = 16;
  CHECK(derive(handshake_context(), key) == hex("3fce516009c21727d0f2e4e86ee403bc"));
  key.label = "iv";
  key.out_size = 12;
  CHECK(derive(handshake_context(), key) == hex("5d313eb2671276ee13000b30"));
}

TEST_CASE("TLS13-KDF gives the default provider's bytes for any input", "[tls13_kdf]") {
  for (const std::string digest : {"SHA2-256", "SHA2-384", "SHA2-512"}) {
    const std::size_t size = digest == "SHA2-256" ? 32 : digest == "SHA2-384" ? 48 : 64;
    for (int round = 0; round < 40; ++round) {
      INFO(digest << " round " << round);
      Input in;
      in.digest = digest;
      in.label = std::string(static_cast<std::size_t>(round % 13), 'l');
      if (round % 2 == 0) {
        in.mode = EVP_KDF_HKDF_MODE_EXTRACT_ONLY;
        if (round % 4 == 0) in.key = random_bytes(round % 8 == 0 ? size : 3 + round);
        if (round % 3 != 0) in.salt = random_bytes(size);
        in.out_size = size;
      } else {
        in.key = random_bytes(round % 5 == 0 ? 200 : size);  // longer than a block: hashed
        if (round % 3 != 0) in.data = random_bytes(static_cast<std::size_t>(round) % (size + 1));
        const std::size_t sizes[] = {1, 12, 16, 32, size, 2 * size + 5, 255 * size};
        in.out_size = sizes[static_cast<std::size_t>(round / 2) % 7];
      }
      const auto ours = derive(handshake_context(), in);
      REQUIRE(ours);
      CHECK(ours == derive(nullptr, in));
    }
  }
  SECTION("the mode by name") {
    Input in;
    in.key = random_bytes(32);
    const auto by_name = derive(handshake_context(), in, "EXPAND_ONLY");
    REQUIRE(by_name);
    CHECK(by_name == derive(nullptr, in));
    CHECK(by_name == derive(handshake_context(), in));
  }
}

TEST_CASE("TLS13-KDF refuses what the default provider refuses", "[tls13_kdf]") {
  Input in;
  in.key = random_bytes(32);
  SECTION("extract into anything but the digest's size") {
    in.mode = EVP_KDF_HKDF_MODE_EXTRACT_ONLY;
    in.out_size = 31;
  }
  SECTION("expand with no key") {
    in.key.reset();
  }
  SECTION("expand beyond 255 blocks") {
    in.out_size = 255 * 32 + 1;
  }
  SECTION("no digest") {
    in.digest.clear();
  }
  SECTION("an XOF for a digest") {
    in.digest = "SHAKE-256";
  }
  SECTION("extract and expand, which TLS 1.3 does not use") {
    in.mode = EVP_KDF_HKDF_MODE_EXTRACT_AND_EXPAND;
  }
  CHECK_FALSE(derive(nullptr, in));
  CHECK_FALSE(derive(handshake_context(), in));
}
