#include "portcullis/tls/peer_identity.hpp"

#include <openssl/asn1.h>
#include <openssl/sha.h>

#include <fmt/format.h>

#include <arpa/inet.h>

namespace portcullis::tls {

namespace {

std::string to_hex(const unsigned char* data, std::size_t size, bool upper) {
  const char* digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  std::string out(size * 2, '0');
  for (std::size_t i = 0; i < size; ++i) {
    out[2 * i] = digits[data[i] >> 4];
    out[2 * i + 1] = digits[data[i] & 15];
  }
  return out;
}

std::string sha256_hex(const std::string& bytes) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), digest);
  return to_hex(digest, sizeof(digest), false);
}

std::string der_of(X509* cert) {
  unsigned char* der = nullptr;
  const int len = i2d_X509(cert, &der);
  std::string out(reinterpret_cast<char*>(der), static_cast<std::size_t>(std::max(len, 0)));
  OPENSSL_free(der);
  return out;
}

std::string rfc4514(const X509_NAME* name) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  // ESC_CTRL and ESC_MSB (part of RFC2253 flags) escape control and non-ASCII bytes.
  X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253);
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  return header_safe(std::string_view(data, static_cast<std::size_t>(len)));
}

std::string rfc3339(const ASN1_TIME* t) {
  struct tm tm {};
  if (ASN1_TIME_to_tm(t, &tm) != 1) return "";
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

std::string asn1_string(const ASN1_STRING* s) {
  return header_safe(std::string_view(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                                      static_cast<std::size_t>(ASN1_STRING_length(s))));
}

// A SAN value may itself hold ", DNS:x": ',' and '\' are escaped as \2C and \5C, so that in
// the joined list ", " only ever separates entries.
std::string list_safe(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == ',') {
      out += "\\2C";
    } else if (c == '\\') {
      out += "\\5C";
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

std::string header_safe(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (unsigned char c : text) {
    if (c < 0x20 || c >= 0x7f) {
      out += fmt::format("\\{:02X}", c);
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

PeerIdentity identity_from_certificate(X509* leaf, const STACK_OF(X509) * chain_above_leaf) {
  PeerIdentity id;
  const X509_NAME* subject = X509_get_subject_name(leaf);
  id.subject = rfc4514(subject);
  id.issuer = rfc4514(X509_get_issuer_name(leaf));
  for (int i = 0; i < X509_NAME_entry_count(subject); ++i) {
    const X509_NAME_ENTRY* entry = X509_NAME_get_entry(subject, i);
    const int nid = OBJ_obj2nid(X509_NAME_ENTRY_get_object(entry));
    std::string name = nid != NID_undef ? OBJ_nid2sn(nid) : "";
    if (name.empty()) {
      char buf[80];
      OBJ_obj2txt(buf, sizeof(buf), X509_NAME_ENTRY_get_object(entry), 1);
      name = buf;
    }
    id.subject_attributes.emplace_back(name, asn1_string(X509_NAME_ENTRY_get_data(entry)));
  }

  const ASN1_INTEGER* serial = X509_get0_serialNumber(leaf);
  BignumPtr bn(ASN1_INTEGER_to_BN(serial, nullptr));
  if (bn) {
    char* hex = BN_bn2hex(bn.get());
    id.serial_hex = hex;
    OPENSSL_free(hex);
    // Whole octets, as openssl prints them: "0" becomes "00"; a negative (non-conforming)
    // serial is already "-" followed by whole octets.
    if (id.serial_hex.size() % 2 && id.serial_hex.front() != '-') id.serial_hex.insert(0, "0");
  }

  id.leaf_der = der_of(leaf);
  id.fingerprint_sha256 = sha256_hex(id.leaf_der);
  unsigned char* spki = nullptr;
  const int spki_len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(leaf), &spki);
  id.spki_sha256 = sha256_hex(
      std::string(reinterpret_cast<char*>(spki), static_cast<std::size_t>(std::max(spki_len, 0))));
  OPENSSL_free(spki);
  id.not_before = rfc3339(X509_get0_notBefore(leaf));
  id.not_after = rfc3339(X509_get0_notAfter(leaf));

  GeneralNamesPtr names(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(leaf, NID_subject_alt_name, nullptr, nullptr)));
  if (names) {
    for (int i = 0; i < sk_GENERAL_NAME_num(names.get()); ++i) {
      const GENERAL_NAME* name = sk_GENERAL_NAME_value(names.get(), i);
      switch (name->type) {
        case GEN_DNS:
          id.sans.push_back({SanEntry::Type::dns, asn1_string(name->d.dNSName)});
          break;
        case GEN_URI:
          id.sans.push_back({SanEntry::Type::uri, asn1_string(name->d.uniformResourceIdentifier)});
          break;
        case GEN_EMAIL:
          id.sans.push_back({SanEntry::Type::email, asn1_string(name->d.rfc822Name)});
          break;
        case GEN_IPADD: {
          const auto* ip = name->d.iPAddress;
          char text[INET6_ADDRSTRLEN] = {};
          if (ip->length == 4) {
            inet_ntop(AF_INET, ip->data, text, sizeof(text));
          } else if (ip->length == 16) {
            inet_ntop(AF_INET6, ip->data, text, sizeof(text));
          }
          if (text[0]) id.sans.push_back({SanEntry::Type::ip, text});
          break;
        }
        default:
          break;
      }
    }
  }
  for (const auto& san : id.sans) {
    const char* prefix = san.type == SanEntry::Type::dns     ? "DNS:"
                         : san.type == SanEntry::Type::uri   ? "URI:"
                         : san.type == SanEntry::Type::email ? "email:"
                                                             : "IP:";
    if (!id.san.empty()) id.san += ", ";
    id.san += prefix + list_safe(san.value);
  }

  if (chain_above_leaf) {
    for (int i = 0; i < sk_X509_num(chain_above_leaf); ++i) {
      id.chain_der.push_back(der_of(sk_X509_value(chain_above_leaf, i)));
    }
  }
  return id;
}

std::shared_ptr<PeerIdentity> extract_peer_identity(const SSL* ssl) {
  X509* leaf = SSL_get0_peer_certificate(ssl);
  if (!leaf) return nullptr;
  // The verified chain is leaf first; what the upstream may want is what lies above the leaf.
  STACK_OF(X509)* verified = SSL_get0_verified_chain(ssl);
  X509StackPtr above(sk_X509_new_null());
  if (verified) {
    for (int i = 1; i < sk_X509_num(verified); ++i) {
      X509* cert = sk_X509_value(verified, i);
      X509_up_ref(cert);
      sk_X509_push(above.get(), cert);
    }
  }
  return std::make_shared<PeerIdentity>(identity_from_certificate(leaf, above.get()));
}

}  // namespace portcullis::tls
