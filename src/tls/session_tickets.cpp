#include "portcullis/tls/session_tickets.hpp"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <string>

namespace portcullis::tls {

namespace {

constexpr std::size_t key_bytes = 80;

using KeysHandle = std::shared_ptr<const TicketKeys>;

void free_keys(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
  delete static_cast<KeysHandle*>(ptr);
}

int keys_index() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, free_keys);
  return index;
}

bool set_mac_key(EVP_MAC_CTX* mac, const TicketKey& key) {
  char digest[] = "SHA256";
  const OSSL_PARAM params[] = {
      OSSL_PARAM_construct_octet_string(
          OSSL_MAC_PARAM_KEY, const_cast<unsigned char*>(key.hmac_key.data()), key.hmac_key.size()),
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_end()};
  return EVP_MAC_CTX_set_params(mac, params) == 1;
}

// OpenSSL's ticket callback: 1 = use this key, 2 = decrypted with an older key (the client gets
// a fresh ticket under the current one), 0 = unknown key name (full handshake), -1 = error.
int ticket_callback(SSL* ssl, unsigned char key_name[16], unsigned char* iv, EVP_CIPHER_CTX* cipher,
                    EVP_MAC_CTX* mac, int encrypt) {
  const auto* handle =
      static_cast<const KeysHandle*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), keys_index()));
  if (!handle || !*handle || (*handle)->keys().empty()) return -1;
  const auto& keys = (*handle)->keys();
  if (encrypt) {
    const auto& key = keys.front();
    if (RAND_bytes(iv, EVP_CIPHER_get_iv_length(EVP_aes_256_cbc())) != 1) return -1;
    std::memcpy(key_name, key.name.data(), key.name.size());
    if (EVP_EncryptInit_ex(cipher, EVP_aes_256_cbc(), nullptr, key.aes_key.data(), iv) != 1)
      return -1;
    return set_mac_key(mac, key) ? 1 : -1;
  }
  for (std::size_t i = 0; i < keys.size(); ++i) {
    const auto& key = keys[i];
    if (std::memcmp(key_name, key.name.data(), key.name.size()) != 0) continue;
    if (EVP_DecryptInit_ex(cipher, EVP_aes_256_cbc(), nullptr, key.aes_key.data(), iv) != 1 ||
        !set_mac_key(mac, key)) {
      return -1;
    }
    return i == 0 ? 1 : 2;
  }
  return 0;
}

std::string trim(const std::string& s) {
  const auto first = s.find_first_not_of(" \t\r");
  if (first == std::string::npos) return {};
  return s.substr(first, s.find_last_not_of(" \t\r") - first + 1);
}

}  // namespace

TicketKeys::TicketKeys(std::vector<TicketKey> keys) : keys_(std::move(keys)) {}

TicketKeys::~TicketKeys() {
  if (!keys_.empty()) OPENSSL_cleanse(keys_.data(), keys_.size() * sizeof(TicketKey));
}

std::shared_ptr<const TicketKeys> TicketKeys::load(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in)
    throw TlsError(fmt::format("{}: cannot read the session ticket key file", file.string()));
  std::vector<TicketKey> keys;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    line = trim(line);
    if (line.empty() || line.front() == '#') continue;
    const auto where = fmt::format("{}:{}", file.string(), number);
    if (line.size() % 4 != 0 ||
        line.find_first_not_of(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") !=
            std::string::npos) {
      throw TlsError(where + ": not base64 (expected `openssl rand 80 | base64 -w0`)");
    }
    std::string decoded(line.size() / 4 * 3, '\0');
    const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(decoded.data()),
                                  reinterpret_cast<const unsigned char*>(line.data()),
                                  static_cast<int>(line.size()));
    const auto padding = static_cast<std::size_t>(std::count(line.end() - 2, line.end(), '='));
    if (n < 0 || static_cast<std::size_t>(n) - padding != key_bytes) {
      OPENSSL_cleanse(decoded.data(), decoded.size());
      throw TlsError(fmt::format("{}: a key must be {} bytes, this one is {}", where, key_bytes,
                                 n < 0 ? 0 : static_cast<std::size_t>(n) - padding));
    }
    TicketKey key;
    std::memcpy(key.name.data(), decoded.data(), 16);
    std::memcpy(key.hmac_key.data(), decoded.data() + 16, 32);
    std::memcpy(key.aes_key.data(), decoded.data() + 48, 32);
    OPENSSL_cleanse(decoded.data(), decoded.size());
    OPENSSL_cleanse(line.data(), line.size());
    for (const auto& held : keys) {
      if (held.name == key.name) throw TlsError(where + ": the same key name appears twice");
    }
    keys.push_back(key);
  }
  if (keys.empty()) throw TlsError(file.string() + ": no session ticket key in the file");
  return std::make_shared<const TicketKeys>(std::move(keys));
}

void use_ticket_keys(SSL_CTX* ctx, std::shared_ptr<const TicketKeys> keys) {
  auto handle = std::make_unique<KeysHandle>(std::move(keys));
  if (SSL_CTX_set_ex_data(ctx, keys_index(), handle.get()) != 1) {
    throw_openssl_error("cannot attach the session ticket keys");
  }
  handle.release();  // owned by the SSL_CTX now
  if (SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_callback) != 1) {
    throw_openssl_error("cannot install the session ticket key callback");
  }
}

}  // namespace portcullis::tls
