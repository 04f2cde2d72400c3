#pragma once
// The verified client identity, extracted once per connection from the verified chain.
// Every string is safe to place in an HTTP header value: control characters (CR, LF, NUL, ...)
// and non-ASCII bytes are escaped as RFC 4514 does (`\0A`), so hostile certificates cannot
// inject headers.
// Thread-safety: immutable once built; share as std::shared_ptr<const PeerIdentity>.

#include "portcullis/tls/openssl.hpp"

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace portcullis::tls {

struct SanEntry {
  enum class Type { dns, uri, email, ip, other };
  Type type;
  std::string value;
};

struct PeerIdentity {
  std::string subject;  // RFC 4514, as `openssl x509 -noout -subject -nameopt RFC2253`
  std::string issuer;   // same form
  std::vector<std::pair<std::string, std::string>>
      subject_attributes;             // ("CN", "client-1"), in order
  std::string serial_hex;             // uppercase hex, as `openssl x509 -noout -serial`
  std::string fingerprint_sha256;     // lowercase hex over the DER certificate
  std::string spki_sha256;            // lowercase hex over the DER SubjectPublicKeyInfo
  std::string not_before, not_after;  // RFC 3339 UTC, "2026-11-22T10:00:00Z"
  std::vector<SanEntry> sans;
  // "DNS:a.example, URI:spiffe://td/x, email:a@b, IP:10.0.0.1"; ',' and '\' inside a value
  // are escaped as \2C and \5C.
  std::string san;
  std::string leaf_der;
  std::vector<std::string> chain_der;  // the verified chain above the leaf, raw DER
};

// From a completed handshake (the verified chain when there is one). Null without a peer
// certificate.
std::shared_ptr<PeerIdentity> extract_peer_identity(const SSL* ssl);

PeerIdentity identity_from_certificate(X509* leaf, const STACK_OF(X509) * chain_above_leaf);

// Escapes bytes outside printable ASCII as \XX (RFC 4514 style).
std::string header_safe(std::string_view text);

}  // namespace portcullis::tls
