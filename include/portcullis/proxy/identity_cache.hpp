#pragma once
// The client identities of a listener's recent peers, with their identity header lines, so a
// client that connects again (a new connection or a resumed session) reuses them rather than
// formatting its certificate's names, dates and fingerprints anew for every connection.
// Connections of the same client share one copy.
//
// Keyed by the SHA-256 of the leaf certificate's DER and the SHA-1 of each certificate above it
// in the verified chain (OpenSSL keeps those), so the same leaf under another chain is another
// entry. Holds at most `capacity` entries (client_auth.chain_cache_size); the least recently
// used goes first. A configuration generation has its own: a reload starts empty, with the new
// identity_headers.
// Thread-safety: get() may be called from any thread.

#include "portcullis/tls/peer_identity.hpp"

#include <atomic>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

namespace portcullis::proxy {

struct CachedIdentity {
  std::shared_ptr<const tls::PeerIdentity> identity;  // DER fields emptied
  std::shared_ptr<const std::string> header_lines;    // as prepare_upstream_request takes them
};

class IdentityCache {
 public:
  // From the identity of a verified peer (DER fields still filled): its header lines.
  using Render = std::function<std::string(const tls::PeerIdentity&)>;

  // capacity 0: nothing is kept, every get() extracts.
  IdentityCache(std::size_t capacity, Render render);

  // The identity of ssl's verified peer; an empty identity when it has none.
  CachedIdentity get(const SSL* ssl);

  std::size_t size() const;
  std::uint64_t hits() const noexcept { return hits_.load(std::memory_order_relaxed); }
  std::uint64_t misses() const noexcept { return misses_.load(std::memory_order_relaxed); }

 private:
  CachedIdentity extract(const SSL* ssl) const;

  const std::size_t capacity_;
  const Render render_;
  mutable std::mutex mutex_;
  std::list<std::pair<std::string, CachedIdentity>> entries_;  // most recently used first
  std::unordered_map<std::string, decltype(entries_)::iterator> index_;
  std::atomic<std::uint64_t> hits_{0};
  std::atomic<std::uint64_t> misses_{0};
};

}  // namespace portcullis::proxy
