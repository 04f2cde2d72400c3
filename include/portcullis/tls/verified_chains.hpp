#pragma once
// Client certificate chains that passed verification, so that a client seen before is not
// verified again. OpenSSL rebuilds the chain and checks every signature in it for each full
// handshake (two ECDSA verifications for a leaf and its intermediate, an eighth of the
// handshake's CPU), though the outcome depends only on the certificates, the truststore, the
// verification settings and the time.
//
// An entry is keyed by the SHA-256 of exactly what the client sent (every certificate, in
// order) and holds the chain it verified to: which of the sent certificates, and the
// truststore's own objects for the rest. A lookup that finds one, with every certificate of
// the chain valid now, skips the build and the signatures; the verify callback is still called
// for every certificate of the chain, anchor first, as X509_verify_cert calls it, so the
// revocation check runs for every handshake as before. Only chains that verified without an
// error are kept, and the oldest unused entry goes first.
//
// An entry also keeps the decoded certificates of the handshake that verified it (or the
// truststore's object, for a sent certificate the truststore holds too). A handshake served
// from the cache takes those objects in place of its own freshly decoded copies, in the
// context's leaf and in its untrusted stack, which libssl keeps as the session's peer
// certificate and chain. Every session of one client then shares one decoded copy (about
// 4 KiB for a leaf and its intermediate), where each cached session held its own. The key
// covers every byte of every certificate sent, so the objects are of identical certificates.
// A CA certificate that clients send and the truststore does not hold is kept once for all the
// entries that include it (matched by X509_cmp: its SHA-1 and its signed part, byte for byte),
// and the sessions of every client share it from their first handshake on. A sent certificate
// that is not part of the chain is not kept: the session has its own copy.
//
// This relies on libssl passing its own stack, which owns a reference to each certificate, as
// the untrusted one; libssl 3.x does, and sharing is off with any other major version. The
// shared objects are used by many sessions on many threads at once: nothing may change them
// (no ex_data, trust or alias setters).
//
// One instance serves one SSL_CTX: its truststore and verification settings are fixed for its
// life (a reload builds a new context, and with it an empty cache).
// Thread-safety: verify() may be called from any number of threads at once.

#include "portcullis/tls/openssl.hpp"

#include <array>
#include <atomic>
#include <cstdint>
#include <ctime>
#include <list>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace portcullis::tls {

class VerifiedChains {
 public:
  // capacity > 0: the most chains kept.
  explicit VerifiedChains(std::size_t capacity);
  ~VerifiedChains();
  VerifiedChains(const VerifiedChains&) = delete;
  VerifiedChains& operator=(const VerifiedChains&) = delete;

  // Verifies the chain of `ctx` (initialised with the client's leaf and, as untrusted, what it
  // sent) as X509_verify_cert does, from the cache when it can. Returns 1 when it verifies and
  // leaves the chain in the context (X509_STORE_CTX_get0_chain); 0 with the context's error
  // set when it does not. Certificates must be valid now, or at the context's fixed time
  // (X509_VERIFY_PARAM_set_time); a context that checks no time is always verified afresh.
  // `shared` (optional) is set when the context's certificates were replaced by shared ones.
  int verify(X509_STORE_CTX* ctx, bool* shared = nullptr);

  std::size_t size() const;
  // Sent CA certificates kept once for all the entries that include them.
  std::size_t shared_cas() const;
  std::uint64_t hits() const noexcept { return hits_.load(std::memory_order_relaxed); }
  std::uint64_t misses() const noexcept { return misses_.load(std::memory_order_relaxed); }

 private:
  using Key = std::array<unsigned char, 32>;
  struct KeyHash {
    std::size_t operator()(const Key& key) const noexcept;
  };
  using Fingerprint = std::array<unsigned char, 20>;  // a certificate's SHA-1
  struct FingerprintHash {
    std::size_t operator()(const Fingerprint& fingerprint) const noexcept;
  };
  // A CA certificate clients send (an intermediate the truststore does not hold), shared by
  // every entry whose chain includes one identical to it (X509_cmp).
  struct SharedCa {
    X509Ptr cert;
    std::size_t users = 0;  // entries
  };
  // One certificate of a verified chain: the entry's shared object for the sent certificate at
  // `sent`, or (sent < 0) `held`.
  struct Link {
    int sent = -1;
    X509Ptr held;
  };
  struct Entry {
    Key key{};
    std::time_t valid_from = 0;    // the latest notBefore in the chain
    std::time_t valid_until = 0;   // the earliest notAfter in the chain (valid while now < it)
    std::vector<Link> chain;       // leaf first, anchor last
    std::vector<X509Ptr> shared;   // one object for each sent certificate, in the order sent
    std::vector<Fingerprint> cas;  // the entries of cas_ it uses
  };

  bool key_of(const std::vector<X509*>& sent, Key& key) const;
  X509StackPtr chain_from_cache(const Key& key, const std::vector<X509*>& sent, std::time_t now,
                                std::vector<X509Ptr>* shared);
  // Keeps the verified `chain` of `sent`; returns the shared objects for `sent` (none when it
  // cannot keep it).
  std::vector<X509Ptr> remember(const Key& key, const std::vector<X509*>& sent,
                                STACK_OF(X509) * chain);

  const std::size_t capacity_;
  EVP_MD* sha256_ = nullptr;
  mutable std::mutex mutex_;
  std::list<Entry> entries_;  // most recently used first
  std::unordered_map<Key, std::list<Entry>::iterator, KeyHash> index_;
  std::unordered_map<Fingerprint, SharedCa, FingerprintHash> cas_;
  std::atomic<std::uint64_t> hits_{0};
  std::atomic<std::uint64_t> misses_{0};
};

}  // namespace portcullis::tls
