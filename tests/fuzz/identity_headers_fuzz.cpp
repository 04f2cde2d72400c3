// libFuzzer target: identity headers from arbitrary certificates, for every preset. The first
// input byte chooses how the rest is read: as a DER certificate, or as the fields (serial,
// subject and issuer attributes of any string type, validity, SANs of every kind) of a
// certificate built and signed here, so that hostile bytes reach every name and SAN.
//
// Invariants, for every certificate and preset:
// - every header name is one the gateway strips from clients;
// - every value is printable ASCII: no CR, LF, NUL or other control or non-ASCII byte;
// - the default preset's serial is uppercase hex and its fingerprint the SHA-256 of the DER;
// - X-Client-Cert-SAN splits back into the SAN entries, one per entry;
// - RFC 9440 Client-Cert, the AWS ALB leaf and the XFCC Cert decode back to the certificate's
//   DER; the XFCC Hash, Subject, URI and DNS elements decode back to the identity's values.

#include "portcullis/tls/identity_headers.hpp"
#include "portcullis/tls/openssl.hpp"
#include "portcullis/tls/peer_identity.hpp"

#include <fuzzer/FuzzedDataProvider.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

using namespace portcullis;

namespace {

const tls::EvpPkeyPtr& signing_key() {
  static const tls::EvpPkeyPtr key = [] {
    tls::EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, nullptr));
    EVP_PKEY* out = nullptr;
    if (!ctx || EVP_PKEY_keygen_init(ctx.get()) != 1 || EVP_PKEY_keygen(ctx.get(), &out) != 1)
      std::abort();
    return tls::EvpPkeyPtr(out);
  }();
  return key;
}

void add_name_entries(FuzzedDataProvider& in, X509_NAME* name) {
  static constexpr int nids[] = {
      NID_commonName,  NID_organizationName,   NID_organizationalUnitName,
      NID_countryName, NID_pkcs9_emailAddress, NID_domainComponent,
      NID_serialNumber};
  static constexpr int types[] = {V_ASN1_UTF8STRING, V_ASN1_PRINTABLESTRING,
                                  V_ASN1_IA5STRING,  V_ASN1_BMPSTRING,
                                  V_ASN1_T61STRING,  V_ASN1_UNIVERSALSTRING};
  const int entries = in.ConsumeIntegralInRange(0, 4);
  for (int i = 0; i < entries; ++i) {
    const int nid = in.PickValueInArray(nids);
    const int type = in.PickValueInArray(types);
    const auto value = in.ConsumeRandomLengthString(64);
    // -1: a new RDN; 0 after the first entry: the same RDN (multi-valued).
    const int set = i > 0 && in.ConsumeBool() ? -1 : 0;
    X509_NAME_add_entry_by_NID(name, nid, type,
                               reinterpret_cast<const unsigned char*>(value.data()),
                               static_cast<int>(value.size()), -1, set);
  }
}

GENERAL_NAME* general_name(FuzzedDataProvider& in) {
  GENERAL_NAME* name = GENERAL_NAME_new();
  const auto value = in.ConsumeRandomLengthString(64);
  const int kind = in.ConsumeIntegralInRange(0, 3);
  ASN1_STRING* s = ASN1_STRING_type_new(kind == 3 ? V_ASN1_OCTET_STRING : V_ASN1_IA5STRING);
  ASN1_STRING_set(s, value.data(), static_cast<int>(value.size()));
  static constexpr int types[] = {GEN_DNS, GEN_URI, GEN_EMAIL, GEN_IPADD};
  GENERAL_NAME_set0_value(name, types[kind], s);
  return name;
}

tls::X509Ptr build_certificate(FuzzedDataProvider& in) {
  tls::X509Ptr cert(X509_new());
  X509_set_version(cert.get(), 2);
  const auto serial_bytes = in.ConsumeBytes<unsigned char>(in.ConsumeIntegralInRange(0, 24));
  tls::BignumPtr bn(BN_bin2bn(serial_bytes.data(), static_cast<int>(serial_bytes.size()), nullptr));
  BN_set_negative(bn.get(), in.ConsumeBool());
  BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert.get()));
  add_name_entries(in, X509_get_subject_name(cert.get()));
  add_name_entries(in, X509_get_issuer_name(cert.get()));
  ASN1_TIME_set(X509_getm_notBefore(cert.get()), in.ConsumeIntegral<std::int32_t>());
  ASN1_TIME_adj(X509_getm_notAfter(cert.get()), 0, in.ConsumeIntegralInRange(0, 3650000),
                in.ConsumeIntegral<std::int32_t>());
  X509_set_pubkey(cert.get(), signing_key().get());
  tls::GeneralNamesPtr sans(sk_GENERAL_NAME_new_null());
  const int count = in.ConsumeIntegralInRange(0, 5);
  for (int i = 0; i < count; ++i) sk_GENERAL_NAME_push(sans.get(), general_name(in));
  if (count > 0)
    X509_add1_ext_i2d(cert.get(), NID_subject_alt_name, sans.get(), 0, X509V3_ADD_DEFAULT);
  if (X509_sign(cert.get(), signing_key().get(), nullptr) <= 0) return nullptr;
  return cert;
}

std::string der_of(X509* cert) {
  unsigned char* der = nullptr;
  const int len = i2d_X509(cert, &der);
  if (len <= 0) std::abort();
  std::string out(reinterpret_cast<char*>(der), static_cast<std::size_t>(len));
  OPENSSL_free(der);
  return out;
}

std::string base64_decode(std::string_view text) {
  std::string out(3 * (text.size() / 4) + 3, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(text.data()),
                                static_cast<int>(text.size()));
  if (n < 0 || text.size() % 4) std::abort();
  // EVP_DecodeBlock counts the padding as zero bytes.
  std::size_t pad = 0;
  for (auto it = text.rbegin(); it != text.rend() && *it == '=' && pad < 2; ++it) ++pad;
  out.resize(static_cast<std::size_t>(n) - pad);
  return out;
}

std::string url_decode(std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '%') {
      out += text[i];
      continue;
    }
    if (i + 2 >= text.size()) std::abort();
    out += static_cast<char>(std::stoi(std::string(text.substr(i + 1, 2)), nullptr, 16));
    i += 2;
  }
  return out;
}

// X-Client-Cert-SAN entries escape ',' and '\' as \2C and \5C.
std::string unescape_list(std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text.substr(i, 3) == "\\2C") {
      out += ',';
      i += 2;
    } else if (text.substr(i, 3) == "\\5C") {
      out += '\\';
      i += 2;
    } else if (text[i] == ',' || text[i] == '\\') {
      std::abort();
    } else {
      out += text[i];
    }
  }
  return out;
}

std::string der_from_pem(const std::string& pem) {
  tls::BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  tls::X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) std::abort();
  return der_of(cert.get());
}

std::string lower_hex(const std::string& bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

// XFCC elements "Key=value" separated by ';', values quoted when they need it, with '\'
// escaping inside quotes.
std::vector<std::pair<std::string, std::string>> parse_xfcc(std::string_view v) {
  std::vector<std::pair<std::string, std::string>> out;
  std::size_t i = 0;
  while (i < v.size()) {
    const auto eq = v.find('=', i);
    if (eq == std::string_view::npos) std::abort();
    std::string key(v.substr(i, eq - i)), value;
    i = eq + 1;
    if (i < v.size() && v[i] == '"') {
      for (++i;; ++i) {
        if (i >= v.size()) std::abort();
        if (v[i] == '\\' && i + 1 < v.size()) {
          value += v[++i];
        } else if (v[i] == '"') {
          ++i;
          break;
        } else {
          value += v[i];
        }
      }
    } else {
      const auto end = v.find(';', i);
      value = std::string(v.substr(i, end == std::string_view::npos ? v.npos : end - i));
      i = end == std::string_view::npos ? v.size() : end;
    }
    if (i < v.size() && v[i++] != ';') std::abort();
    out.emplace_back(std::move(key), std::move(value));
  }
  return out;
}

const std::string* header(const tls::HeaderList& headers, std::string_view name) {
  for (const auto& [n, v] : headers) {
    if (n == name) return &v;
  }
  return nullptr;
}

void check(const tls::PeerIdentity& id, const std::string& der, const X509* cert) {
  if (id.leaf_der != der) std::abort();
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(der.data()), der.size(), digest);
  const auto fingerprint =
      lower_hex(std::string(reinterpret_cast<const char*>(digest), sizeof(digest)));
  if (id.fingerprint_sha256 != fingerprint) std::abort();

  for (int p = 0; p < 4; ++p) {
    const auto preset = static_cast<config::IdentityPreset>(p);
    const auto headers = tls::identity_headers(preset, id);
    for (const auto& [name, value] : headers) {
      if (!tls::is_identity_header(name)) std::abort();
      for (unsigned char c : value) {
        if (c < 0x20 || c >= 0x7f) std::abort();
      }
    }
    switch (preset) {
      case config::IdentityPreset::standard: {
        // Whole octets in uppercase hex, after a '-' when the (non-conforming) serial is negative.
        std::string_view serial = *header(headers, "X-Client-Cert-Serial");
        const bool negative = ASN1_STRING_type(X509_get0_serialNumber(cert)) == V_ASN1_NEG_INTEGER;
        if (negative != (!serial.empty() && serial.front() == '-')) std::abort();
        if (negative) serial.remove_prefix(1);
        if (serial.empty() || serial.size() % 2 ||
            serial.find_first_not_of("0123456789ABCDEF") != serial.npos)
          std::abort();
        if (*header(headers, "X-Client-Cert-Fingerprint-SHA256") != fingerprint) std::abort();
        const auto* san = header(headers, "X-Client-Cert-SAN");
        if (id.sans.empty() != (san == nullptr)) std::abort();
        if (san) {
          std::vector<std::string> parts;
          std::size_t from = 0;
          for (auto at = san->find(", "); at != san->npos; at = san->find(", ", from)) {
            parts.push_back(san->substr(from, at - from));
            from = at + 2;
          }
          parts.push_back(san->substr(from));
          if (parts.size() != id.sans.size()) std::abort();
          for (std::size_t i = 0; i < parts.size(); ++i) {
            const auto colon = parts[i].find(':');
            if (colon == std::string::npos ||
                unescape_list(parts[i].substr(colon + 1)) != id.sans[i].value)
              std::abort();
          }
        }
        break;
      }
      case config::IdentityPreset::rfc9440: {
        const auto& value = *header(headers, "Client-Cert");
        if (value.size() < 2 || value.front() != ':' || value.back() != ':') std::abort();
        if (base64_decode(std::string_view(value).substr(1, value.size() - 2)) != der) std::abort();
        break;
      }
      case config::IdentityPreset::xfcc: {
        const auto elements = parse_xfcc(*header(headers, "X-Forwarded-Client-Cert"));
        std::size_t listed = 3;
        for (const auto& s : id.sans) {
          listed += s.type == tls::SanEntry::Type::uri || s.type == tls::SanEntry::Type::dns;
        }
        if (elements.size() != listed) std::abort();
        if (elements[0] != std::pair<std::string, std::string>{"Hash", fingerprint}) std::abort();
        if (elements[1].first != "Cert" || der_from_pem(url_decode(elements[1].second)) != der)
          std::abort();
        if (elements[2] != std::pair<std::string, std::string>{"Subject", id.subject}) std::abort();
        std::size_t next = 3;
        for (auto type : {tls::SanEntry::Type::uri, tls::SanEntry::Type::dns}) {
          for (const auto& s : id.sans) {
            if (s.type != type) continue;
            const auto key = type == tls::SanEntry::Type::uri ? "URI" : "DNS";
            if (elements[next++] != std::pair<std::string, std::string>{key, s.value}) std::abort();
          }
        }
        break;
      }
      case config::IdentityPreset::aws_alb: {
        const auto& leaf = *header(headers, "X-Amzn-Mtls-Clientcert-Leaf");
        if (der_from_pem(url_decode(leaf)) != der) std::abort();
        break;
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  // Either way the certificate is what OpenSSL decodes from DER, as in a handshake: a built one
  // goes through i2d and d2i first (d2i refuses some names OpenSSL can encode).
  std::string der;
  if (data[0] & 1) {
    der.assign(reinterpret_cast<const char*>(data) + 1, size - 1);
  } else {
    FuzzedDataProvider in(data + 1, size - 1);
    if (const auto built = build_certificate(in)) der = der_of(built.get());
  }
  const auto* p = reinterpret_cast<const unsigned char*>(der.data());
  tls::X509Ptr cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  ERR_clear_error();
  if (!cert) return 0;
  // i2d can refuse what d2i accepted (e.g. an unencodable name); the gateway never sees such a
  // certificate, since OpenSSL could not have verified its signature.
  unsigned char* probe = nullptr;
  const int len = i2d_X509(cert.get(), &probe);
  OPENSSL_free(probe);
  if (len <= 0) {
    ERR_clear_error();
    return 0;
  }
  check(tls::identity_from_certificate(cert.get(), nullptr), der_of(cert.get()), cert.get());
  ERR_clear_error();
  return 0;
}
