#include "portcullis/tls/truststore.hpp"

#include <openssl/err.h>
#include <openssl/pem.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <fstream>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

namespace portcullis::tls {

namespace {

std::string hex(const unsigned char* data, std::size_t size) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out(size * 2, '0');
  for (std::size_t i = 0; i < size; ++i) {
    out[2 * i] = digits[data[i] >> 4];
    out[2 * i + 1] = digits[data[i] & 15];
  }
  return out;
}

std::string der_of(X509* cert) {
  unsigned char* der = nullptr;
  const int len = i2d_X509(cert, &der);
  if (len <= 0) throw_openssl_error("cannot encode a certificate");
  std::string out(reinterpret_cast<char*>(der), static_cast<std::size_t>(len));
  OPENSSL_free(der);
  return out;
}

std::string format_time(const ASN1_TIME* time) {
  std::tm tm{};
  if (!time || ASN1_TIME_to_tm(time, &tm) != 1) return "an unreadable date";
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

// One PEM block as found in the file: its label, the line of its BEGIN, and its full text.
struct PemBlock {
  std::string_view label;
  std::size_t line = 0;
  std::string_view text;
};

std::string_view trim_right(std::string_view line) {
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r' || line.back() == ' ' ||
                           line.back() == '\t')) {
    line.remove_suffix(1);
  }
  return line;
}

// Splits the bundle into PEM blocks by hand rather than letting PEM_read_bio skip around, so
// that an error can name the line where the broken block starts.
std::vector<PemBlock> split_pem(std::string_view pem, const std::filesystem::path& path) {
  static constexpr std::string_view begin_marker = "-----BEGIN ";
  static constexpr std::string_view end_marker = "-----END ";
  static constexpr std::string_view dashes = "-----";
  std::vector<PemBlock> blocks;
  std::size_t pos = 0, line_no = 0;
  std::optional<PemBlock> open;
  std::size_t open_offset = 0;
  while (pos < pem.size()) {
    const std::size_t eol = pem.find('\n', pos);
    const std::size_t next = eol == std::string_view::npos ? pem.size() : eol + 1;
    ++line_no;
    // Base64 lines never start with '-': only marker lines get a closer look.
    if (pem[pos] != '-') {
      pos = next;
      continue;
    }
    const auto line = trim_right(pem.substr(pos, next - pos));
    const bool framed = line.size() > dashes.size() && line.ends_with(dashes);
    if (framed && line.starts_with(begin_marker)) {
      if (open) {
        throw TlsError(fmt::format("truststore {}: line {}: PEM block '{}' has no END line",
                                   path.string(), open->line, open->label));
      }
      open = PemBlock{
          line.substr(begin_marker.size(), line.size() - begin_marker.size() - dashes.size()),
          line_no,
          {}};
      open_offset = pos;
    } else if (framed && line.starts_with(end_marker) && open) {
      const auto label =
          line.substr(end_marker.size(), line.size() - end_marker.size() - dashes.size());
      if (label != open->label) {
        throw TlsError(fmt::format("truststore {}: line {}: PEM block '{}' ends with '{}'",
                                   path.string(), open->line, open->label, label));
      }
      open->text = pem.substr(open_offset, next - open_offset);
      blocks.push_back(*open);
      open.reset();
    }
    pos = next;
  }
  if (open) {
    throw TlsError(fmt::format("truststore {}: line {}: PEM block '{}' has no END line",
                               path.string(), open->line, open->label));
  }
  return blocks;
}

std::string read_file(const std::filesystem::path& path) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (!std::filesystem::exists(status)) {
    throw TlsError(fmt::format("truststore {}: file not found", path.string()));
  }
  if (std::filesystem::is_directory(status)) {
    throw TlsError(fmt::format("truststore {}: is a directory, not a PEM bundle", path.string()));
  }
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) {
    throw TlsError(
        fmt::format("truststore {}: cannot read: {}", path.string(), std::strerror(errno)));
  }
  std::string text(static_cast<std::size_t>(std::max<std::streamoff>(in.tellg(), 0)), '\0');
  in.seekg(0);
  if (!in.read(text.data(), static_cast<std::streamsize>(text.size()))) {
    throw TlsError(
        fmt::format("truststore {}: cannot read: {}", path.string(), std::strerror(errno)));
  }
  return text;
}

bool is_certificate_label(std::string_view label) {
  return label == "CERTIFICATE" || label == "TRUSTED CERTIFICATE" || label == "X509 CERTIFICATE";
}

X509Ptr parse_block(const PemBlock& block, std::size_t index, const std::filesystem::path& path) {
  BioPtr bio(BIO_new_mem_buf(block.text.data(), static_cast<int>(block.text.size())));
  if (!bio) throw_openssl_error("cannot allocate a BIO");
  // TRUSTED CERTIFICATE blocks carry OpenSSL trust settings after the certificate.
  X509Ptr cert(block.label == "TRUSTED CERTIFICATE"
                   ? PEM_read_bio_X509_AUX(bio.get(), nullptr, nullptr, nullptr)
                   : PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) {
    throw TlsError(fmt::format("truststore {}: line {}: certificate #{} does not parse: {}",
                               path.string(), block.line, index, openssl_errors()));
  }
  return cert;
}

// Finds certificates by subject name in O(1): the name hash narrows, X509_NAME_cmp decides.
class SubjectIndex {
 public:
  void add(X509* cert) { by_hash_.emplace(hash(X509_get_subject_name(cert)), cert); }
  bool contains(const X509_NAME* name) const {
    auto [it, end] = by_hash_.equal_range(hash(name));
    for (; it != end; ++it) {
      if (X509_NAME_cmp(X509_get_subject_name(it->second), name) == 0) return true;
    }
    return false;
  }

 private:
  static unsigned long hash(const X509_NAME* name) {
    int ok = 0;
    const unsigned long h = X509_NAME_hash_ex(name, nullptr, nullptr, &ok);
    return ok ? h : 0;
  }
  std::unordered_multimap<unsigned long, X509*> by_hash_;
};

// RFC 4514 order, UTF-8 kept as is so that names in messages stay readable.
std::string name_text(const X509_NAME* name) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) < 0) {
    return "(unprintable name)";
  }
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(len));
}

bool is_self_signed(X509* cert) {
  return X509_self_signed(cert, 0) == 1;
}

void analyse(X509* cert, const std::string& who, bool self_signed, std::vector<std::string>& out) {
  const std::uint32_t flags = X509_get_extension_flags(cert);
  const bool is_ca = (flags & EXFLAG_BCONS) && (flags & EXFLAG_CA);
  if (!is_ca) {
    out.push_back(fmt::format(
        "{}: not a CA certificate (basicConstraints {}); no client chain can pass through it", who,
        (flags & EXFLAG_BCONS) ? "CA:FALSE" : "absent"));
  }

  if (X509_cmp_current_time(X509_get0_notAfter(cert)) < 0) {
    out.push_back(fmt::format("{}: expired on {}; chains through it fail", who,
                              format_time(X509_get0_notAfter(cert))));
  } else if (X509_cmp_current_time(X509_get0_notBefore(cert)) > 0) {
    out.push_back(fmt::format("{}: not valid before {}; chains through it fail until then", who,
                              format_time(X509_get0_notBefore(cert))));
  }

  if (is_ca && (flags & EXFLAG_KUSAGE) && !(X509_get_key_usage(cert) & KU_KEY_CERT_SIGN)) {
    out.push_back(
        fmt::format("{}: keyUsage lacks keyCertSign; certificates it issued will not verify", who));
  }

  if (EVP_PKEY* key = X509_get0_pubkey(cert)) {
    const int bits = EVP_PKEY_get_bits(key);
    const int id = EVP_PKEY_get_base_id(key);
    const bool weak =
        ((id == EVP_PKEY_RSA || id == EVP_PKEY_RSA_PSS || id == EVP_PKEY_DSA) && bits < 2048) ||
        (id == EVP_PKEY_EC && bits < 256);
    if (weak) {
      const char* type = id == EVP_PKEY_EC ? "EC" : id == EVP_PKEY_DSA ? "DSA" : "RSA";
      out.push_back(fmt::format("{}: weak key ({} {} bits)", who, type, bits));
    }
  }

  // A trust anchor's own signature is never checked, so only signatures that a chain relies on
  // are worth a warning.
  int md_nid = NID_undef, pk_nid = NID_undef;
  if (!self_signed && OBJ_find_sigid_algs(X509_get_signature_nid(cert), &md_nid, &pk_nid) == 1 &&
      (md_nid == NID_sha1 || md_nid == NID_md5 || md_nid == NID_md4 || md_nid == NID_md2)) {
    out.push_back(fmt::format("{}: weak signature algorithm ({})", who,
                              OBJ_nid2ln(X509_get_signature_nid(cert))));
  }
}

}  // namespace

std::string subject_of(X509* cert) {
  return name_text(X509_get_subject_name(cert));
}

std::shared_ptr<const Truststore> Truststore::load(const std::filesystem::path& path) {
  const auto pem = read_file(path);
  const auto blocks = split_pem(pem, path);

  auto trust = std::shared_ptr<Truststore>(new Truststore());
  auto& summary = trust->summary_;
  summary.path = path;

  EvpMdCtxPtr md(EVP_MD_CTX_new());
  if (!md || EVP_DigestInit_ex(md.get(), EVP_sha256(), nullptr) != 1) {
    throw_openssl_error("cannot start a SHA-256 digest");
  }
  std::unordered_set<std::string> seen_der;
  std::size_t index = 0;
  for (const auto& block : blocks) {
    if (!is_certificate_label(block.label)) {
      summary.warnings.push_back(fmt::format(
          "line {}: ignored a '{}' PEM block (not a certificate)", block.line, block.label));
      continue;
    }
    auto cert = parse_block(block, ++index, path);
    auto der = der_of(cert.get());
    EVP_DigestUpdate(md.get(), der.data(), der.size());
    if (!seen_der.insert(std::move(der)).second) {
      summary.warnings.push_back(
          fmt::format("{}: duplicate certificate (line {})", subject_of(cert.get()), block.line));
      continue;
    }
    trust->certificates_.push_back(std::move(cert));
  }
  if (trust->certificates_.empty()) {
    throw TlsError(fmt::format("truststore {} contains no certificates", path.string()));
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  if (EVP_DigestFinal_ex(md.get(), digest, &digest_len) != 1) {
    throw_openssl_error("cannot finish a SHA-256 digest");
  }
  trust->digest_ = hex(digest, digest_len);

  SubjectIndex subjects;
  for (const auto& cert : trust->certificates_) subjects.add(cert.get());

  trust->store_.reset(X509_STORE_new());
  if (!trust->store_) throw_openssl_error("cannot allocate a certificate store");
  for (const auto& cert : trust->certificates_) {
    const auto who = subject_of(cert.get());
    const bool self_signed = is_self_signed(cert.get());
    if (self_signed) {
      ++summary.roots;
    } else {
      ++summary.intermediates;
      if (!subjects.contains(X509_get_issuer_name(cert.get()))) {
        summary.warnings.push_back(fmt::format(
            "{}: its issuer ({}) is not in the truststore, so no chain through it can be verified",
            who, name_text(X509_get_issuer_name(cert.get()))));
      }
    }
    analyse(cert.get(), who, self_signed, summary.warnings);
    if (X509_STORE_add_cert(trust->store_.get(), cert.get()) != 1) {
      throw_openssl_error(fmt::format("truststore {}: cannot add {}", path.string(), who));
    }
  }
  summary.certificates = trust->certificates_.size();
  if (summary.roots == 0) {
    summary.warnings.push_back(
        "no self-signed root CA: client chains need a root in the truststore as their anchor");
  }
  return trust;
}

std::vector<X509*> Truststore::roots() const {
  std::vector<X509*> out;
  for (const auto& cert : certificates_) {
    if (is_self_signed(cert.get())) out.push_back(cert.get());
  }
  return out;
}

}  // namespace portcullis::tls
