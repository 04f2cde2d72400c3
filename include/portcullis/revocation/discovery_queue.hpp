#pragma once
// Hands certificates whose issuer has no CRL yet from the TLS verify path to the refresher, which
// reads their CRL Distribution Points and fetches them in the background. The verify path only
// takes references to the certificates: no allocation, no I/O, and never a wait (a contended
// lock skips the offer; the next handshake offers again). Each issuer is offered once, and at
// most `capacity` issuers ever, so a client cannot grow the gateway's work or memory.
// Thread-safety: offer() from any thread, concurrently; take() from the refresher's thread.

#include "portcullis/revocation/revocation_index.hpp"
#include "portcullis/tls/openssl.hpp"

#include <array>
#include <atomic>
#include <mutex>
#include <utility>
#include <vector>

namespace portcullis::revocation {

class DiscoveryQueue {
 public:
  static constexpr std::size_t capacity = 64;

  DiscoveryQueue() = default;
  DiscoveryQueue(const DiscoveryQueue&) = delete;
  DiscoveryQueue& operator=(const DiscoveryQueue&) = delete;
  ~DiscoveryQueue();

  // `issuer_key` is key_hash_of(issuer). Returns whether the pair was queued.
  bool offer(X509* cert, X509* issuer, const KeyHash& issuer_key) noexcept;
  // The certificates offered since the last call, as (certificate, issuer).
  std::vector<std::pair<tls::X509Ptr, tls::X509Ptr>> take();
  bool pending() const noexcept { return pending_count_.load(std::memory_order_acquire) != 0; }

 private:
  std::mutex mutex_;
  std::array<KeyHash, capacity> seen_{};
  std::size_t seen_count_ = 0;
  std::array<std::pair<X509*, X509*>, capacity> pending_{};
  std::atomic<std::size_t> pending_count_{0};
};

}  // namespace portcullis::revocation
