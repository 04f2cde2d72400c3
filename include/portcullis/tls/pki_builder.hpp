#pragma once
// Builds small X.509 PKIs in memory: the `demo` command's throwaway PKI and the unit tests'
// fixtures. Not for production CAs (no HSM, no audit, no serial bookkeeping beyond randomness).

#include "portcullis/tls/openssl.hpp"

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace portcullis::tls {

enum class KeyType { ec_p256, rsa2048 };
enum class Eku { none, client_auth, server_auth, both };

struct CertSpec {
  std::string common_name;
  std::vector<std::pair<std::string, std::string>> extra_subject;  // e.g. {"O","Example"}
  bool is_ca = false;
  std::optional<int> path_len;  // CA only
  KeyType key = KeyType::ec_p256;
  Eku eku = Eku::client_auth;  // leaf only; CAs get no EKU
  std::vector<std::string>
      sans;  // "DNS:a.example", "URI:spiffe://td/x", "email:a@b", "IP:127.0.0.1"
  // Validity relative to now.
  std::chrono::seconds not_before_offset{-3600};
  std::chrono::seconds not_after_offset{std::chrono::hours(24 * 30)};
  std::string crl_distribution_point;  // URI, empty = none
  std::string ocsp_url;                // AIA OCSP URI, empty = none
};

struct Issued {
  X509Ptr cert;
  EvpPkeyPtr key;
};

// Signs with `issuer` (SHA-256), or self-signs when issuer is null. Random 16-byte serial.
// Throws TlsError.
Issued issue_certificate(const CertSpec& spec, const Issued* issuer);

std::string to_pem(X509* cert);
std::string to_pem(EVP_PKEY* key);  // unencrypted PKCS#8
// Writes `pem` to `path`, creating parents; keys are written 0600.
void write_file(const std::filesystem::path& path, const std::string& pem, bool secret = false);

// The demo PKI, written to `dir`: file names are stable (the demo's curl lines use them).
//   root-ca.pem, intermediate-ca.pem, truststore.pem (root + intermediate),
//   server-chain.pem + server.key (CN/SAN localhost, 127.0.0.1; leaf + intermediate),
//   client.pem + client.key            good: chain root → intermediate → client
//   client-expired.pem + .key          expired yesterday
//   client-foreign.pem + .key          issued by an unrelated "Foreign Root CA"
//   client-noeku.pem + .key            EKU serverAuth only
// Client .pem files hold leaf + intermediate.
void write_demo_pki(const std::filesystem::path& dir);

}  // namespace portcullis::tls
