#include "portcullis/revocation/serial_set.hpp"
#include "portcullis/revocation/crl_checker.hpp"
#include "portcullis/revocation/revocation_index.hpp"
#include "portcullis/tls/pki_builder.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <random>
#include <set>
#include <thread>

using namespace portcullis;
using revocation::RevocationIndex;
using revocation::Serial;
using revocation::SerialSet;

namespace {

Serial serial_of_bytes(const std::vector<std::uint8_t>& magnitude) {
  return *revocation::serial_from_magnitude(magnitude.data(), magnitude.size());
}

Serial serial_of_number(std::uint64_t n) {
  Serial s{};
  for (int i = 0; i < 8; ++i) s[19 - i] = static_cast<std::uint8_t>(n >> (8 * i));
  return s;
}

// Random serials of 1 to 20 octets, as CAs of every kind issue them.
std::vector<Serial> random_serials(std::size_t n, std::mt19937_64& rng) {
  std::vector<Serial> out;
  for (std::size_t i = 0; i < n; ++i) {
    std::vector<std::uint8_t> bytes(1 + rng() % 20);
    for (auto& b : bytes) b = static_cast<std::uint8_t>(rng());
    bytes[0] |= 1;
    out.push_back(serial_of_bytes(bytes));
  }
  return out;
}

tls::Issued make_ca(const std::string& name) {
  tls::CertSpec spec;
  spec.common_name = name;
  spec.is_ca = true;
  return tls::issue_certificate(spec, nullptr);
}

tls::Issued make_leaf(const tls::Issued& ca, const char* name) {
  tls::CertSpec spec;
  spec.common_name = name;
  return tls::issue_certificate(spec, &ca);
}

// A copy of `cert` carrying another serial (magnitude octets); its signature no longer matters
// to a lookup.
tls::X509Ptr with_serial(X509* cert, const std::vector<std::uint8_t>& magnitude) {
  tls::X509Ptr copy(X509_dup(cert));
  tls::BignumPtr bn(BN_bin2bn(magnitude.data(), static_cast<int>(magnitude.size()), nullptr));
  tls::Asn1IntegerPtr serial(BN_to_ASN1_INTEGER(bn.get(), nullptr));
  X509_set_serialNumber(copy.get(), serial.get());
  return copy;
}

std::shared_ptr<revocation::IssuerRevocations> entry_for(X509* ca, std::vector<Serial> serials) {
  auto entry = std::make_shared<revocation::IssuerRevocations>();
  entry->set_issuer(ca);
  entry->revoked = SerialSet(std::move(serials));
  return entry;
}

}  // namespace

TEST_CASE("a serial set holds exactly the serials it was given", "[revocation][index]") {
  std::mt19937_64 rng(11);
  for (const std::size_t n : {0, 1, 2, 15, 16, 17, 1000, 100'000}) {
    CAPTURE(n);
    auto serials = random_serials(n, rng);
    // Duplicates in the input, as a CRL listing a serial twice would have.
    if (n > 2) serials.push_back(serials[n / 2]);
    const std::set<Serial> expected(serials.begin(), serials.end());
    const SerialSet set(serials);
    REQUIRE(set.size() == expected.size());
    CHECK(set.sorted() == std::vector<Serial>(expected.begin(), expected.end()));
    CHECK(set.empty() == (n == 0));
    for (const auto& s : expected) REQUIRE(set.contains(s));
    std::size_t false_hits = 0;
    for (const auto& s : random_serials(10'000, rng))
      false_hits += !expected.count(s) && set.contains(s);
    CHECK(false_hits == 0);
    // 20 bytes per serial and about a quarter of a byte of directory.
    if (n >= 1000) CHECK(set.memory_bytes() <= set.size() * 21);
  }
}

TEST_CASE("serials that differ only in length or in their last octet are told apart",
          "[revocation][index]") {
  const std::vector<Serial> listed = {serial_of_bytes({0x01}), serial_of_bytes({0x01, 0x00}),
                                      serial_of_bytes({0x7f, 0xff, 0xff, 0xff, 0xff}),
                                      serial_of_bytes(std::vector<std::uint8_t>(20, 0x7f))};
  const SerialSet set(listed);
  for (const auto& s : listed) CHECK(set.contains(s));
  CHECK_FALSE(set.contains(serial_of_bytes({0x02})));
  CHECK_FALSE(set.contains(serial_of_bytes({0x01, 0x01})));
  CHECK_FALSE(set.contains(serial_of_bytes({0x00, 0x01, 0x00, 0x00})));
  CHECK_FALSE(set.contains(serial_of_bytes({0x7f, 0xff, 0xff, 0xff, 0xfe})));
  auto almost = std::vector<std::uint8_t>(20, 0x7f);
  almost[19] = 0x7e;
  CHECK_FALSE(set.contains(serial_of_bytes(almost)));
}

TEST_CASE("sequential serials spread over the buckets", "[revocation][index]") {
  std::vector<Serial> serials;
  for (std::uint64_t i = 1; i <= 200'000; ++i) serials.push_back(serial_of_number(i));
  const SerialSet set(serials);
  REQUIRE(set.size() == 200'000);
  REQUIRE(set.buckets() == 16384);
  CHECK(set.contains(serial_of_number(1)));
  CHECK(set.contains(serial_of_number(200'000)));
  CHECK_FALSE(set.contains(serial_of_number(0)));
  CHECK_FALSE(set.contains(serial_of_number(200'001)));
  // The fullest bucket stays near the mean of ~12, so no lookup scans far.
  CHECK(set.largest_bucket() < 48);
}

TEST_CASE("the index finds issuers by key, over many issuers and without key bits",
          "[revocation][index]") {
  std::vector<tls::Issued> cas;
  for (int i = 0; i < 40; ++i) cas.push_back(make_ca("Issuer " + std::to_string(i)));
  std::vector<tls::Issued> leaves;
  std::vector<std::shared_ptr<const revocation::IssuerRevocations>> entries;
  for (auto& ca : cas) {
    leaves.push_back(make_leaf(ca, "leaf"));
    auto entry = entry_for(ca.cert.get(), {*revocation::serial_of(leaves.back().cert.get())});
    entries.push_back(entry);
  }
  // One entry as an older caller builds it: the key's digest only.
  auto keyless = std::make_shared<revocation::IssuerRevocations>();
  keyless->issuer_key = revocation::key_hash_of(cas.back().cert.get());
  keyless->revoked = SerialSet({*revocation::serial_of(leaves.back().cert.get())});
  entries.back() = keyless;
  const auto uncovered = make_ca("Uncovered");
  const auto stray = make_leaf(uncovered, "stray");
  const RevocationIndex index(entries);

  for (std::size_t i = 0; i < cas.size(); ++i) {
    CAPTURE(i);
    X509* ca = cas[i].cert.get();
    CHECK(index.issuer(ca) == index.issuer(revocation::key_hash_of(ca)));
    REQUIRE(index.issuer(ca) != nullptr);
    CHECK(index.lookup(leaves[i].cert.get(), ca) == RevocationIndex::Result::revoked);
    // Another issuer's revoked serial is good here.
    CHECK(index.lookup(leaves[(i + 1) % cas.size()].cert.get(), ca) ==
          RevocationIndex::Result::good);
  }
  CHECK(index.lookup(stray.cert.get(), uncovered.cert.get()) ==
        RevocationIndex::Result::not_covered);
  CHECK(index.entries() == cas.size());
}

TEST_CASE("a CA certificate sent by the client matches by key, not by object",
          "[revocation][index]") {
  const auto ca = make_ca("Intermediate sent by clients");
  const auto revoked = make_leaf(ca, "revoked");
  const RevocationIndex index(
      {entry_for(ca.cert.get(), {*revocation::serial_of(revoked.cert.get())})});

  // A separately decoded copy, as each handshake decodes the chain the client sends.
  const auto pem = tls::to_pem(ca.cert.get());
  tls::BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  tls::X509Ptr decoded(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  REQUIRE(decoded);
  CHECK(index.lookup(revoked.cert.get(), decoded.get()) == RevocationIndex::Result::revoked);

  // A re-issued CA certificate with the same key (another subject here) still matches.
  tls::X509Ptr reissued(X509_dup(ca.cert.get()));
  X509_NAME_add_entry_by_txt(X509_get_subject_name(reissued.get()), "O", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("Renamed"), -1, -1, 0);
  CHECK(index.lookup(revoked.cert.get(), reissued.get()) == RevocationIndex::Result::revoked);

  // Another key never does.
  const auto other = make_ca("Intermediate sent by clients");
  CHECK(index.lookup(revoked.cert.get(), other.cert.get()) == RevocationIndex::Result::not_covered);
}

TEST_CASE("certificate serials of every length, and beyond 20 octets, are looked up",
          "[revocation][index]") {
  const auto ca = make_ca("Serial lengths CA");
  const auto leaf = make_leaf(ca, "leaf");
  const std::vector<std::vector<std::uint8_t>> listed = {{0x05},
                                                         {0x01, 0x00},
                                                         std::vector<std::uint8_t>(16, 0x42),
                                                         std::vector<std::uint8_t>(20, 0x33)};
  std::vector<Serial> serials;
  for (const auto& bytes : listed) serials.push_back(serial_of_bytes(bytes));
  auto entry = entry_for(ca.cert.get(), serials);
  const std::vector<std::uint8_t> oversized(24, 0x51);
  entry->oversized_serials.emplace_back(oversized.begin(), oversized.end());
  const RevocationIndex index({entry});

  for (const auto& bytes : listed) {
    CAPTURE(bytes.size());
    CHECK(index.lookup(with_serial(leaf.cert.get(), bytes).get(), ca.cert.get()) ==
          RevocationIndex::Result::revoked);
  }
  CHECK(index.lookup(with_serial(leaf.cert.get(), oversized).get(), ca.cert.get()) ==
        RevocationIndex::Result::revoked);
  auto other_oversized = oversized;
  other_oversized.back() = 0x52;
  for (const auto& bytes : std::vector<std::vector<std::uint8_t>>{
           {0x06}, {0x05, 0x00}, std::vector<std::uint8_t>(15, 0x42), other_oversized}) {
    CAPTURE(bytes.size());
    CHECK(index.lookup(with_serial(leaf.cert.get(), bytes).get(), ca.cert.get()) ==
          RevocationIndex::Result::good);
  }
  CHECK(index.entries() == 5);
}

TEST_CASE("an empty CRL covers its issuer and revokes nothing", "[revocation][index]") {
  const auto ca = make_ca("Empty CRL CA");
  const auto leaf = make_leaf(ca, "leaf");
  const RevocationIndex index({entry_for(ca.cert.get(), {})});
  CHECK(index.lookup(leaf.cert.get(), ca.cert.get()) == RevocationIndex::Result::good);
  CHECK(index.entries() == 0);
}

TEST_CASE("lookups stay consistent while indexes are published", "[revocation][policy]") {
  const auto ca = make_ca("Swapped CA");
  const auto revoked = make_leaf(ca, "revoked");
  const auto good = make_leaf(ca, "good");
  std::mt19937_64 rng(5);
  revocation::CrlChecker checker(config::OnUnknown::deny, std::chrono::hours(1));
  const auto make_index = [&] {
    auto serials = random_serials(2000, rng);
    serials.push_back(*revocation::serial_of(revoked.cert.get()));
    return std::make_shared<const RevocationIndex>(
        std::vector<std::shared_ptr<const revocation::IssuerRevocations>>{
            entry_for(ca.cert.get(), std::move(serials))});
  };
  checker.publish(make_index());

  std::atomic<bool> stop{false};
  std::atomic<std::size_t> wrong{0}, done{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 2; ++t) {
    readers.emplace_back([&] {
      while (!stop.load()) {
        wrong +=
            checker.check(revoked.cert.get(), ca.cert.get()).status != revocation::Status::revoked;
        wrong += checker.check(good.cert.get(), ca.cert.get()).status != revocation::Status::good;
        ++done;
      }
    });
  }
  for (int i = 0; i < 200; ++i) checker.publish(make_index());
  stop = true;
  for (auto& r : readers) r.join();
  CHECK(wrong == 0);
  CHECK(done > 0);
  CHECK(checker.current()->issuers().size() == 1);
}
