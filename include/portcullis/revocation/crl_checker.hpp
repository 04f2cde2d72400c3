#pragma once
// The revocation Checker backed by CRLs: looks certificates up in the current RevocationIndex
// and applies the fail-open / fail-closed policy, global or per issuer, to anything it cannot
// decide. Revoked is always denied.
// Thread-safety: check(), lookup() and current() from any thread, concurrently with publish();
// check() and lookup() take no locks and allocate nothing.
// set_issuer_rules() and set_discovery() configure the checker before its first check and are
// not safe to call while it is in use.

#include "portcullis/config/config.hpp"
#include "portcullis/revocation/checker.hpp"
#include "portcullis/revocation/revocation_index.hpp"
#include "portcullis/tls/openssl.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

namespace portcullis::revocation {

class DiscoveryQueue;

// Verdict reasons: static text, stable names for logs and metrics.
namespace reason {
inline constexpr std::string_view revoked = "revoked";
inline constexpr std::string_view no_crl_for_issuer = "no_crl_for_issuer";
inline constexpr std::string_view crl_expired = "crl_expired";
inline constexpr std::string_view allowed_no_crl_for_issuer = "unknown_allowed:no_crl_for_issuer";
inline constexpr std::string_view allowed_crl_expired = "unknown_allowed:crl_expired";
}  // namespace reason

// A per-issuer override of on_unknown, resolved for allocation-free matching in the verify path:
// the issuer's subject name (compared as X.509 names, so case and string type do not matter),
// or the public keys of the truststore CAs whose certificate has the configured fingerprint.
struct IssuerRule {
  tls::X509NamePtr subject;
  std::vector<KeyHash> keys;
  config::OnUnknown on_unknown = config::OnUnknown::deny;
  std::optional<config::RevocationMode> mode;
  std::string ocsp_responder;
  std::string label;  // "subject CN=Private Root" or "sha256 ab12…", for messages
};

// Turns revocation.issuers into rules. `truststore_cas` are the CAs of every listener's
// truststore, for sha256 rules. Throws config::ConfigError naming file, line and key for a rule
// that cannot be used; logs a warning for a rule that matches no truststore CA.
std::vector<IssuerRule> resolve_issuer_rules(const std::vector<config::IssuerPolicy>& policies,
                                             const std::vector<X509*>& truststore_cas);

class CrlChecker : public Checker {
 public:
  using Clock = std::function<std::chrono::system_clock::time_point()>;

  CrlChecker(config::OnUnknown on_unknown, config::Duration stale_grace, Clock clock = {});

  Verdict check(X509* cert, X509* issuer) const noexcept override;
  bool check_whole_chain() const noexcept override { return true; }
  std::uint64_t generation() const noexcept override {
    return generation_.load(std::memory_order_acquire);
  }
  // Same generation, and no CRL has passed nextUpdate plus the grace since `checked_at`.
  bool unchanged_since(std::uint64_t generation,
                       std::chrono::system_clock::time_point checked_at) const noexcept override;

  // The verdict before policy: good / revoked / unknown(reason), for check-cert and tests.
  Verdict lookup(X509* cert, X509* issuer) const noexcept;
  // What unknown means for certificates issued by `issuer`: the first matching rule, or the
  // global setting.
  config::OnUnknown on_unknown_for(X509* issuer) const noexcept;
  config::OnUnknown on_unknown() const noexcept { return on_unknown_; }
  // The first rule matching `issuer`, or null.
  const IssuerRule* rule_for(X509* issuer) const noexcept;
  // Whether a CRL published with `next_update` can still be used at `now`.
  bool usable(const std::optional<std::chrono::system_clock::time_point>& next_update,
              std::chrono::system_clock::time_point now) const noexcept;

  void set_issuer_rules(std::vector<IssuerRule> rules);
  // Certificates whose issuer has no CRL are offered to `queue` (CRL discovery).
  void set_discovery(std::shared_ptr<DiscoveryQueue> queue);

  // Swaps in a new index. Returns once no verify-path reader uses the previous one, so its
  // memory is released here (on the publishing thread) unless current() callers still hold it.
  void publish(std::shared_ptr<const RevocationIndex> index) noexcept;
  // For status and tools; the verify path reads the index without touching a reference count.
  std::shared_ptr<const RevocationIndex> current() const noexcept;

  // Certificates refused by check(), and unknown ones admitted by policy, by reason.
  struct Counters {
    std::uint64_t revoked = 0, denied_no_crl = 0, denied_expired = 0, allowed_no_crl = 0,
                  allowed_expired = 0;
  };
  Counters counters() const noexcept;

 private:
  Verdict lookup(const RevocationIndex& index, X509* cert, X509* issuer) const noexcept;
  config::OnUnknown on_unknown_for(X509* issuer, const KeyHash& issuer_key) const noexcept;
  const IssuerRule* rule_for(X509* issuer, const KeyHash& issuer_key) const noexcept;

  // The verify path reads the index through two slots with a reader count each, not through
  // std::atomic<std::shared_ptr> (which libstdc++ implements with a spin lock, and whose
  // reference count every io thread would write): a reader counts itself in on the active slot
  // and proceeds if that slot is still active; publish() fills the idle slot, makes it active
  // and waits for the previous slot's readers to leave before releasing the old index.
  struct alignas(64) Slot {
    std::atomic<std::uint64_t> readers{0};
    std::shared_ptr<const RevocationIndex> index;
  };
  class ReadGuard;

  enum Counter { revoked_, denied_no_crl_, denied_expired_, allowed_no_crl_, allowed_expired_ };

  config::OnUnknown on_unknown_;
  config::Duration stale_grace_;
  Clock clock_;
  std::vector<IssuerRule> rules_;
  std::shared_ptr<DiscoveryQueue> discovery_;
  std::atomic<std::shared_ptr<const RevocationIndex>> index_;
  mutable std::array<Slot, 2> slots_;
  std::atomic<unsigned> active_{0};
  std::mutex publish_mutex_;
  std::atomic<std::uint64_t> generation_{1};
  mutable std::array<std::atomic<std::uint64_t>, 5> counters_{};
};

}  // namespace portcullis::revocation
