#pragma once
// The PEM bundle of CAs that client certificates must chain to, loaded once and analysed.
// Thread-safety: immutable after load(); share as std::shared_ptr<const Truststore>.

#include "portcullis/tls/openssl.hpp"

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace portcullis::tls {

struct TruststoreSummary {
  std::filesystem::path path;
  std::size_t certificates = 0;   // distinct certificates (duplicates are dropped with a warning)
  std::size_t roots = 0;          // self-signed CAs: the trust anchors
  std::size_t intermediates = 0;  // CAs issued by another CA: used to build chains
  // One line per finding, naming the certificate by subject: expired or not yet valid, not a CA,
  // duplicate, issuer missing from the bundle, weak key or signature, CA without keyCertSign,
  // non-certificate PEM blocks, no root at all. Loading still succeeds.
  std::vector<std::string> warnings;
};

class Truststore {
 public:
  // Throws TlsError naming the file when it is unreadable, holds no certificate, or holds a PEM
  // block that does not parse. A truststore that cannot be loaded is never replaced by "no
  // client authentication".
  // Cost is linear in the number of certificates (thousands of CAs load in milliseconds).
  static std::shared_ptr<const Truststore> load(const std::filesystem::path& pem_bundle);

  // Every distinct certificate: self-signed ones are the trust anchors, the others only help
  // build chains. Ready for SSL_CTX_set1_verify_cert_store.
  X509_STORE* store() const noexcept { return store_.get(); }
  // Distinct certificates in file order.
  const std::vector<X509Ptr>& certificates() const noexcept { return certificates_; }
  const TruststoreSummary& summary() const noexcept { return summary_; }
  // Lowercase hex SHA-256 over the DER of every certificate block, in file order.
  const std::string& digest() const noexcept { return digest_; }
  // The self-signed certificates (for the CA names of the CertificateRequest); owned by this.
  std::vector<X509*> roots() const;

 private:
  Truststore() = default;
  X509StorePtr store_;
  std::vector<X509Ptr> certificates_;
  TruststoreSummary summary_;
  std::string digest_;
};

// The subject of a certificate as an RFC 4514 string (for messages).
std::string subject_of(X509* cert);

}  // namespace portcullis::tls
