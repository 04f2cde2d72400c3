#pragma once
// Fixtures shared by the tls unit tests: a temporary directory and small PKI helpers.

#include "portcullis/tls/pki_builder.hpp"

#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

namespace portcullis::tls::testing {

class TempDir {
 public:
  TempDir() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "portcullis-tls-XXXXXX").string();
    if (!::mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

inline CertSpec ca_spec(std::string cn) {
  CertSpec spec;
  spec.common_name = std::move(cn);
  spec.is_ca = true;
  return spec;
}

inline CertSpec leaf_spec(std::string cn, Eku eku = Eku::client_auth) {
  CertSpec spec;
  spec.common_name = std::move(cn);
  spec.eku = eku;
  return spec;
}

inline std::string pem_of(const std::vector<const Issued*>& certs) {
  std::string out;
  for (const auto* issued : certs) out += to_pem(issued->cert.get());
  return out;
}

// Joins `client` and `server` through an in-memory BIO pair, each in its role; false when the
// pair cannot be made.
inline bool connect_in_memory(SSL* client, SSL* server) {
  BIO* client_bio = nullptr;
  BIO* server_bio = nullptr;
  if (BIO_new_bio_pair(&client_bio, 0, &server_bio, 0) != 1) return false;
  SSL_set_bio(client, client_bio, client_bio);
  SSL_set_bio(server, server_bio, server_bio);
  SSL_set_connect_state(client);
  SSL_set_accept_state(server);
  return true;
}

inline X509Ptr read_first_cert(const std::filesystem::path& path) {
  BioPtr bio(BIO_new_file(path.c_str(), "r"));
  if (!bio) return nullptr;
  return X509Ptr(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
}

inline std::vector<X509Ptr> read_all_certs(const std::filesystem::path& path) {
  std::vector<X509Ptr> out;
  BioPtr bio(BIO_new_file(path.c_str(), "r"));
  while (bio) {
    X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (!cert) break;
    out.push_back(std::move(cert));
  }
  return out;
}

}  // namespace portcullis::tls::testing
