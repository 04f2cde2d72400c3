#pragma once
// Session ticket keys shared by a fleet of gateways, so a client resumes on any replica.
//
// The key file holds one key per line, base64 of 80 random bytes (`openssl rand 80 | base64
// -w0`): 16 bytes of key name, 32 of HMAC-SHA256 key, 32 of AES-256 key — the layout NGINX's
// ssl_session_ticket_key uses. The first key encrypts new tickets; every key decrypts, so a
// rotation adds the new key first and drops the oldest one last. Empty lines and lines starting
// with '#' are ignored.
// Thread-safety: immutable once loaded; the SSL_CTX callback reads it from every io thread.

#include "portcullis/tls/openssl.hpp"

#include <array>
#include <filesystem>
#include <memory>
#include <vector>

namespace portcullis::tls {

struct TicketKey {
  std::array<unsigned char, 16> name;
  std::array<unsigned char, 32> hmac_key;
  std::array<unsigned char, 32> aes_key;
};

class TicketKeys {
 public:
  // Throws TlsError naming the file and line of anything that is not an 80-byte key.
  static std::shared_ptr<const TicketKeys> load(const std::filesystem::path& file);
  explicit TicketKeys(std::vector<TicketKey> keys);
  ~TicketKeys();

  const std::vector<TicketKey>& keys() const noexcept { return keys_; }

 private:
  std::vector<TicketKey> keys_;
};

// Makes `ctx` encrypt and decrypt session tickets with `keys` instead of its own random
// per-process key. The SSL_CTX keeps `keys` alive.
void use_ticket_keys(SSL_CTX* ctx, std::shared_ptr<const TicketKeys> keys);

}  // namespace portcullis::tls
