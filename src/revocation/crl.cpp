#include "portcullis/revocation/crl.hpp"

#include <openssl/asn1.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <ctime>

namespace portcullis::revocation {

namespace {

using tls::BioPtr;

// One DER TLV: its tag, content, and the whole encoding.
struct Tlv {
  std::uint8_t tag = 0;
  const std::uint8_t* content = nullptr;
  std::size_t length = 0;
  const std::uint8_t* start = nullptr;
  std::size_t total = 0;
};

class DerReader {
 public:
  DerReader(const std::uint8_t* data, std::size_t size) : p_(data), end_(data + size) {}
  explicit DerReader(const Tlv& tlv) : DerReader(tlv.content, tlv.length) {}

  bool at_end() const noexcept { return p_ >= end_; }
  std::uint8_t peek_tag() const {
    if (at_end()) throw CrlError("malformed CRL: unexpected end of data");
    return *p_;
  }

  Tlv next() {
    Tlv t;
    t.start = p_;
    if (end_ - p_ < 2) throw CrlError("malformed CRL: truncated element");
    t.tag = *p_++;
    if ((t.tag & 0x1f) == 0x1f)
      throw CrlError("malformed CRL: high tag numbers are not used in CRLs");
    std::size_t length = *p_++;
    if (length & 0x80) {
      const std::size_t octets = length & 0x7f;
      if (octets == 0 || octets > 4 || static_cast<std::size_t>(end_ - p_) < octets) {
        throw CrlError("malformed CRL: bad length encoding");
      }
      length = 0;
      for (std::size_t i = 0; i < octets; ++i) length = (length << 8) | *p_++;
    }
    if (static_cast<std::size_t>(end_ - p_) < length)
      throw CrlError("malformed CRL: element longer than its container");
    t.content = p_;
    t.length = length;
    p_ += length;
    t.total = static_cast<std::size_t>(p_ - t.start);
    return t;
  }

  Tlv expect(std::uint8_t tag, const char* what) {
    const auto t = next();
    if (t.tag != tag)
      throw CrlError(fmt::format("malformed CRL: expected {} (tag 0x{:02x}), found tag 0x{:02x}",
                                 what, tag, t.tag));
    return t;
  }

 private:
  const std::uint8_t* p_;
  const std::uint8_t* end_;
};

constexpr std::uint8_t tag_integer = 0x02, tag_bit_string = 0x03, tag_sequence = 0x30,
                       tag_utc_time = 0x17, tag_generalized_time = 0x18, tag_context_0 = 0xa0;

std::string as_string(const Tlv& t) {
  return std::string(reinterpret_cast<const char*>(t.start), t.total);
}

std::chrono::system_clock::time_point parse_time(const Tlv& t) {
  const unsigned char* p = t.start;
  std::unique_ptr<ASN1_TIME, tls::OpenSslDeleter<ASN1_TIME_free>> time(
      d2i_ASN1_TIME(nullptr, &p, static_cast<long>(t.total)));
  struct tm tm {};
  if (!time || ASN1_TIME_to_tm(time.get(), &tm) != 1)
    throw CrlError("malformed CRL: bad time value");
  return std::chrono::system_clock::from_time_t(timegm(&tm));
}

std::string integer_hex(const ASN1_INTEGER* value) {
  tls::BignumPtr bn(ASN1_INTEGER_to_BN(value, nullptr));
  if (!bn) return "";
  char* hex = BN_bn2hex(bn.get());
  std::string out = hex;
  OPENSSL_free(hex);
  return out;
}

void parse_extensions(const Tlv& explicit_tag, ParsedCrl& crl) {
  DerReader outer(explicit_tag);
  const auto seq = outer.expect(tag_sequence, "crlExtensions");
  const unsigned char* p = seq.start;
  std::unique_ptr<STACK_OF(X509_EXTENSION), void (*)(STACK_OF(X509_EXTENSION)*)> exts(
      d2i_X509_EXTENSIONS(nullptr, &p, static_cast<long>(seq.total)),
      [](STACK_OF(X509_EXTENSION) * s) { sk_X509_EXTENSION_pop_free(s, X509_EXTENSION_free); });
  if (!exts) throw CrlError("malformed CRL: extensions do not parse");
  for (int i = 0; i < sk_X509_EXTENSION_num(exts.get()); ++i) {
    X509_EXTENSION* ext = sk_X509_EXTENSION_value(exts.get(), i);
    const int nid = OBJ_obj2nid(X509_EXTENSION_get_object(ext));
    switch (nid) {
      case NID_crl_number: {
        std::unique_ptr<ASN1_INTEGER, tls::OpenSslDeleter<ASN1_INTEGER_free>> number(
            static_cast<ASN1_INTEGER*>(X509V3_EXT_d2i(ext)));
        if (!number) throw CrlError("malformed CRL: bad cRLNumber");
        crl.crl_number = integer_hex(number.get());
        break;
      }
      case NID_delta_crl:
        throw CrlError("delta CRLs are not supported: publish a complete CRL");
      case NID_issuing_distribution_point:
        // A partitioned or indirect CRL covers only part of the issuer's certificates; using it
        // as complete would report unlisted revoked certificates as good.
        throw CrlError(
            "CRLs with an issuingDistributionPoint (partitioned or indirect CRLs) are not "
            "supported");
      case NID_authority_key_identifier:
      case NID_freshest_crl:
      case NID_info_access:
        break;
      default:
        if (X509_EXTENSION_get_critical(ext)) {
          throw CrlError(fmt::format("unsupported critical CRL extension {}",
                                     OBJ_nid2sn(nid) ? OBJ_nid2sn(nid) : "(unknown)"));
        }
    }
  }
}

std::string pem_to_der(std::string_view pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  char* name = nullptr;
  char* header = nullptr;
  unsigned char* data = nullptr;
  long length = 0;
  if (PEM_read_bio(bio.get(), &name, &header, &data, &length) != 1) {
    ERR_clear_error();
    throw CrlError("malformed CRL: PEM data does not decode");
  }
  const bool is_crl = std::strcmp(name, "X509 CRL") == 0;
  std::string der(reinterpret_cast<char*>(data), static_cast<std::size_t>(length));
  OPENSSL_free(name);
  OPENSSL_free(header);
  OPENSSL_free(data);
  if (!is_crl) throw CrlError("malformed CRL: PEM block is not an X509 CRL");
  return der;
}

}  // namespace

std::optional<Serial> serial_from_der_content(const std::uint8_t* data, std::size_t size) noexcept {
  if (size == 0 || (data[0] & 0x80)) return std::nullopt;  // empty or negative
  return serial_from_magnitude(data, size);
}

std::optional<Serial> serial_from_magnitude(const std::uint8_t* data, std::size_t size) noexcept {
  while (size > 1 && data[0] == 0) {
    ++data;
    --size;
  }
  if (size == 0 || size > 20) return std::nullopt;
  Serial s{};
  std::memcpy(s.data() + (20 - size), data, size);
  return s;
}

std::optional<Serial> serial_of(const X509* cert) noexcept {
  // OpenSSL keeps INTEGER magnitudes without the DER sign octet; the sign is in the type.
  const ASN1_INTEGER* serial = X509_get0_serialNumber(cert);
  if (!serial || ASN1_STRING_type(serial) == V_ASN1_NEG_INTEGER) return std::nullopt;
  return serial_from_magnitude(ASN1_STRING_get0_data(serial),
                               static_cast<std::size_t>(ASN1_STRING_length(serial)));
}

ParsedCrl parse_crl(std::string_view bytes) {
  ParsedCrl crl;
  if (bytes.substr(0, 10) == "-----BEGIN" || bytes.find("-----BEGIN X509 CRL-----") < 64) {
    crl.der_from_pem = std::make_shared<const std::string>(pem_to_der(bytes));
    bytes = *crl.der_from_pem;
  }
  const auto* data = reinterpret_cast<const std::uint8_t*>(bytes.data());
  DerReader top(data, bytes.size());
  const auto list = top.expect(tag_sequence, "CertificateList");
  if (!top.at_end()) throw CrlError("malformed CRL: trailing data after the CertificateList");

  DerReader outer(list);
  const auto tbs = outer.expect(tag_sequence, "tbsCertList");
  const auto sig_alg = outer.expect(tag_sequence, "signatureAlgorithm");
  const auto sig = outer.expect(tag_bit_string, "signatureValue");
  if (sig.length < 1 || sig.content[0] != 0)
    throw CrlError("malformed CRL: bad signature bit string");
  crl.tbs = std::string_view(reinterpret_cast<const char*>(tbs.start), tbs.total);
  crl.signature_alg = as_string(sig_alg);
  crl.signature.assign(reinterpret_cast<const char*>(sig.content + 1), sig.length - 1);

  DerReader body(tbs);
  if (body.peek_tag() == tag_integer) {
    const auto version = body.next();
    if (version.length != 1 || version.content[0] != 1) throw CrlError("unsupported CRL version");
  }
  const auto inner_alg = body.expect(tag_sequence, "signature");
  if (as_string(inner_alg) != crl.signature_alg) {
    throw CrlError(
        "malformed CRL: the signature algorithm inside and outside the signed part differ");
  }
  const auto issuer = body.expect(tag_sequence, "issuer");
  crl.issuer_der = as_string(issuer);
  const auto this_update = body.next();
  if (this_update.tag != tag_utc_time && this_update.tag != tag_generalized_time) {
    throw CrlError("malformed CRL: bad thisUpdate");
  }
  crl.this_update = parse_time(this_update);
  if (!body.at_end() &&
      (body.peek_tag() == tag_utc_time || body.peek_tag() == tag_generalized_time)) {
    crl.next_update = parse_time(body.next());
  }
  if (!body.at_end() && body.peek_tag() == tag_sequence) {
    const auto list = body.next();
    // ~37 bytes per entry (16-byte serial, UTCTime): one allocation instead of ~20 doublings.
    // The vector lives only until the SerialSet is built, so reserving a little more is cheap.
    crl.revoked.reserve(list.length / 32);
    DerReader entries(list);
    while (!entries.at_end()) {
      DerReader entry(entries.expect(tag_sequence, "revokedCertificate"));
      const auto serial = entry.expect(tag_integer, "userCertificate");
      if (auto s = serial_from_der_content(serial.content, serial.length)) {
        crl.revoked.push_back(*s);
      } else {
        // Kept as magnitude octets, the form OpenSSL gives for a certificate's serial.
        const std::size_t sign = serial.length > 1 && serial.content[0] == 0 ? 1 : 0;
        crl.oversized_serials.emplace_back(reinterpret_cast<const char*>(serial.content) + sign,
                                           serial.length - sign);
      }
    }
  }
  if (!body.at_end() && body.peek_tag() == tag_context_0) parse_extensions(body.next(), crl);
  if (!body.at_end()) throw CrlError("malformed CRL: unexpected data in tbsCertList");

  return crl;
}

void verify_crl(const ParsedCrl& crl, X509* issuer) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(crl.issuer_der.data());
  tls::X509NamePtr name(d2i_X509_NAME(nullptr, &p, static_cast<long>(crl.issuer_der.size())));
  if (!name) throw CrlError("malformed CRL: issuer name does not parse");
  if (X509_NAME_cmp(name.get(), X509_get_subject_name(issuer)) != 0) {
    throw CrlError("the CRL's issuer is not the expected CA");
  }
  if (const auto usage = X509_get_key_usage(issuer);
      usage != UINT32_MAX && !(usage & KU_CRL_SIGN)) {
    throw CrlError("the issuing CA's keyUsage does not allow signing CRLs (cRLSign)");
  }

  p = reinterpret_cast<const unsigned char*>(crl.signature_alg.data());
  std::unique_ptr<X509_ALGOR, tls::OpenSslDeleter<X509_ALGOR_free>> alg(
      d2i_X509_ALGOR(nullptr, &p, static_cast<long>(crl.signature_alg.size())));
  if (!alg) throw CrlError("malformed CRL: signature algorithm does not parse");
  const int sig_nid = OBJ_obj2nid(alg->algorithm);
  int md_nid = NID_undef, pk_nid = NID_undef;
  if (sig_nid == NID_rsassaPss || !OBJ_find_sigid_algs(sig_nid, &md_nid, &pk_nid)) {
    throw CrlError(fmt::format("unsupported CRL signature algorithm {}",
                               OBJ_nid2sn(sig_nid) ? OBJ_nid2sn(sig_nid) : "(unknown)"));
  }
  const EVP_MD* md = md_nid == NID_undef ? nullptr : EVP_get_digestbynid(md_nid);
  EVP_PKEY* key = X509_get0_pubkey(issuer);
  if (!key) throw CrlError("the issuing CA's public key is unusable");
  tls::EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  if (EVP_DigestVerifyInit(ctx.get(), nullptr, md, nullptr, key) != 1 ||
      EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(crl.signature.data()),
                       crl.signature.size(), reinterpret_cast<const unsigned char*>(crl.tbs.data()),
                       crl.tbs.size()) != 1) {
    ERR_clear_error();
    throw CrlError("bad CRL signature: not signed by the issuing CA's key");
  }
}

int compare_crl_numbers(const std::string& a, const std::string& b) noexcept {
  auto strip = [](const std::string& s) {
    std::string_view v = s;
    while (v.size() > 1 && v.front() == '0') v.remove_prefix(1);
    return v;
  };
  const auto x = strip(a), y = strip(b);
  if (x.size() != y.size()) return x.size() < y.size() ? -1 : 1;
  return x.compare(y) < 0 ? -1 : (x == y ? 0 : 1);
}

}  // namespace portcullis::revocation
