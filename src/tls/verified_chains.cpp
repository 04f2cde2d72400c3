#include "portcullis/tls/verified_chains.hpp"

#include <openssl/crypto.h>
#include <openssl/opensslv.h>

#include <algorithm>
#include <cstring>
#include <optional>

namespace portcullis::tls {

namespace {

// What the client sent: its leaf first, then the rest in its order (libssl passes the leaf
// among the untrusted certificates too).
std::vector<X509*> sent_certificates(X509_STORE_CTX* ctx) {
  std::vector<X509*> sent;
  X509* leaf = X509_STORE_CTX_get0_cert(ctx);
  if (!leaf) return sent;
  sent.push_back(leaf);
  STACK_OF(X509)* untrusted = X509_STORE_CTX_get0_untrusted(ctx);
  for (int i = 0; i < sk_X509_num(untrusted); ++i) {
    X509* cert = sk_X509_value(untrusted, i);
    if (cert != leaf) sent.push_back(cert);
  }
  return sent;
}

bool to_time(const ASN1_TIME* time, std::time_t& out) {
  std::tm tm{};
  if (!time || ASN1_TIME_to_tm(time, &tm) != 1) return false;
  out = timegm(&tm);
  return true;
}

// Calls the verify callback for every certificate of the chain, anchor first, as
// X509_verify_cert does once it has found the chain good.
int replay_verify_callback(X509_STORE_CTX* ctx) {
  const X509_STORE_CTX_verify_cb callback = X509_STORE_CTX_get_verify_cb(ctx);
  STACK_OF(X509)* chain = X509_STORE_CTX_get0_chain(ctx);
  for (int depth = sk_X509_num(chain) - 1; depth >= 0; --depth) {
    X509_STORE_CTX_set_error_depth(ctx, depth);
    X509_STORE_CTX_set_current_cert(ctx, sk_X509_value(chain, depth));
    if (callback && !callback(1, ctx)) {
      if (X509_STORE_CTX_get_error(ctx) == X509_V_OK) {
        X509_STORE_CTX_set_error(ctx, X509_V_ERR_UNSPECIFIED);
      }
      return 0;
    }
  }
  return 1;
}

// libssl (3.0) verifies a client's chain with the leaf as the context's certificate and all
// it sent, leaf first, as the untrusted stack; afterwards it moves that stack into the session:
// the leaf as the peer certificate, the rest as the peer chain.
bool in_libssl_layout(X509_STORE_CTX* ctx, const std::vector<X509*>& sent) {
  static const bool libssl_3 = (OpenSSL_version_num() >> 28) == 3;
  if (!libssl_3) return false;
  STACK_OF(X509)* untrusted = X509_STORE_CTX_get0_untrusted(ctx);
  if (!untrusted || sk_X509_num(untrusted) != static_cast<int>(sent.size())) return false;
  for (std::size_t i = 0; i < sent.size(); ++i) {
    if (sk_X509_value(untrusted, static_cast<int>(i)) != sent[i]) return false;
  }
  return true;
}

// The shared objects take the place of this handshake's decoded copies in its untrusted stack,
// and the copies are released; the leaf too (also as the context's certificate) unless
// `keep_leaf`.
void use_shared(X509_STORE_CTX* ctx, const std::vector<X509*>& sent, std::vector<X509Ptr>& shared,
                bool keep_leaf) {
  STACK_OF(X509)* untrusted = X509_STORE_CTX_get0_untrusted(ctx);
  if (!keep_leaf) X509_STORE_CTX_set_cert(ctx, shared.front().get());
  for (std::size_t i = keep_leaf ? 1 : 0; i < sent.size(); ++i) {
    if (!shared[i] || shared[i].get() == sent[i]) continue;
    sk_X509_set(untrusted, static_cast<int>(i), shared[i].release());
    X509_free(sent[i]);
  }
}

}  // namespace

std::size_t VerifiedChains::KeyHash::operator()(const Key& key) const noexcept {
  std::size_t h;
  std::memcpy(&h, key.data(), sizeof(h));  // a SHA-256 digest: any eight bytes are uniform
  return h;
}

std::size_t VerifiedChains::FingerprintHash::operator()(
    const Fingerprint& fingerprint) const noexcept {
  std::size_t h;
  std::memcpy(&h, fingerprint.data(), sizeof(h));
  return h;
}

VerifiedChains::VerifiedChains(std::size_t capacity)
    : capacity_(std::max<std::size_t>(1, capacity)),
      sha256_(EVP_MD_fetch(nullptr, "SHA256", nullptr)) {
  if (!sha256_) throw_openssl_error("cannot fetch SHA-256 for the verified chain cache");
}

VerifiedChains::~VerifiedChains() {
  EVP_MD_free(sha256_);
}

std::size_t VerifiedChains::size() const {
  std::lock_guard lock(mutex_);
  return entries_.size();
}

std::size_t VerifiedChains::shared_cas() const {
  std::lock_guard lock(mutex_);
  return cas_.size();
}

// SHA-256 over every sent certificate's length and DER encoding.
bool VerifiedChains::key_of(const std::vector<X509*>& sent, Key& key) const {
  EvpMdCtxPtr md(EVP_MD_CTX_new());
  if (!md || EVP_DigestInit_ex(md.get(), sha256_, nullptr) != 1) return false;
  for (X509* cert : sent) {
    unsigned char* der = nullptr;
    const int length = i2d_X509(cert, &der);
    if (length <= 0) return false;
    const unsigned char prefix[4] = {
        static_cast<unsigned char>(length >> 24), static_cast<unsigned char>(length >> 16),
        static_cast<unsigned char>(length >> 8), static_cast<unsigned char>(length)};
    const bool ok = EVP_DigestUpdate(md.get(), prefix, sizeof(prefix)) == 1 &&
                    EVP_DigestUpdate(md.get(), der, static_cast<std::size_t>(length)) == 1;
    OPENSSL_free(der);
    if (!ok) return false;
  }
  unsigned int size = 0;
  return EVP_DigestFinal_ex(md.get(), key.data(), &size) == 1 && size == key.size();
}

// The cached chain for `key`; null when there is none, or a certificate of it is not valid at
// `now`. With `shared`, the chain is of the entry's objects, and `shared` receives the entry's
// object for each sent certificate; without, the chain is of the `sent` objects and the held
// ones.
X509StackPtr VerifiedChains::chain_from_cache(const Key& key, const std::vector<X509*>& sent,
                                              std::time_t now, std::vector<X509Ptr>* shared) {
  std::lock_guard lock(mutex_);
  const auto found = index_.find(key);
  if (found == index_.end()) return nullptr;
  const Entry& entry = *found->second;
  if (now < entry.valid_from || now >= entry.valid_until || entry.shared.size() != sent.size()) {
    return nullptr;
  }
  X509StackPtr chain(sk_X509_new_reserve(nullptr, static_cast<int>(entry.chain.size())));
  if (!chain) return nullptr;
  for (const Link& link : entry.chain) {
    const auto at = static_cast<std::size_t>(link.sent);
    X509* cert = link.sent < 0 ? link.held.get() : shared ? entry.shared[at].get() : sent[at];
    if (X509_up_ref(cert) != 1) return nullptr;
    sk_X509_push(chain.get(), cert);  // cannot fail: reserved
  }
  if (shared) {
    shared->clear();
    shared->reserve(sent.size());
    for (const X509Ptr& cert : entry.shared) {
      if (cert && X509_up_ref(cert.get()) != 1) return nullptr;
      shared->emplace_back(cert.get());
    }
  }
  entries_.splice(entries_.begin(), entries_, found->second);
  return chain;
}

std::vector<X509Ptr> VerifiedChains::remember(const Key& key, const std::vector<X509*>& sent,
                                              STACK_OF(X509) * chain) {
  Entry entry;
  entry.key = key;
  const int n = sk_X509_num(chain);
  if (n <= 0) return {};
  entry.chain.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    X509* cert = sk_X509_value(chain, i);
    std::time_t from = 0, until = 0;
    if (!to_time(X509_get0_notBefore(cert), from) || !to_time(X509_get0_notAfter(cert), until)) {
      return {};
    }
    if (i == 0 || from > entry.valid_from) entry.valid_from = from;
    if (i == 0 || until < entry.valid_until) entry.valid_until = until;
    Link link;
    const auto position = std::find(sent.begin(), sent.end(), cert);
    if (position != sent.end()) {
      link.sent = static_cast<int>(position - sent.begin());
    } else {
      // From the truststore: a reference to its object, shared by every entry.
      if (X509_up_ref(cert) != 1) return {};
      link.held.reset(cert);
    }
    entry.chain.push_back(std::move(link));
  }
  if (entry.chain.front().sent != 0) return {};  // the chain does not start at the leaf
  // What later handshakes of this client share: the sent object where the chain uses it, else
  // an identical truststore object the chain uses instead, else nothing (a certificate sent
  // along that the chain does not use is not kept). A sent CA certificate that is not the
  // truststore's is fingerprinted, to share it among entries.
  entry.shared.reserve(sent.size());
  std::vector<std::optional<Fingerprint>> fingerprints(sent.size());
  for (std::size_t i = 0; i < sent.size(); ++i) {
    X509* share = sent[i];
    const bool in_chain = std::any_of(entry.chain.begin(), entry.chain.end(),
                                      [&](const Link& l) { return l.sent == static_cast<int>(i); });
    if (!in_chain) {
      share = nullptr;
      for (const Link& link : entry.chain) {
        if (link.held && X509_cmp(link.held.get(), sent[i]) == 0) {
          share = link.held.get();
          break;
        }
      }
    }
    if (!share) {
      entry.shared.emplace_back();
      continue;
    }
    if (i > 0 && share == sent[i]) {
      Fingerprint fingerprint{};
      unsigned int size = 0;
      X509_check_purpose(share, -1, 0);  // computes the SHA-1 that X509_digest returns
      if (X509_digest(share, EVP_sha1(), fingerprint.data(), &size) == 1 &&
          size == fingerprint.size()) {
        fingerprints[i] = fingerprint;
      }
    }
    if (X509_up_ref(share) != 1) return {};
    entry.shared.emplace_back(share);
  }

  std::vector<X509Ptr> shared;
  std::lock_guard lock(mutex_);
  const auto found = index_.find(key);
  if (found != index_.end()) {
    // Another thread verified the same chain meanwhile.
    if (found->second->shared.size() != sent.size()) return {};
    for (const X509Ptr& cert : found->second->shared) {
      if (cert && X509_up_ref(cert.get()) != 1) return {};
      shared.emplace_back(cert.get());
    }
    return shared;
  }
  for (std::size_t i = 0; i < sent.size(); ++i) {
    if (!fingerprints[i]) continue;
    auto [ca, added] = cas_.try_emplace(*fingerprints[i]);
    if (added) {
      if (X509_up_ref(entry.shared[i].get()) != 1) {
        cas_.erase(ca);
        continue;
      }
      ca->second.cert.reset(entry.shared[i].get());
    } else if (X509_cmp(ca->second.cert.get(), entry.shared[i].get()) != 0 ||
               X509_up_ref(ca->second.cert.get()) != 1) {
      continue;
    } else {
      entry.shared[i].reset(ca->second.cert.get());
    }
    ++ca->second.users;
    entry.cas.push_back(*fingerprints[i]);
  }
  entries_.push_front(std::move(entry));
  index_.emplace(key, entries_.begin());
  while (entries_.size() > capacity_) {
    for (const Fingerprint& fingerprint : entries_.back().cas) {
      const auto ca = cas_.find(fingerprint);
      if (ca != cas_.end() && --ca->second.users == 0) cas_.erase(ca);
    }
    index_.erase(entries_.back().key);
    entries_.pop_back();
  }
  for (const X509Ptr& cert : entries_.front().shared) {
    if (cert && X509_up_ref(cert.get()) != 1) return {};
    shared.emplace_back(cert.get());
  }
  return shared;
}

int VerifiedChains::verify(X509_STORE_CTX* ctx, bool* shared_out) {
  X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx);
  const unsigned long flags = X509_VERIFY_PARAM_get_flags(param);
  const std::vector<X509*> sent = sent_certificates(ctx);
  Key key{};
  if (sent.empty() || (flags & X509_V_FLAG_NO_CHECK_TIME) || !key_of(sent, key)) {
    return X509_verify_cert(ctx);
  }
  const std::time_t now =
      (flags & X509_V_FLAG_USE_CHECK_TIME) ? X509_VERIFY_PARAM_get_time(param) : std::time(nullptr);
  std::vector<X509Ptr> shared;
  const bool share = in_libssl_layout(ctx, sent);
  if (auto chain = chain_from_cache(key, sent, now, share ? &shared : nullptr)) {
    hits_.fetch_add(1, std::memory_order_relaxed);
    if (share) {
      use_shared(ctx, sent, shared, false);  // `sent` may point to freed copies now
      if (shared_out) *shared_out = true;
    }
    X509_STORE_CTX_set0_verified_chain(ctx, chain.release());
    X509_STORE_CTX_set_error(ctx, X509_V_OK);
    return replay_verify_callback(ctx);
  }
  misses_.fetch_add(1, std::memory_order_relaxed);
  const int verified = X509_verify_cert(ctx);
  // Only a chain that verified with no error overridden by the callback is kept.
  if (verified == 1 && X509_STORE_CTX_get_error(ctx) == X509_V_OK) {
    // The session shares the entry's CA certificates from the first handshake on; the chain
    // just verified keeps this handshake's own objects, and so its leaf.
    shared = remember(key, sent, X509_STORE_CTX_get0_chain(ctx));
    if (share && !shared.empty()) {
      use_shared(ctx, sent, shared, true);
      if (shared_out) *shared_out = true;
    }
  }
  return verified;
}

}  // namespace portcullis::tls
