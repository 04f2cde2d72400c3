#include "portcullis/tls/pki_builder.hpp"

#include <openssl/pem.h>
#include <openssl/rand.h>

#include <fmt/format.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace portcullis::tls {

namespace fs = std::filesystem;

namespace {

// P-256 by its short name, which libcrypto's built-in EC code also knows (builtin_ec_keys.hpp).
EvpPkeyPtr generate_key(KeyType type) {
  EvpPkeyPtr key(type == KeyType::rsa2048
                     ? EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048})
                     : EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "prime256v1"));
  if (!key) throw_openssl_error("cannot generate a key");
  return key;
}

// Extensions go through the v3 config syntax so that values read like `openssl x509 -text`.
void add_extension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer ? issuer : cert, cert, nullptr, nullptr, 0);
  X509ExtensionPtr ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str()));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) {
    throw_openssl_error(fmt::format("cannot add extension {}={}", OBJ_nid2sn(nid), value));
  }
}

void add_name_entry(X509_NAME* name, const std::string& field, const std::string& value) {
  if (X509_NAME_add_entry_by_txt(name, field.c_str(), MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(value.c_str()), -1, -1,
                                 0) != 1) {
    throw_openssl_error(fmt::format("cannot add subject attribute {}={}", field, value));
  }
}

void set_random_serial(X509* cert) {
  unsigned char bytes[16];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) throw_openssl_error("cannot generate a serial");
  // Top bit clear keeps the INTEGER positive; a non-zero top nibble keeps it 16 bytes long.
  bytes[0] = static_cast<unsigned char>((bytes[0] & 0x7f) | 0x10);
  BignumPtr bn(BN_bin2bn(bytes, sizeof(bytes), nullptr));
  if (!bn || !BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert))) {
    throw_openssl_error("cannot set the serial");
  }
}

std::string bio_contents(BIO* bio) {
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<std::size_t>(len));
}

}  // namespace

Issued issue_certificate(const CertSpec& spec, const Issued* issuer) {
  Issued out;
  out.key = generate_key(spec.key);
  out.cert.reset(X509_new());
  if (!out.cert) throw_openssl_error("cannot allocate a certificate");
  X509* cert = out.cert.get();
  X509* issuer_cert = issuer ? issuer->cert.get() : nullptr;

  if (X509_set_version(cert, X509_VERSION_3) != 1) throw_openssl_error("cannot set version");
  set_random_serial(cert);
  if (!X509_gmtime_adj(X509_getm_notBefore(cert),
                       static_cast<long>(spec.not_before_offset.count())) ||
      !X509_gmtime_adj(X509_getm_notAfter(cert),
                       static_cast<long>(spec.not_after_offset.count()))) {
    throw_openssl_error("cannot set the validity period");
  }

  X509_NAME* name = X509_get_subject_name(cert);
  for (const auto& [field, value] : spec.extra_subject) add_name_entry(name, field, value);
  add_name_entry(name, "CN", spec.common_name);
  if (X509_set_issuer_name(cert, issuer_cert ? X509_get_subject_name(issuer_cert) : name) != 1 ||
      X509_set_pubkey(cert, out.key.get()) != 1) {
    throw_openssl_error("cannot set issuer or public key");
  }

  if (spec.is_ca) {
    add_extension(cert, issuer_cert, NID_basic_constraints,
                  spec.path_len ? fmt::format("critical,CA:TRUE,pathlen:{}", *spec.path_len)
                                : std::string("critical,CA:TRUE"));
    add_extension(cert, issuer_cert, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    add_extension(cert, issuer_cert, NID_basic_constraints, "critical,CA:FALSE");
    add_extension(cert, issuer_cert, NID_key_usage,
                  spec.key == KeyType::rsa2048 ? "critical,digitalSignature,keyEncipherment"
                                               : "critical,digitalSignature");
    switch (spec.eku) {
      case Eku::none:
        break;
      case Eku::client_auth:
        add_extension(cert, issuer_cert, NID_ext_key_usage, "clientAuth");
        break;
      case Eku::server_auth:
        add_extension(cert, issuer_cert, NID_ext_key_usage, "serverAuth");
        break;
      case Eku::both:
        add_extension(cert, issuer_cert, NID_ext_key_usage, "serverAuth,clientAuth");
        break;
    }
  }
  // SKI first: a self-signed certificate's AKI is derived from its own SKI.
  add_extension(cert, issuer_cert, NID_subject_key_identifier, "hash");
  add_extension(cert, issuer_cert, NID_authority_key_identifier, "keyid:always");
  if (!spec.sans.empty()) {
    std::string list;
    for (const auto& san : spec.sans) list += (list.empty() ? "" : ",") + san;
    add_extension(cert, issuer_cert, NID_subject_alt_name, list);
  }
  if (!spec.crl_distribution_point.empty()) {
    add_extension(cert, issuer_cert, NID_crl_distribution_points,
                  "URI:" + spec.crl_distribution_point);
  }
  if (!spec.ocsp_url.empty()) {
    add_extension(cert, issuer_cert, NID_info_access, "OCSP;URI:" + spec.ocsp_url);
  }

  EVP_PKEY* signing_key = issuer ? issuer->key.get() : out.key.get();
  if (X509_sign(cert, signing_key, EVP_sha256()) == 0) {
    throw_openssl_error(fmt::format("cannot sign the certificate for {}", spec.common_name));
  }
  return out;
}

std::string to_pem(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1) {
    throw_openssl_error("cannot encode a certificate");
  }
  return bio_contents(bio.get());
}

std::string to_pem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio ||
      PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    throw_openssl_error("cannot encode a private key");
  }
  return bio_contents(bio.get());
}

void write_file(const fs::path& path, const std::string& pem, bool secret) {
  if (path.has_parent_path()) fs::create_directories(path.parent_path());
  // Keys are created 0600 from the start, so they are never readable by others, even briefly.
  const int fd =
      ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, secret ? 0600 : 0644);
  if (fd < 0) {
    throw TlsError(fmt::format("cannot write {}: {}", path.string(), std::strerror(errno)));
  }
  if (secret && ::fchmod(fd, 0600) != 0) {
    const int err = errno;
    ::close(fd);
    throw TlsError(fmt::format("cannot restrict {}: {}", path.string(), std::strerror(err)));
  }
  std::size_t written = 0;
  while (written < pem.size()) {
    const ssize_t n = ::write(fd, pem.data() + written, pem.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      throw TlsError(fmt::format("cannot write {}: {}", path.string(), std::strerror(err)));
    }
    written += static_cast<std::size_t>(n);
  }
  if (::close(fd) != 0) {
    throw TlsError(fmt::format("cannot write {}: {}", path.string(), std::strerror(errno)));
  }
}

void write_demo_pki(const fs::path& dir) {
  using std::chrono::hours;
  const auto named = [](std::string cn, bool is_ca = false, std::string org = "portcullis demo") {
    CertSpec spec;
    spec.common_name = std::move(cn);
    spec.is_ca = is_ca;
    spec.extra_subject = {{"O", std::move(org)}};
    return spec;
  };
  auto root_spec = named("portcullis demo Root CA", true);
  root_spec.not_after_offset = hours(24 * 365);
  const auto root = issue_certificate(root_spec, nullptr);
  auto int_spec = named("portcullis demo Intermediate CA", true);
  int_spec.path_len = 0;
  int_spec.not_after_offset = hours(24 * 180);
  const auto intermediate = issue_certificate(int_spec, &root);

  auto server_spec = named("localhost");
  server_spec.eku = Eku::server_auth;
  server_spec.sans = {"DNS:localhost", "IP:127.0.0.1"};
  const auto server = issue_certificate(server_spec, &intermediate);

  const auto root_pem = to_pem(root.cert.get());
  const auto int_pem = to_pem(intermediate.cert.get());
  write_file(dir / "root-ca.pem", root_pem);
  write_file(dir / "intermediate-ca.pem", int_pem);
  write_file(dir / "truststore.pem", root_pem + int_pem);
  write_file(dir / "server-chain.pem", to_pem(server.cert.get()) + int_pem);
  write_file(dir / "server.key", to_pem(server.key.get()), true);

  const auto client = [&](const std::string& file, const CertSpec& spec, const Issued& issuer,
                          const std::string& chain) {
    const auto issued = issue_certificate(spec, &issuer);
    write_file(dir / (file + ".pem"), to_pem(issued.cert.get()) + chain);
    write_file(dir / (file + ".key"), to_pem(issued.key.get()), true);
  };
  auto good = named("client-1");
  good.sans = {"DNS:client-1.demo.internal", "URI:spiffe://demo.internal/client-1",
               "email:client-1@demo.internal"};
  client("client", good, intermediate, int_pem);

  auto expired = named("client-expired");
  expired.not_before_offset = -hours(24 * 30);
  expired.not_after_offset = -hours(24);
  client("client-expired", expired, intermediate, int_pem);

  auto noeku = named("client-noeku");
  noeku.eku = Eku::server_auth;
  client("client-noeku", noeku, intermediate, int_pem);

  // The foreign root is never written: nothing the gateway trusts can vouch for this client.
  const auto foreign_root = issue_certificate(named("Foreign Root CA", true, "Elsewhere"), nullptr);
  client("client-foreign", named("client-foreign", false, "Elsewhere"), foreign_root, "");
}

}  // namespace portcullis::tls
