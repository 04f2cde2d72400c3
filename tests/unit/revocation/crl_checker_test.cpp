#include "portcullis/revocation/crl_checker.hpp"
#include "portcullis/revocation/discovery_queue.hpp"
#include "portcullis/tls/pki_builder.hpp"

#include <catch2/catch.hpp>

using namespace portcullis;
using revocation::CrlChecker;
using revocation::DiscoveryQueue;
using revocation::Status;

namespace {

tls::Issued make_ca(const char* name, std::vector<std::pair<std::string, std::string>> extra = {}) {
  tls::CertSpec spec;
  spec.common_name = name;
  spec.extra_subject = std::move(extra);
  spec.is_ca = true;
  return tls::issue_certificate(spec, nullptr);
}

tls::Issued make_leaf(const tls::Issued& ca, const char* name) {
  tls::CertSpec spec;
  spec.common_name = name;
  return tls::issue_certificate(spec, &ca);
}

config::IssuerPolicy subject_rule(std::vector<std::pair<std::string, std::string>> rdns,
                                  config::OnUnknown on_unknown) {
  config::IssuerPolicy p;
  p.subject = "(test)";
  p.subject_rdns = std::move(rdns);
  p.on_unknown = on_unknown;
  p.file = "test.yaml";
  p.line = 7;
  p.key = "revocation.issuers[0]";
  return p;
}

// An index holding one CRL for `ca` that revokes `revoked` (may be null), with `next_update`.
std::shared_ptr<const revocation::RevocationIndex> index_for(
    X509* ca, X509* revoked, std::chrono::system_clock::time_point next_update) {
  auto entry = std::make_shared<revocation::IssuerRevocations>();
  entry->set_issuer(ca);
  entry->this_update = next_update - std::chrono::hours(2);
  entry->next_update = next_update;
  if (revoked) entry->revoked = revocation::SerialSet({*revocation::serial_of(revoked)});
  return std::make_shared<const revocation::RevocationIndex>(
      std::vector<std::shared_ptr<const revocation::IssuerRevocations>>{entry});
}

}  // namespace

TEST_CASE("per-issuer rules decide unknown; revoked is always denied", "[revocation][policy]") {
  const auto private_ca = make_ca("Private Root", {{"O", "Example"}});
  const auto public_ca = make_ca("Public CA");
  const auto device = make_leaf(private_ca, "device");
  const auto client = make_leaf(public_ca, "client");
  const auto revoked = make_leaf(public_ca, "revoked");

  CrlChecker checker(config::OnUnknown::deny, std::chrono::minutes(1));
  // RFC 4514 order (most significant last), matched whatever the case of the value.
  checker.set_issuer_rules(revocation::resolve_issuer_rules(
      {subject_rule({{"CN", "private root"}, {"O", "Example"}}, config::OnUnknown::allow)},
      {private_ca.cert.get(), public_ca.cert.get()}));

  SECTION("unknown: the rule for the private CA, the global policy for the others") {
    const auto allowed = checker.check(device.cert.get(), private_ca.cert.get());
    CHECK(allowed.status == Status::good);
    CHECK(allowed.reason == "unknown_allowed:no_crl_for_issuer");
    CHECK(checker.check(client.cert.get(), public_ca.cert.get()).status == Status::unknown);
    CHECK(checker.on_unknown_for(private_ca.cert.get()) == config::OnUnknown::allow);
    CHECK(checker.on_unknown_for(public_ca.cert.get()) == config::OnUnknown::deny);
    const auto c = checker.counters();
    CHECK(c.allowed_no_crl == 1);
    CHECK(c.denied_no_crl == 1);
  }

  SECTION("a CRL past its grace is unknown, within it still enforced") {
    const auto now = std::chrono::system_clock::now();
    checker.publish(
        index_for(public_ca.cert.get(), revoked.cert.get(), now - std::chrono::seconds(30)));
    CHECK(checker.check(revoked.cert.get(), public_ca.cert.get()).status == Status::revoked);
    CHECK(checker.check(client.cert.get(), public_ca.cert.get()).status == Status::good);
    checker.publish(
        index_for(public_ca.cert.get(), revoked.cert.get(), now - std::chrono::minutes(5)));
    const auto expired = checker.check(client.cert.get(), public_ca.cert.get());
    CHECK(expired.status == Status::unknown);
    CHECK(expired.reason == "crl_expired");
    CHECK(checker.counters().denied_expired == 1);
  }

  SECTION("a rule allowing unknown never admits a revoked certificate") {
    CrlChecker lenient(config::OnUnknown::allow, std::chrono::hours(1));
    lenient.publish(index_for(public_ca.cert.get(), revoked.cert.get(),
                              std::chrono::system_clock::now() + std::chrono::hours(1)));
    CHECK(lenient.check(revoked.cert.get(), public_ca.cert.get()).status == Status::revoked);
    CHECK(lenient.counters().revoked == 1);
  }
}

TEST_CASE("issuer rules that cannot be used are config errors", "[revocation][policy]") {
  const auto ca = make_ca("Some CA");
  config::IssuerPolicy by_fingerprint;
  by_fingerprint.sha256 = std::string(64, 'a');
  by_fingerprint.file = "test.yaml";
  by_fingerprint.line = 9;
  by_fingerprint.key = "revocation.issuers[1]";
  try {
    revocation::resolve_issuer_rules({by_fingerprint}, {ca.cert.get()});
    FAIL("expected a config error");
  } catch (const config::ConfigError& e) {
    REQUIRE(e.errors().size() == 1);
    CHECK(e.errors()[0].to_string().find("test.yaml:9: revocation.issuers[1].sha256") == 0);
  }
}

TEST_CASE("discovery offers each issuer once and stays bounded", "[revocation][discovery]") {
  DiscoveryQueue queue;
  std::vector<tls::Issued> cas;
  for (std::size_t i = 0; i < DiscoveryQueue::capacity + 5; ++i) {
    cas.push_back(make_ca(("CA " + std::to_string(i)).c_str()));
  }
  const auto leaf = make_leaf(cas[0], "leaf");
  CHECK(
      queue.offer(leaf.cert.get(), cas[0].cert.get(), revocation::key_hash_of(cas[0].cert.get())));
  CHECK_FALSE(
      queue.offer(leaf.cert.get(), cas[0].cert.get(), revocation::key_hash_of(cas[0].cert.get())));
  CHECK(queue.pending());
  auto taken = queue.take();
  REQUIRE(taken.size() == 1);
  CHECK(X509_cmp(taken[0].first.get(), leaf.cert.get()) == 0);
  CHECK_FALSE(queue.pending());
  // Already seen: not offered again after being taken either.
  CHECK_FALSE(
      queue.offer(leaf.cert.get(), cas[0].cert.get(), revocation::key_hash_of(cas[0].cert.get())));
  std::size_t accepted = 0;
  for (std::size_t i = 1; i < cas.size(); ++i) {
    accepted += queue.offer(cas[i].cert.get(), cas[i].cert.get(),
                            revocation::key_hash_of(cas[i].cert.get()));
  }
  CHECK(accepted == DiscoveryQueue::capacity - 1);
  CHECK(queue.take().size() == DiscoveryQueue::capacity - 1);
}

TEST_CASE("unchanged_since holds until the data changes or a CRL goes stale",
          "[revocation][resumption]") {
  const auto ca = make_ca("Stamp CA");
  auto now = std::chrono::system_clock::now();
  CrlChecker checker(config::OnUnknown::deny, std::chrono::minutes(1), [&now] { return now; });
  checker.publish(index_for(ca.cert.get(), nullptr, now + std::chrono::minutes(10)));
  const auto generation = checker.generation();
  const auto checked_at = now;

  SECTION("same data, CRL still usable: unchanged") {
    now += std::chrono::minutes(5);
    CHECK(checker.unchanged_since(generation, checked_at));
  }
  SECTION("any publish, even of the same CRL, is a change") {
    checker.publish(index_for(ca.cert.get(), nullptr, now + std::chrono::minutes(10)));
    CHECK(checker.generation() != generation);
    CHECK_FALSE(checker.unchanged_since(generation, checked_at));
  }
  SECTION("the CRL passed nextUpdate plus the grace since the check: changed") {
    now += std::chrono::minutes(10) + std::chrono::seconds(61);
    CHECK_FALSE(checker.unchanged_since(generation, checked_at));
  }
  SECTION("a CRL already stale at the check stays as it was then") {
    now += std::chrono::minutes(12);
    CHECK(checker.unchanged_since(generation, now));
    now += std::chrono::hours(1);
    CHECK(checker.unchanged_since(generation, now - std::chrono::hours(1)));
  }
  SECTION("a generation that was never this checker's: changed") {
    CHECK_FALSE(checker.unchanged_since(generation + 1, checked_at));
    CHECK_FALSE(checker.unchanged_since(0, checked_at));
  }
}
