#include "portcullis/revocation/discovery_queue.hpp"

#include <algorithm>

namespace portcullis::revocation {

DiscoveryQueue::~DiscoveryQueue() {
  take();  // releases the references still queued
}

bool DiscoveryQueue::offer(X509* cert, X509* issuer, const KeyHash& issuer_key) noexcept {
  std::unique_lock lock(mutex_, std::try_to_lock);
  if (!lock.owns_lock() || seen_count_ == capacity) return false;
  const auto seen_end = seen_.begin() + static_cast<std::ptrdiff_t>(seen_count_);
  if (std::find(seen_.begin(), seen_end, issuer_key) != seen_end) return false;
  const auto count = pending_count_.load(std::memory_order_relaxed);
  // seen_ only grows and bounds pending_, so there is always room here.
  if (X509_up_ref(cert) != 1) return false;
  if (X509_up_ref(issuer) != 1) {
    X509_free(cert);
    return false;
  }
  seen_[seen_count_++] = issuer_key;
  pending_[count] = {cert, issuer};
  pending_count_.store(count + 1, std::memory_order_release);
  return true;
}

std::vector<std::pair<tls::X509Ptr, tls::X509Ptr>> DiscoveryQueue::take() {
  std::vector<std::pair<tls::X509Ptr, tls::X509Ptr>> out;
  std::lock_guard lock(mutex_);
  const auto count = pending_count_.load(std::memory_order_relaxed);
  out.reserve(count);
  for (std::size_t i = 0; i < count; ++i) {
    out.emplace_back(tls::X509Ptr(pending_[i].first), tls::X509Ptr(pending_[i].second));
    pending_[i] = {nullptr, nullptr};
  }
  pending_count_.store(0, std::memory_order_release);
  return out;
}

}  // namespace portcullis::revocation
