#pragma once
// The revocation Checker backed by CRLs: looks certificates up in the current RevocationIndex
// and applies the fail-open / fail-closed policy to anything it cannot decide.
// Thread-safety: check() and current() from any thread, concurrently with publish().

#include "portcullis/config/config.hpp"
#include "portcullis/revocation/checker.hpp"
#include "portcullis/revocation/revocation_index.hpp"

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>

namespace portcullis::revocation {

class CrlChecker : public Checker {
 public:
  using Clock = std::function<std::chrono::system_clock::time_point()>;

  CrlChecker(config::OnUnknown on_unknown, config::Duration stale_grace, Clock clock = {});

  Verdict check(X509* cert, X509* issuer) const noexcept override;
  bool check_whole_chain() const noexcept override { return true; }
  std::uint64_t generation() const noexcept override {
    return generation_.load(std::memory_order_acquire);
  }

  // The verdict before policy: good / revoked / unknown(reason), for check-cert and tests.
  Verdict lookup(X509* cert, X509* issuer) const noexcept;

  void publish(std::shared_ptr<const RevocationIndex> index) noexcept;
  std::shared_ptr<const RevocationIndex> current() const noexcept;

 private:
  config::OnUnknown on_unknown_;
  config::Duration stale_grace_;
  Clock clock_;
  std::atomic<std::shared_ptr<const RevocationIndex>> index_;
  std::atomic<std::uint64_t> generation_{1};
};

}  // namespace portcullis::revocation
