#include "portcullis/revocation/crl_checker.hpp"

namespace portcullis::revocation {

CrlChecker::CrlChecker(config::OnUnknown on_unknown, config::Duration stale_grace, Clock clock)
    : on_unknown_(on_unknown),
      stale_grace_(stale_grace),
      clock_(clock ? std::move(clock) : Clock([] { return std::chrono::system_clock::now(); })),
      index_(std::make_shared<const RevocationIndex>(
          std::vector<std::shared_ptr<const IssuerRevocations>>{})) {}

void CrlChecker::publish(std::shared_ptr<const RevocationIndex> index) noexcept {
  index_.store(std::move(index), std::memory_order_release);
  generation_.fetch_add(1, std::memory_order_acq_rel);
}

std::shared_ptr<const RevocationIndex> CrlChecker::current() const noexcept {
  return index_.load(std::memory_order_acquire);
}

Verdict CrlChecker::lookup(X509* cert, X509* issuer) const noexcept {
  const auto index = current();
  const auto* entry = index->issuer(key_hash_of(issuer));
  if (!entry) return Verdict{Status::unknown, "no_crl_for_issuer"};
  // Past nextUpdate a CRL is stale but still enforced within the grace; beyond it, unusable.
  if (entry->next_update && clock_() > *entry->next_update + stale_grace_) {
    return Verdict{Status::unknown, "crl_expired"};
  }
  switch (index->lookup(cert, issuer)) {
    case RevocationIndex::Result::revoked:
      return Verdict{Status::revoked, "revoked"};
    case RevocationIndex::Result::good:
      return Verdict{Status::good, ""};
    case RevocationIndex::Result::not_covered:
      break;
  }
  return Verdict{Status::unknown, "no_crl_for_issuer"};
}

Verdict CrlChecker::check(X509* cert, X509* issuer) const noexcept {
  auto verdict = lookup(cert, issuer);
  if (verdict.status == Status::unknown && on_unknown_ == config::OnUnknown::allow) {
    return Verdict{Status::good, "unknown_allowed:" + verdict.reason};
  }
  return verdict;
}

}  // namespace portcullis::revocation
