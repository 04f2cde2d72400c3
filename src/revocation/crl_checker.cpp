#include "portcullis/revocation/crl_checker.hpp"

#include "portcullis/revocation/discovery_queue.hpp"
#include "portcullis/tls/truststore.hpp"

#include <openssl/err.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <stdexcept>
#include <thread>

namespace portcullis::revocation {

namespace {

std::string hex(const unsigned char* data, unsigned int size) {
  std::string out;
  for (unsigned int i = 0; i < size; ++i) out += fmt::format("{:02x}", data[i]);
  return out;
}

[[noreturn]] void fail(const config::IssuerPolicy& policy, std::string_view field,
                       std::string message) {
  throw config::ConfigError({config::Diagnostic{
      policy.file, policy.line, policy.key + "." + std::string(field), std::move(message)}});
}

// The RFC 4514 attributes, written most significant last, as an X.509 Name.
tls::X509NamePtr name_from_rdns(const config::IssuerPolicy& policy) {
  tls::X509NamePtr name(X509_NAME_new());
  if (!name) fail(policy, "subject", "out of memory");
  for (auto it = policy.subject_rdns.rbegin(); it != policy.subject_rdns.rend(); ++it) {
    const auto& [type, value] = *it;
    if (X509_NAME_add_entry_by_txt(name.get(), type.c_str(), MBSTRING_UTF8,
                                   reinterpret_cast<const unsigned char*>(value.data()),
                                   static_cast<int>(value.size()), -1, 0) != 1) {
      ERR_clear_error();
      fail(policy, "subject",
           fmt::format("'{}={}' cannot be put in an X.509 name: {}", type, value,
                       "unknown attribute type or a value its type does not allow"));
    }
  }
  // Computes the canonical encoding now, so comparisons in the verify path never have to.
  if (i2d_X509_NAME(name.get(), nullptr) <= 0) {
    ERR_clear_error();
    fail(policy, "subject", "the name cannot be encoded");
  }
  return name;
}

}  // namespace

std::vector<IssuerRule> resolve_issuer_rules(const std::vector<config::IssuerPolicy>& policies,
                                             const std::vector<X509*>& truststore_cas) {
  std::vector<IssuerRule> rules;
  for (const auto& policy : policies) {
    IssuerRule rule;
    rule.on_unknown = policy.on_unknown;
    rule.mode = policy.mode;
    rule.ocsp_responder = policy.ocsp_responder;
    bool matched = false;
    if (!policy.subject.empty()) {
      rule.subject = name_from_rdns(policy);
      rule.label = "subject " + policy.subject;
      for (X509* ca : truststore_cas) {
        matched = matched || X509_NAME_cmp(X509_get_subject_name(ca), rule.subject.get()) == 0;
      }
    } else {
      rule.label = "sha256 " + policy.sha256;
      for (X509* ca : truststore_cas) {
        unsigned char digest[EVP_MAX_MD_SIZE];
        unsigned int size = 0;
        if (X509_digest(ca, EVP_sha256(), digest, &size) != 1) continue;
        if (hex(digest, size) != policy.sha256) continue;
        matched = true;
        const auto key = key_hash_of(ca);
        if (std::find(rule.keys.begin(), rule.keys.end(), key) == rule.keys.end()) {
          rule.keys.push_back(key);
        }
      }
      if (!matched)
        fail(policy, "sha256", "no CA certificate in the truststores has this fingerprint");
    }
    if (!matched) {
      // Not an error: the CA may be an intermediate that clients send with their certificate.
      spdlog::warn(
          "{}:{}: {}: no CA in the truststores has the {}; the rule applies only to "
          "intermediates that clients present",
          policy.file, policy.line, policy.key, rule.label);
    }
    rules.push_back(std::move(rule));
  }
  return rules;
}

// Holds the active slot's index for the duration of one lookup.
class CrlChecker::ReadGuard {
 public:
  explicit ReadGuard(const CrlChecker& checker) noexcept {
    // seq_cst on both sides: either publish() sees this reader's count when it checks the old
    // slot, or this reader sees that the slot is no longer active and tries again.
    for (;;) {
      const unsigned i = checker.active_.load(std::memory_order_seq_cst);
      slot_ = &checker.slots_[i];
      slot_->readers.fetch_add(1, std::memory_order_seq_cst);
      if (checker.active_.load(std::memory_order_seq_cst) == i) return;
      slot_->readers.fetch_sub(1, std::memory_order_release);
    }
  }
  ~ReadGuard() { slot_->readers.fetch_sub(1, std::memory_order_release); }
  ReadGuard(const ReadGuard&) = delete;
  ReadGuard& operator=(const ReadGuard&) = delete;

  const RevocationIndex& index() const noexcept { return *slot_->index; }

 private:
  Slot* slot_ = nullptr;
};

CrlChecker::CrlChecker(config::OnUnknown on_unknown, config::Duration stale_grace, Clock clock)
    : on_unknown_(on_unknown),
      stale_grace_(stale_grace),
      clock_(clock ? std::move(clock) : Clock([] { return std::chrono::system_clock::now(); })),
      index_(std::make_shared<const RevocationIndex>(
          std::vector<std::shared_ptr<const IssuerRevocations>>{})) {
  slots_[0].index = index_.load();
}

void CrlChecker::set_issuer_rules(std::vector<IssuerRule> rules) {
  rules_ = std::move(rules);
}

void CrlChecker::set_discovery(std::shared_ptr<DiscoveryQueue> queue) {
  discovery_ = std::move(queue);
}

void CrlChecker::publish(std::shared_ptr<const RevocationIndex> index) noexcept {
  const auto drain = [](const Slot& slot) {
    while (slot.readers.load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
  };
  std::lock_guard lock(publish_mutex_);
  index_.store(index, std::memory_order_release);
  const unsigned old = active_.load(std::memory_order_relaxed);
  Slot& next = slots_[old ^ 1];
  // Readers counted on the idle slot are on their way out: it was not active when they checked.
  drain(next);
  next.index = std::move(index);
  // The generation moves before and after the switch: a value read while the switch is under
  // way never equals one read before it or after it (see unchanged_since).
  generation_.fetch_add(1, std::memory_order_acq_rel);
  active_.store(old ^ 1, std::memory_order_seq_cst);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  drain(slots_[old]);
  slots_[old].index.reset();
}

std::shared_ptr<const RevocationIndex> CrlChecker::current() const noexcept {
  return index_.load(std::memory_order_acquire);
}

bool CrlChecker::usable(const std::optional<std::chrono::system_clock::time_point>& next_update,
                        std::chrono::system_clock::time_point now) const noexcept {
  return !next_update || now <= *next_update + stale_grace_;
}

bool CrlChecker::unchanged_since(std::uint64_t generation,
                                 std::chrono::system_clock::time_point checked_at) const noexcept {
  const ReadGuard guard(*this);
  // Read under the guard: a publish after this point is a later generation.
  if (generation != generation_.load(std::memory_order_acquire)) return false;
  const auto now = clock_();
  for (const auto& entry : guard.index().issuers()) {
    if (!entry->next_update) continue;
    // usable() turned false somewhere in (checked_at, now]: that verdict may differ now.
    const auto stale = *entry->next_update + stale_grace_;
    if (checked_at <= stale && stale < now) return false;
  }
  return true;
}

Verdict CrlChecker::lookup(X509* cert, X509* issuer) const noexcept {
  const ReadGuard guard(*this);
  return lookup(guard.index(), cert, issuer);
}

Verdict CrlChecker::lookup(const RevocationIndex& index, X509* cert, X509* issuer) const noexcept {
  const auto* entry = index.issuer(issuer);
  if (!entry) return Verdict{Status::unknown, reason::no_crl_for_issuer};
  // Past nextUpdate a CRL is stale but still enforced within the grace; beyond it, unusable.
  if (!usable(entry->next_update, clock_())) return Verdict{Status::unknown, reason::crl_expired};
  if (RevocationIndex::lookup(*entry, cert) == RevocationIndex::Result::revoked) {
    return Verdict{Status::revoked, reason::revoked};
  }
  return Verdict{Status::good, {}};
}

const IssuerRule* CrlChecker::rule_for(X509* issuer) const noexcept {
  return rules_.empty() ? nullptr : rule_for(issuer, key_hash_of(issuer));
}

const IssuerRule* CrlChecker::rule_for(X509* issuer, const KeyHash& issuer_key) const noexcept {
  for (const auto& rule : rules_) {
    if (rule.subject && X509_NAME_cmp(X509_get_subject_name(issuer), rule.subject.get()) == 0) {
      return &rule;
    }
    if (std::find(rule.keys.begin(), rule.keys.end(), issuer_key) != rule.keys.end()) {
      return &rule;
    }
  }
  return nullptr;
}

config::OnUnknown CrlChecker::on_unknown_for(X509* issuer) const noexcept {
  return on_unknown_for(issuer, key_hash_of(issuer));
}

config::OnUnknown CrlChecker::on_unknown_for(X509* issuer,
                                             const KeyHash& issuer_key) const noexcept {
  const auto* rule = rule_for(issuer, issuer_key);
  return rule ? rule->on_unknown : on_unknown_;
}

Verdict CrlChecker::check(X509* cert, X509* issuer) const noexcept {
  auto verdict = lookup(cert, issuer);
  switch (verdict.status) {
    case Status::good:
      return verdict;
    case Status::revoked:
      counters_[revoked_].fetch_add(1, std::memory_order_relaxed);
      return verdict;
    case Status::unknown:
    case Status::pending:  // never answered by a CRL lookup
      break;
  }
  const bool no_crl = verdict.reason == reason::no_crl_for_issuer;
  // Only here, for an issuer without a usable CRL, is the key's digest needed.
  const auto key = key_hash_of(issuer);
  // The refresher reads the certificate's CRL Distribution Points in the background.
  if (no_crl && discovery_) discovery_->offer(cert, issuer, key);
  if (on_unknown_for(issuer, key) == config::OnUnknown::allow) {
    counters_[no_crl ? allowed_no_crl_ : allowed_expired_].fetch_add(1, std::memory_order_relaxed);
    return Verdict{Status::good,
                   no_crl ? reason::allowed_no_crl_for_issuer : reason::allowed_crl_expired};
  }
  counters_[no_crl ? denied_no_crl_ : denied_expired_].fetch_add(1, std::memory_order_relaxed);
  return verdict;
}

CrlChecker::Counters CrlChecker::counters() const noexcept {
  Counters c;
  c.revoked = counters_[revoked_].load(std::memory_order_relaxed);
  c.denied_no_crl = counters_[denied_no_crl_].load(std::memory_order_relaxed);
  c.denied_expired = counters_[denied_expired_].load(std::memory_order_relaxed);
  c.allowed_no_crl = counters_[allowed_no_crl_].load(std::memory_order_relaxed);
  c.allowed_expired = counters_[allowed_expired_].load(std::memory_order_relaxed);
  return c;
}

}  // namespace portcullis::revocation
