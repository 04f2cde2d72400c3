// portcullis-crl-bench: the revocation index at million-entry scale.
//   portcullis-crl-bench generate DIR [ENTRIES] [--ca CA.pem --ca-key CA.key]
//                        [--serials FILE] [--crl-number N] [--reason] [--out FILE]
//       writes DIR/ca.pem and DIR/crl.der (or --out): ENTRIES random 16-byte serials plus the
//       serials listed in FILE (hex, one a line, "serial=" prefix allowed), signed by a new CA
//       or by the given one; --reason adds a reasonCode extension to each entry, as most CAs do
//   portcullis-crl-bench measure DIR              parse, verify, index, lookups, memory
// Run `measure` in a fresh process so its RSS reflects only what the index keeps. Times are CPU
// time of the measuring thread.

#include "portcullis/revocation/crl.hpp"
#include "portcullis/revocation/crl_checker.hpp"
#include "portcullis/revocation/revocation_index.hpp"
#include "portcullis/tls/pki_builder.hpp"

#include <openssl/evp.h>
#include <openssl/pem.h>

#include <fmt/format.h>

#include <malloc.h>
#include <time.h>
#include <cctype>
#include <chrono>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

using namespace portcullis;
// CPU time of the measuring thread: on shared cores, time spent waiting for a CPU while other
// processes run would otherwise count as lookup time.
struct Clock {
  using duration = std::chrono::nanoseconds;
  using rep = duration::rep;
  using period = duration::period;
  using time_point = std::chrono::time_point<Clock, duration>;
  static constexpr bool is_steady = true;
  static time_point now() noexcept {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return time_point(std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec));
  }
};

namespace {

std::string tlv(unsigned char tag, const std::string& content) {
  std::string out(1, static_cast<char>(tag));
  const auto n = content.size();
  if (n < 0x80) {
    out += static_cast<char>(n);
  } else {
    std::string len;
    for (auto v = n; v; v >>= 8) len.insert(len.begin(), static_cast<char>(v & 0xff));
    out += static_cast<char>(0x80 | len.size());
    out += len;
  }
  return out + content;
}

std::string utc_time(std::time_t t) {
  char buf[32];
  std::strftime(buf, sizeof(buf), "%y%m%d%H%M%SZ", std::gmtime(&t));
  return tlv(0x17, buf);
}

long rss_kib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return 0;
}

std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

struct GenerateOptions {
  std::string dir;
  std::size_t entries = 1'000'000;
  std::string ca_cert, ca_key;  // empty: a new self-signed CA
  std::string serials_file;
  std::uint64_t crl_number = 1;
  bool reason = false;
  std::string out;  // empty: DIR/crl.der
};

// An INTEGER's content octets from hex (big-endian, with a leading 0x00 when the top bit is set).
std::string integer_content(std::string hex) {
  if (hex.size() % 2) hex.insert(hex.begin(), '0');
  std::string out;
  for (std::size_t i = 0; i < hex.size(); i += 2)
    out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  while (out.size() > 1 && out[0] == '\0' && !(out[1] & 0x80)) out.erase(0, 1);
  if (out.empty() || (out[0] & 0x80)) out.insert(out.begin(), '\0');
  return out;
}

std::string integer_content(std::uint64_t value) {
  return integer_content(fmt::format("{:x}", value));
}

std::vector<std::string> read_serials(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("--serials: cannot read " + path);
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    if (const auto eq = line.find('='); eq != std::string::npos) line = line.substr(eq + 1);
    std::string hex;
    for (char c : line)
      if (std::isxdigit(static_cast<unsigned char>(c))) hex += c;
    if (!hex.empty()) out.push_back(integer_content(hex));
  }
  return out;
}

tls::Issued load_ca(const std::string& cert_path, const std::string& key_path) {
  tls::BioPtr cert_bio(BIO_new_file(cert_path.c_str(), "r"));
  tls::X509Ptr cert(cert_bio ? PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr)
                             : nullptr);
  if (!cert) throw std::runtime_error("--ca: " + cert_path + " is not a PEM certificate");
  tls::BioPtr key_bio(BIO_new_file(key_path.c_str(), "r"));
  tls::EvpPkeyPtr key(key_bio ? PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr)
                              : nullptr);
  if (!key || X509_check_private_key(cert.get(), key.get()) != 1) {
    throw std::runtime_error("--ca-key: " + key_path + " is not the unencrypted key of " +
                             cert_path);
  }
  return tls::Issued{std::move(cert), std::move(key)};
}

int generate(const GenerateOptions& o) {
  const auto& dir = o.dir;
  const auto entries = o.entries;
  tls::Issued ca;
  if (o.ca_cert.empty()) {
    tls::CertSpec spec;
    spec.common_name = "Bench CA";
    spec.is_ca = true;
    ca = tls::issue_certificate(spec, nullptr);
  } else {
    ca = load_ca(o.ca_cert, o.ca_key);
  }
  tls::write_file(dir + "/ca.pem", tls::to_pem(ca.cert.get()));

  unsigned char* name_der = nullptr;
  const int name_len = i2d_X509_NAME(X509_get_subject_name(ca.cert.get()), &name_der);
  const std::string issuer(reinterpret_cast<char*>(name_der), static_cast<std::size_t>(name_len));
  OPENSSL_free(name_der);

  // ecdsa-with-SHA256, or sha256WithRSAEncryption (whose parameters are an explicit NULL).
  std::string alg;
  if (EVP_PKEY_get_base_id(ca.key.get()) == EVP_PKEY_EC) {
    alg = tlv(0x30, tlv(0x06, std::string("\x2a\x86\x48\xce\x3d\x04\x03\x02", 8)));
  } else if (EVP_PKEY_get_base_id(ca.key.get()) == EVP_PKEY_RSA) {
    alg = tlv(0x30, tlv(0x06, std::string("\x2a\x86\x48\x86\xf7\x0d\x01\x01\x0b", 9)) +
                        std::string("\x05\x00", 2));
  } else {
    throw std::runtime_error("--ca-key: only EC and RSA CA keys are supported");
  }
  const auto now = std::time(nullptr);
  std::mt19937_64 rng(1);
  std::string revoked;
  revoked.reserve(entries * 40);
  const auto when = utc_time(now - 3600);
  // reasonCode keyCompromise: 14 more bytes per entry, as in the CRLs of most public CAs.
  const std::string reason =
      o.reason ? tlv(0x30, tlv(0x30, tlv(0x06, std::string("\x55\x1d\x15", 3)) +
                                         tlv(0x04, tlv(0x0a, std::string(1, '\x01')))))
               : std::string();
  const auto add = [&](const std::string& serial) {
    revoked += tlv(0x30, tlv(0x02, serial) + when + reason);
  };
  for (std::size_t i = 0; i < entries; ++i) {
    std::string serial(16, '\0');
    for (auto& c : serial) c = static_cast<char>(rng());
    serial[0] = static_cast<char>((serial[0] & 0x7f) | 0x10);
    add(serial);
  }
  std::size_t listed = 0;
  if (!o.serials_file.empty()) {
    for (const auto& serial : read_serials(o.serials_file)) {
      add(serial);
      ++listed;
    }
  }
  const std::string crl_number = tlv(0x30, tlv(0x06, std::string("\x55\x1d\x14", 3)) +
                                               tlv(0x04, tlv(0x02, integer_content(o.crl_number))));
  const std::string tbs =
      tlv(0x30, tlv(0x02, std::string(1, '\x01')) + alg + issuer + utc_time(now - 60) +
                    utc_time(now + 86400) + tlv(0x30, revoked) + tlv(0xa0, tlv(0x30, crl_number)));
  tls::EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  std::size_t sig_len = 0;
  EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, ca.key.get());
  EVP_DigestSign(ctx.get(), nullptr, &sig_len, reinterpret_cast<const unsigned char*>(tbs.data()),
                 tbs.size());
  std::string sig(sig_len, '\0');
  EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &sig_len,
                 reinterpret_cast<const unsigned char*>(tbs.data()), tbs.size());
  sig.resize(sig_len);
  const std::string crl = tlv(0x30, tbs + alg + tlv(0x03, std::string(1, '\0') + sig));
  const auto out = o.out.empty() ? dir + "/crl.der" : o.out;
  std::ofstream(out, std::ios::binary) << crl;
  std::cout << fmt::format("wrote {}: {} entries ({} listed), crlNumber {}, {:.1f} MB\n", out,
                           entries + listed, listed, o.crl_number, crl.size() / 1e6);
  return 0;
}

int measure(const std::string& dir) {
  const long rss_start = rss_kib();
  tls::BioPtr bio(BIO_new_file((dir + "/ca.pem").c_str(), "r"));
  tls::X509Ptr ca(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  auto bytes = read(dir + "/crl.der");

  auto t = Clock::now();
  auto parsed = revocation::parse_crl(bytes);
  const double parse_ms = ms_since(t);
  t = Clock::now();
  revocation::verify_crl(parsed, ca.get());
  const double verify_ms = ms_since(t);
  t = Clock::now();
  auto entry = std::make_shared<revocation::IssuerRevocations>();
  entry->set_issuer(ca.get());
  // What parse_crl reserved: held only until the SerialSet is built.
  const auto parsed_capacity = parsed.revoked.capacity();
  t = Clock::now();
  entry->revoked = revocation::SerialSet(std::move(parsed.revoked));
  const double index_ms = ms_since(t);
  const auto n = entry->revoked.size();
  revocation::RevocationIndex index({entry});
  parsed = {};
  bytes.clear();
  bytes.shrink_to_fit();
  malloc_trim(0);  // return freed parse buffers, so RSS shows what the index keeps
  const long rss_index = rss_kib();
  const std::vector<revocation::Serial> listed(entry->revoked.begin(), entry->revoked.end());

  // Lookups: half present (drawn from the whole list), half absent (shaped like the generated
  // serials, so a search runs as deep as for a real certificate), in random order. A second set
  // repeats 1000 serials, which stay in cache: the best case, not what a fleet of clients sees.
  std::mt19937_64 rng(2);
  const auto random_serial = [&] {
    revocation::Serial s{};
    for (std::size_t i = s.size() - 16; i < s.size(); ++i) s[i] = static_cast<std::uint8_t>(rng());
    s[s.size() - 16] = static_cast<std::uint8_t>((s[s.size() - 16] & 0x7f) | 0x10);
    return s;
  };
  const auto time_lookups = [&](const std::vector<revocation::Serial>& keys, std::size_t& hits) {
    hits = 0;
    const auto start = Clock::now();
    for (const auto& k : keys)
      hits += index.lookup(entry->issuer_key, k) == revocation::RevocationIndex::Result::revoked;
    return ms_since(start) * 1e6 / static_cast<double>(keys.size());
  };
  std::vector<revocation::Serial> keys, hot_keys;
  const std::size_t hot = std::min<std::size_t>(listed.size(), 1000);
  for (int i = 0; i < 1'000'000; ++i) {
    keys.push_back(i % 2 && n ? listed[rng() % listed.size()] : random_serial());
    hot_keys.push_back(i % 2 && hot ? listed[rng() % hot] : random_serial());
  }
  std::size_t hits = 0, hot_hits = 0;
  const double lookup_ns = time_lookups(keys, hits);
  const double hot_lookup_ns = time_lookups(hot_keys, hot_hits);

  // What the verify callback pays per certificate: the issuer's entry is found from the CA
  // certificate, the serial is taken from the client certificate, then the search runs. 4096
  // client certificates (half listed) with random serials, so the serial searches miss the
  // cache as they would across a fleet of clients.
  std::vector<tls::X509Ptr> certs;
  for (int i = 0; i < 4096; ++i) {
    tls::X509Ptr c(X509_dup(ca.get()));
    const auto s = i % 2 && n ? listed[rng() % listed.size()] : random_serial();
    tls::BignumPtr bn(BN_bin2bn(s.data(), static_cast<int>(s.size()), nullptr));
    tls::Asn1IntegerPtr serial(BN_to_ASN1_INTEGER(bn.get(), nullptr));
    X509_set_serialNumber(c.get(), serial.get());
    certs.push_back(std::move(c));
  }
  revocation::CrlChecker checker(config::OnUnknown::deny, std::chrono::hours(1));
  checker.publish(std::make_shared<const revocation::RevocationIndex>(
      std::vector<std::shared_ptr<const revocation::IssuerRevocations>>{entry}));
  constexpr int cert_rounds = 1'000'000;
  t = Clock::now();
  for (int i = 0; i < 200'000; ++i) (void)revocation::key_hash_of(ca.get());
  const double key_hash_ns = ms_since(t) * 1e6 / 200'000;
  std::size_t cert_hits = 0, check_revoked = 0;
  t = Clock::now();
  for (int i = 0; i < cert_rounds; ++i)
    cert_hits += index.lookup(certs[i & 4095].get(), ca.get()) ==
                 revocation::RevocationIndex::Result::revoked;
  const double cert_lookup_ns = ms_since(t) * 1e6 / cert_rounds;
  t = Clock::now();
  for (int i = 0; i < cert_rounds; ++i)
    check_revoked +=
        checker.check(certs[i & 4095].get(), ca.get()).status == revocation::Status::revoked;
  const double check_ns = ms_since(t) * 1e6 / cert_rounds;

  const auto der = read(dir + "/crl.der");
  const unsigned char* p = reinterpret_cast<const unsigned char*>(der.data());
  t = Clock::now();
  tls::X509CrlPtr reference(d2i_X509_CRL(nullptr, &p, static_cast<long>(der.size())));
  const double openssl_ms = ms_since(t);

  std::cout << fmt::format(
      "entries                 {}\n"
      "parse (portcullis)      {:.0f} ms\n"
      "verify signature        {:.0f} ms\n"
      "build index             {:.0f} ms (SerialSet: bucket, sort within buckets, deduplicate)\n"
      "fetch-to-published      {:.0f} ms (parse + verify + index; file already read)\n"
      "index memory            {:.1f} bytes/entry held ({:.1f} MiB RSS growth over the empty "
      "process; RSS {:.1f} MiB)\n"
      "parse buffer            {:.1f} bytes/entry (reserved by parse_crl; freed once the index "
      "is built)\n"
      "lookup                  {:.0f} ns (1M lookups of random serials, {} hits)\n"
      "lookup, cached          {:.0f} ns (1M lookups among 1000 serials, {} hits)\n"
      "largest bucket          {} serials ({} buckets)\n"
      "issuer key hash         {:.0f} ns (key_hash_of: SHA-1 of the issuer's public key; not on "
      "the verify path)\n"
      "lookup from X509        {:.0f} ns (RevocationIndex::lookup(cert, issuer): issuer by key "
      "bits, serial, search; {} hits)\n"
      "check (verify path)     {:.0f} ns (CrlChecker::check: the above, the read guard, the "
      "clock and policy; {} revoked)\n"
      "d2i_X509_CRL (OpenSSL)  {:.0f} ms\n",
      n, parse_ms, verify_ms, index_ms, parse_ms + verify_ms + index_ms,
      static_cast<double>(entry->revoked.memory_bytes()) /
          static_cast<double>(std::max<std::size_t>(n, 1)),
      (rss_index - rss_start) / 1024.0, rss_index / 1024.0,
      static_cast<double>(parsed_capacity * sizeof(revocation::Serial)) /
          static_cast<double>(std::max<std::size_t>(n, 1)),
      lookup_ns, hits, hot_lookup_ns, hot_hits, entry->revoked.largest_bucket(),
      entry->revoked.buckets(), key_hash_ns, cert_lookup_ns, cert_hits, check_ns, check_revoked,
      openssl_ms);
  return reference ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  constexpr const char* usage =
      "usage: portcullis-crl-bench generate DIR [ENTRIES] [--ca CA.pem --ca-key CA.key] "
      "[--serials FILE] [--crl-number N] [--reason] [--out FILE]\n"
      "       portcullis-crl-bench measure DIR\n";
  try {
    if (argc >= 3 && std::string(argv[1]) == "generate") {
      GenerateOptions o;
      o.dir = argv[2];
      for (int i = 3; i < argc; ++i) {
        const std::string arg = argv[i];
        const auto value = [&]() -> std::string {
          if (i + 1 >= argc) throw std::runtime_error(arg + " needs a value");
          return argv[++i];
        };
        if (arg == "--ca") {
          o.ca_cert = value();
        } else if (arg == "--ca-key") {
          o.ca_key = value();
        } else if (arg == "--serials") {
          o.serials_file = value();
        } else if (arg == "--crl-number") {
          o.crl_number = std::stoull(value());
        } else if (arg == "--reason") {
          o.reason = true;
        } else if (arg == "--out") {
          o.out = value();
        } else if (!arg.empty() && std::isdigit(static_cast<unsigned char>(arg[0]))) {
          o.entries = std::stoul(arg);
        } else {
          throw std::runtime_error("unknown argument " + arg);
        }
      }
      if (o.ca_cert.empty() != o.ca_key.empty()) {
        throw std::runtime_error("--ca and --ca-key go together");
      }
      return generate(o);
    }
    if (argc >= 3 && std::string(argv[1]) == "measure") return measure(argv[2]);
  } catch (const std::exception& e) {
    std::cerr << "portcullis-crl-bench: " << e.what() << "\n";
    return 2;
  }
  std::cerr << usage;
  return 2;
}
