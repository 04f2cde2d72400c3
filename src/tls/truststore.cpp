#include "portcullis/tls/truststore.hpp"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include <fmt/format.h>

#include <fstream>
#include <set>
#include <sstream>
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

std::string name_hash_key(const X509_NAME* name) {
  unsigned char* der = nullptr;
  const int len = i2d_X509_NAME(name, &der);
  std::string key(reinterpret_cast<char*>(der), len > 0 ? static_cast<std::size_t>(len) : 0);
  OPENSSL_free(der);
  return key;
}

bool is_self_issued(X509* cert) {
  return X509_NAME_cmp(X509_get_subject_name(cert), X509_get_issuer_name(cert)) == 0;
}

void analyse(X509* cert, const std::string& who, std::vector<std::string>& warnings) {
  if (X509_check_ca(cert) == 0) {
    warnings.push_back(
        fmt::format("{}: not a CA certificate (no basicConstraints CA:TRUE); it cannot issue "
                    "client certificates",
                    who));
  }
  time_t now = time(nullptr);
  if (X509_cmp_time(X509_get0_notAfter(cert), &now) < 0) {
    warnings.push_back(fmt::format("{}: expired", who));
  } else if (X509_cmp_time(X509_get0_notBefore(cert), &now) > 0) {
    warnings.push_back(fmt::format("{}: not yet valid", who));
  }
  if (const auto usage = X509_get_key_usage(cert);
      usage != UINT32_MAX && !(usage & KU_KEY_CERT_SIGN)) {
    warnings.push_back(fmt::format("{}: keyUsage lacks keyCertSign", who));
  }
  if (EVP_PKEY* key = X509_get0_pubkey(cert)) {
    const int bits = EVP_PKEY_get_bits(key);
    const int id = EVP_PKEY_get_base_id(key);
    if ((id == EVP_PKEY_RSA && bits < 2048) || (id == EVP_PKEY_EC && bits < 256) ||
        (id == EVP_PKEY_DSA)) {
      warnings.push_back(fmt::format("{}: weak key ({} bits)", who, bits));
    }
  }
  int md_nid = NID_undef, pk_nid = NID_undef;
  if (OBJ_find_sigid_algs(X509_get_signature_nid(cert), &md_nid, &pk_nid) &&
      (md_nid == NID_sha1 || md_nid == NID_md5 || md_nid == NID_md4) && !is_self_issued(cert)) {
    warnings.push_back(fmt::format("{}: weak signature algorithm ({})", who, OBJ_nid2sn(md_nid)));
  }
}

}  // namespace

std::string subject_of(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  X509_NAME_print_ex(bio.get(), X509_get_subject_name(cert), 0, XN_FLAG_RFC2253);
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(len));
}

std::shared_ptr<const Truststore> Truststore::load(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw TlsError(fmt::format("cannot read truststore {}", path.string()));
  std::stringstream text;
  text << in.rdbuf();
  const auto pem = text.str();

  auto trust = std::shared_ptr<Truststore>(new Truststore());
  trust->summary_.path = path;
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  ERR_clear_error();
  for (int index = 1;; ++index) {
    X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (!cert) {
      const auto err = ERR_peek_last_error();
      if (ERR_GET_LIB(err) == ERR_LIB_PEM && ERR_GET_REASON(err) == PEM_R_NO_START_LINE) {
        ERR_clear_error();
        break;
      }
      throw TlsError(fmt::format("truststore {}: certificate #{} does not parse: {}", path.string(),
                                 index, openssl_errors()));
    }
    trust->certificates_.push_back(std::move(cert));
  }
  if (trust->certificates_.empty()) {
    throw TlsError(fmt::format("truststore {} contains no certificates", path.string()));
  }

  trust->store_.reset(X509_STORE_new());
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  EvpMdCtxPtr digest(md);
  EVP_DigestInit_ex(md, EVP_sha256(), nullptr);

  auto& s = trust->summary_;
  std::unordered_set<std::string> subjects;
  std::set<std::string> seen_der;
  for (const auto& cert : trust->certificates_) {
    subjects.insert(name_hash_key(X509_get_subject_name(cert.get())));
  }
  for (const auto& cert : trust->certificates_) {
    unsigned char* der = nullptr;
    const int len = i2d_X509(cert.get(), &der);
    std::string der_bytes(reinterpret_cast<char*>(der), static_cast<std::size_t>(std::max(len, 0)));
    OPENSSL_free(der);
    EVP_DigestUpdate(md, der_bytes.data(), der_bytes.size());
    const auto who = subject_of(cert.get());
    if (!seen_der.insert(der_bytes).second) {
      s.warnings.push_back(fmt::format("{}: duplicate certificate", who));
      continue;
    }
    ++s.certificates;
    const bool self_issued = is_self_issued(cert.get());
    if (self_issued) {
      ++s.roots;
    } else {
      ++s.intermediates;
      if (!subjects.count(name_hash_key(X509_get_issuer_name(cert.get())))) {
        s.warnings.push_back(fmt::format(
            "{}: its issuer is not in the truststore, so no chain through it can be verified",
            who));
      }
    }
    analyse(cert.get(), who, s.warnings);
    if (X509_STORE_add_cert(trust->store_.get(), cert.get()) != 1) {
      throw_openssl_error(fmt::format("truststore {}: cannot add {}", path.string(), who));
    }
  }
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int out_len = 0;
  EVP_DigestFinal_ex(md, out, &out_len);
  trust->digest_ = hex(out, out_len);
  if (s.roots == 0) {
    s.warnings.push_back("no self-signed root CA: no client chain can be verified");
  }
  return trust;
}

std::vector<X509*> Truststore::roots() const {
  std::vector<X509*> out;
  for (const auto& cert : certificates_) {
    if (is_self_issued(cert.get())) out.push_back(cert.get());
  }
  return out;
}

}  // namespace portcullis::tls
