#include "portcullis/tls/truststore.hpp"

#include "portcullis/tls/pki_builder.hpp"
#include "test_support.hpp"

#include <fmt/format.h>
#include <openssl/err.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>

using namespace portcullis::tls;
using namespace portcullis::tls::testing;
using Catch::Matchers::Contains;

namespace {

// Re-signs after a test has tampered with a certificate.
void resign(X509* cert, EVP_PKEY* key, const EVP_MD* md = EVP_sha256()) {
  REQUIRE(X509_sign(cert, key, md) > 0);
}

void replace_extension(X509* cert, int nid, const char* value) {
  const int index = X509_get_ext_by_NID(cert, nid, -1);
  if (index >= 0) X509_EXTENSION_free(X509_delete_ext(cert, index));
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, cert, cert, nullptr, nullptr, 0);
  X509ExtensionPtr ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
  REQUIRE(ext);
  REQUIRE(X509_add_ext(cert, ext.get(), -1) == 1);
}

std::size_t count_matching(const std::vector<std::string>& warnings, const std::string& who,
                           const std::string& what) {
  return static_cast<std::size_t>(
      std::count_if(warnings.begin(), warnings.end(), [&](const auto& w) {
        return w.find(who) != std::string::npos && w.find(what) != std::string::npos;
      }));
}

std::string all_of(const std::vector<std::string>& warnings) {
  std::string out;
  for (const auto& w : warnings) out += w + "\n";
  return out;
}

struct Pki {
  Issued root = issue_certificate(ca_spec("Trust Root"), nullptr);
  Issued intermediate = issue_certificate(ca_spec("Trust Intermediate"), &root);
};

std::string load_error(const std::filesystem::path& path) {
  try {
    Truststore::load(path);
  } catch (const TlsError& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST_CASE("truststore loads a root and an intermediate", "[truststore]") {
  TempDir dir;
  Pki pki;
  const auto file = dir / "trust.pem";
  write_file(file, pem_of({&pki.root, &pki.intermediate}));
  const auto trust = Truststore::load(file);

  const auto& summary = trust->summary();
  CHECK(summary.path == file);
  CHECK(summary.certificates == 2);
  CHECK(summary.roots == 1);
  CHECK(summary.intermediates == 1);
  CHECK(summary.warnings.empty());
  INFO(all_of(summary.warnings));
  REQUIRE(trust->certificates().size() == 2);
  REQUIRE(trust->roots().size() == 1);
  CHECK(X509_cmp(trust->roots()[0], pki.root.cert.get()) == 0);
  CHECK(subject_of(pki.root.cert.get()) == "CN=Trust Root");

  SECTION("digest is SHA-256 over the DER certificates in file order") {
    EvpMdCtxPtr md(EVP_MD_CTX_new());
    EVP_DigestInit_ex(md.get(), EVP_sha256(), nullptr);
    for (X509* cert : {pki.root.cert.get(), pki.intermediate.cert.get()}) {
      unsigned char* der = nullptr;
      const int len = i2d_X509(cert, &der);
      EVP_DigestUpdate(md.get(), der, static_cast<std::size_t>(len));
      OPENSSL_free(der);
    }
    unsigned char out[32];
    unsigned int out_len = 0;
    EVP_DigestFinal_ex(md.get(), out, &out_len);
    std::string expected;
    for (unsigned i = 0; i < out_len; ++i) expected += fmt::format("{:02x}", out[i]);
    CHECK(trust->digest() == expected);

    write_file(dir / "reordered.pem", pem_of({&pki.intermediate, &pki.root}));
    CHECK(Truststore::load(dir / "reordered.pem")->digest() != trust->digest());
  }

  SECTION("the store verifies a client chain through the held intermediate") {
    const auto leaf = issue_certificate(leaf_spec("client"), &pki.intermediate);
    X509StoreCtxPtr ctx(X509_STORE_CTX_new());
    REQUIRE(X509_STORE_CTX_init(ctx.get(), trust->store(), leaf.cert.get(), nullptr) == 1);
    X509_STORE_CTX_set_purpose(ctx.get(), X509_PURPOSE_SSL_CLIENT);
    CHECK(X509_verify_cert(ctx.get()) == 1);
    CHECK(X509_STORE_CTX_get_error(ctx.get()) == X509_V_OK);
  }

  SECTION("an intermediate alone is not an anchor") {
    write_file(dir / "intermediate-only.pem", pem_of({&pki.intermediate}));
    const auto partial = Truststore::load(dir / "intermediate-only.pem");
    const auto leaf = issue_certificate(leaf_spec("client"), &pki.intermediate);
    X509StoreCtxPtr ctx(X509_STORE_CTX_new());
    REQUIRE(X509_STORE_CTX_init(ctx.get(), partial->store(), leaf.cert.get(), nullptr) == 1);
    CHECK(X509_verify_cert(ctx.get()) != 1);
    ERR_clear_error();
    CHECK(partial->summary().roots == 0);
    CHECK(count_matching(partial->summary().warnings, "no self-signed root", "") == 1);
  }
}

TEST_CASE("truststore warnings, one per problem, naming the certificate", "[truststore]") {
  TempDir dir;
  const auto file = dir / "trust.pem";
  Pki pki;
  std::vector<std::string> warnings;
  const auto load = [&](const std::string& pem) {
    write_file(file, pem);
    auto trust = Truststore::load(file);
    warnings = trust->summary().warnings;
    INFO(all_of(warnings));
    return trust;
  };

  SECTION("clean bundle has no warnings") {
    load(pem_of({&pki.root, &pki.intermediate}));
    CHECK(warnings.empty());
  }
  SECTION("expired CA") {
    auto spec = ca_spec("Old Intermediate");
    spec.not_before_offset = -std::chrono::hours(48);
    spec.not_after_offset = -std::chrono::hours(24);
    const auto old = issue_certificate(spec, &pki.root);
    load(pem_of({&pki.root, &old}));
    CHECK(count_matching(warnings, "CN=Old Intermediate", "expired on") == 1);
    CHECK(warnings.size() == 1);
  }
  SECTION("not yet valid CA") {
    auto spec = ca_spec("Future Root");
    spec.not_before_offset = std::chrono::hours(24);
    const auto future = issue_certificate(spec, nullptr);
    load(pem_of({&future}));
    CHECK(count_matching(warnings, "CN=Future Root", "not valid before") == 1);
    CHECK(warnings.size() == 1);
  }
  SECTION("not a CA: CA:FALSE and basicConstraints absent") {
    const auto leaf = issue_certificate(leaf_spec("Some Leaf"), &pki.intermediate);
    auto bare = issue_certificate(ca_spec("Bare Intermediate"), &pki.root);
    X509_EXTENSION_free(X509_delete_ext(
        bare.cert.get(), X509_get_ext_by_NID(bare.cert.get(), NID_basic_constraints, -1)));
    resign(bare.cert.get(), pki.root.key.get());
    load(pem_of({&pki.root, &pki.intermediate, &leaf, &bare}));
    CHECK(count_matching(warnings, "CN=Some Leaf",
                         "not a CA certificate (basicConstraints CA:FALSE)") == 1);
    CHECK(count_matching(warnings, "CN=Bare Intermediate",
                         "not a CA certificate (basicConstraints absent)") == 1);
    CHECK(warnings.size() == 2);
  }
  SECTION("duplicate") {
    const auto trust = load(pem_of({&pki.root, &pki.intermediate, &pki.root}));
    CHECK(count_matching(warnings, "CN=Trust Root", "duplicate certificate (line") == 1);
    CHECK(warnings.size() == 1);
    CHECK(trust->summary().certificates == 2);
    CHECK(trust->summary().roots == 1);
    CHECK(trust->certificates().size() == 2);
    CHECK(trust->roots().size() == 1);
  }
  SECTION("intermediate whose issuer is missing") {
    load(pem_of({&pki.intermediate}));
    CHECK(count_matching(warnings, "CN=Trust Intermediate",
                         "its issuer (CN=Trust Root) is not in the truststore") == 1);
  }
  SECTION("weak RSA key") {
    auto weak = issue_certificate(ca_spec("Weak Root"), nullptr);
    EvpPkeyPtr small(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{1024}));
    REQUIRE(small);
    X509_set_pubkey(weak.cert.get(), small.get());
    resign(weak.cert.get(), small.get());
    load(pem_of({&weak}));
    CHECK(count_matching(warnings, "CN=Weak Root", "weak key (RSA 1024 bits)") == 1);
    CHECK(warnings.size() == 1);
  }
  SECTION("weak signature") {
    auto sha1 = issue_certificate(ca_spec("SHA1 Intermediate"), &pki.root);
    resign(sha1.cert.get(), pki.root.key.get(), EVP_sha1());
    load(pem_of({&pki.root, &sha1}));
    CHECK(count_matching(warnings, "CN=SHA1 Intermediate",
                         "weak signature algorithm (ecdsa-with-SHA1)") == 1);
    CHECK(warnings.size() == 1);
  }
  SECTION("CA without keyCertSign") {
    auto ca = issue_certificate(ca_spec("Signless CA"), &pki.root);
    replace_extension(ca.cert.get(), NID_key_usage, "critical,digitalSignature,cRLSign");
    resign(ca.cert.get(), pki.root.key.get());
    load(pem_of({&pki.root, &ca}));
    CHECK(count_matching(warnings, "CN=Signless CA", "keyUsage lacks keyCertSign") == 1);
    CHECK(warnings.size() == 1);
  }
  SECTION("non-certificate PEM blocks are ignored with a warning") {
    const auto cert_pem = pem_of({&pki.root});
    const auto key_line = std::count(cert_pem.begin(), cert_pem.end(), '\n') + 1;
    const auto trust = load(cert_pem + to_pem(pki.root.key.get()));
    CHECK(count_matching(warnings, fmt::format("line {}: ", key_line),
                         "ignored a 'PRIVATE KEY' PEM block") == 1);
    CHECK(warnings.size() == 1);
    CHECK(trust->summary().certificates == 1);
  }
}

TEST_CASE("truststore load errors name the file", "[truststore]") {
  TempDir dir;
  const auto missing = dir / "missing.pem";
  CHECK_THAT(load_error(missing), Contains(missing.string()) && Contains("not found"));

  const auto empty = dir / "empty.pem";
  write_file(empty, "");
  CHECK_THAT(load_error(empty), Contains(empty.string()) && Contains("contains no certificates"));

  const auto garbage = dir / "garbage.pem";
  write_file(garbage, "this is not a certificate\n\x01\x02\x03 at all\n");
  CHECK_THAT(load_error(garbage),
             Contains(garbage.string()) && Contains("contains no certificates"));

  CHECK_THAT(load_error(dir.path()), Contains(dir.path().string()) && Contains("directory"));

  Pki pki;
  const auto good = to_pem(pki.root.cert.get());
  const auto corrupt = dir / "corrupt.pem";
  std::string broken = good;
  broken[broken.find('\n') + 10] = '!';
  write_file(corrupt, good + "\n" + broken);
  const auto lines_before =
      static_cast<std::size_t>(std::count(good.begin(), good.end(), '\n')) + 1;
  CHECK_THAT(load_error(corrupt),
             Contains(corrupt.string()) &&
                 Contains(fmt::format("line {}: certificate #2 does not parse", lines_before + 1)));

  const auto truncated = dir / "truncated.pem";
  write_file(truncated, good + good.substr(0, good.size() / 2));
  CHECK_THAT(
      load_error(truncated),
      Contains(truncated.string()) &&
          Contains(fmt::format("line {}: PEM block 'CERTIFICATE' has no END line", lines_before)));
}

// Load time at this size is a benchmark figure (bench/), not a unit-test assertion: a shared CI
// machine cannot time it reliably.
TEST_CASE("a 2000-CA truststore loads and is classified", "[truststore]") {
  TempDir dir;
  const auto root = issue_certificate(ca_spec("Bulk Root"), nullptr);
  std::string pem = to_pem(root.cert.get());
  for (int i = 0; i < 1999; ++i) {
    const auto ca = issue_certificate(ca_spec(fmt::format("Bulk Intermediate {}", i)), &root);
    pem += to_pem(ca.cert.get());
  }
  write_file(dir / "bulk.pem", pem);

  const auto trust = Truststore::load(dir / "bulk.pem");
  CHECK(trust->summary().certificates == 2000);
  CHECK(trust->summary().roots == 1);
  CHECK(trust->summary().intermediates == 1999);
  CHECK(trust->summary().warnings.empty());
}
