#include "portcullis/tls/identity_headers.hpp"

#include <openssl/evp.h>

#include <fmt/format.h>

namespace portcullis::tls {

namespace {

char fold(char c) noexcept {
  if (c == '_') return '-';
  if (c >= 'A' && c <= 'Z') return static_cast<char>(c - 'A' + 'a');
  return c;
}

bool folded_equals(std::string_view name, std::string_view lower) noexcept {
  if (name.size() != lower.size()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    if (fold(name[i]) != lower[i]) return false;
  }
  return true;
}

bool folded_starts_with(std::string_view name, std::string_view lower) noexcept {
  return name.size() >= lower.size() && folded_equals(name.substr(0, lower.size()), lower);
}

std::string base64(const std::string& bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(bytes.data()),
                                static_cast<int>(bytes.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

std::string pem(const std::string& der) {
  const auto b64 = base64(der);
  std::string out = "-----BEGIN CERTIFICATE-----\n";
  for (std::size_t i = 0; i < b64.size(); i += 64) out += b64.substr(i, 64) + "\n";
  return out + "-----END CERTIFICATE-----\n";
}

// Percent-encodes everything but unreserved characters (RFC 3986), as Envoy and AWS ALB do for
// PEM values.
std::string url_encode(std::string_view text) {
  std::string out;
  for (unsigned char c : text) {
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '.' || c == '_' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

// XFCC values containing ',', ';', '=' or '"' are quoted, with '"' escaped.
std::string xfcc_value(std::string_view value) {
  if (value.find_first_of(",;=\"") == std::string_view::npos) return std::string(value);
  std::string out = "\"";
  for (char c : value) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

}  // namespace

bool is_identity_header(std::string_view name) noexcept {
  return folded_starts_with(name, "x-client-cert-") ||
         folded_starts_with(name, "x-amzn-mtls-clientcert") || folded_equals(name, "client-cert") ||
         folded_equals(name, "client-cert-chain") || folded_equals(name, "x-forwarded-client-cert");
}

HeaderList identity_headers(config::IdentityPreset preset, const PeerIdentity& id) {
  HeaderList h;
  switch (preset) {
    case config::IdentityPreset::standard:
      h.emplace_back("X-Client-Cert-Subject", id.subject);
      h.emplace_back("X-Client-Cert-Issuer", id.issuer);
      h.emplace_back("X-Client-Cert-Serial", id.serial_hex);
      h.emplace_back("X-Client-Cert-Fingerprint-SHA256", id.fingerprint_sha256);
      h.emplace_back("X-Client-Cert-Not-Before", id.not_before);
      h.emplace_back("X-Client-Cert-Not-After", id.not_after);
      if (!id.san.empty()) h.emplace_back("X-Client-Cert-SAN", id.san);
      break;
    case config::IdentityPreset::rfc9440: {
      h.emplace_back("Client-Cert", ":" + base64(id.leaf_der) + ":");
      std::string chain;
      for (const auto& der : id.chain_der) {
        if (!chain.empty()) chain += ", ";
        chain += ":" + base64(der) + ":";
      }
      if (!chain.empty()) h.emplace_back("Client-Cert-Chain", chain);
      break;
    }
    case config::IdentityPreset::xfcc: {
      // Envoy always quotes Cert and Subject; other values only when they need it.
      std::string subject = "\"";
      for (char c : id.subject) {
        if (c == '"' || c == '\\') subject += '\\';
        subject += c;
      }
      subject += "\"";
      std::string v = "Hash=" + id.fingerprint_sha256 + ";Cert=\"" + url_encode(pem(id.leaf_der)) +
                      "\";Subject=" + subject;
      for (const auto& san : id.sans) {
        if (san.type == SanEntry::Type::uri) v += ";URI=" + xfcc_value(san.value);
      }
      for (const auto& san : id.sans) {
        if (san.type == SanEntry::Type::dns) v += ";DNS=" + xfcc_value(san.value);
      }
      h.emplace_back("X-Forwarded-Client-Cert", v);
      break;
    }
    case config::IdentityPreset::aws_alb:
      h.emplace_back("X-Amzn-Mtls-Clientcert-Serial-Number", id.serial_hex);
      h.emplace_back("X-Amzn-Mtls-Clientcert-Issuer", id.issuer);
      h.emplace_back("X-Amzn-Mtls-Clientcert-Subject", id.subject);
      h.emplace_back("X-Amzn-Mtls-Clientcert-Validity",
                     "NotBefore=" + id.not_before + ";NotAfter=" + id.not_after);
      h.emplace_back("X-Amzn-Mtls-Clientcert-Leaf", url_encode(pem(id.leaf_der)));
      break;
  }
  return h;
}

}  // namespace portcullis::tls
