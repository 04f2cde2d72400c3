#include "portcullis/proxy/identity_cache.hpp"

#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

namespace portcullis::proxy {
namespace {

// SHA-256 of the leaf's DER, then the SHA-1 of each certificate above it (cached in the X509
// since verification): empty when there is no verified peer to key.
std::string key_of(const SSL* ssl) {
  X509* leaf = SSL_get0_peer_certificate(ssl);
  if (!leaf) return {};
  std::string key(EVP_MAX_MD_SIZE, '\0');
  unsigned length = 0;
  if (X509_digest(leaf, EVP_sha256(), reinterpret_cast<unsigned char*>(key.data()), &length) != 1)
    return {};
  key.resize(length);
  if (STACK_OF(X509)* chain = SSL_get0_verified_chain(ssl)) {
    for (int i = 1; i < sk_X509_num(chain); ++i) {
      unsigned char sha1[EVP_MAX_MD_SIZE];
      unsigned n = 0;
      if (X509_digest(sk_X509_value(chain, i), EVP_sha1(), sha1, &n) != 1) return {};
      key.append(reinterpret_cast<const char*>(sha1), n);
    }
  }
  return key;
}

}  // namespace

IdentityCache::IdentityCache(std::size_t capacity, Render render)
    : capacity_(capacity), render_(std::move(render)) {}

CachedIdentity IdentityCache::extract(const SSL* ssl) const {
  std::shared_ptr<tls::PeerIdentity> id = tls::extract_peer_identity(ssl);
  if (!id) id = std::make_shared<tls::PeerIdentity>();  // no peer: refused at the handshake
  auto lines = std::make_shared<const std::string>(render_(*id));
  std::string().swap(id->leaf_der);
  std::vector<std::string>().swap(id->chain_der);
  return {std::move(id), std::move(lines)};
}

CachedIdentity IdentityCache::get(const SSL* ssl) {
  auto key = capacity_ ? key_of(ssl) : std::string{};
  if (key.empty()) return extract(ssl);
  {
    std::lock_guard lock(mutex_);
    if (const auto it = index_.find(key); it != index_.end()) {
      entries_.splice(entries_.begin(), entries_, it->second);
      hits_.fetch_add(1, std::memory_order_relaxed);
      return it->second->second;
    }
  }
  misses_.fetch_add(1, std::memory_order_relaxed);
  auto fresh = extract(ssl);  // outside the lock: the slow part
  std::lock_guard lock(mutex_);
  if (const auto it = index_.find(key); it != index_.end()) return it->second->second;
  entries_.emplace_front(key, fresh);
  index_.emplace(std::move(key), entries_.begin());
  if (entries_.size() > capacity_) {
    index_.erase(entries_.back().first);
    entries_.pop_back();
  }
  return fresh;
}

std::size_t IdentityCache::size() const {
  std::lock_guard lock(mutex_);
  return entries_.size();
}

}  // namespace portcullis::proxy
