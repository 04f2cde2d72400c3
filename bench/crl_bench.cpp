// portcullis-crl-bench: the revocation index at million-entry scale.
//   portcullis-crl-bench generate DIR [ENTRIES]   writes DIR/ca.pem and DIR/crl.der
//   portcullis-crl-bench measure DIR              parse, verify, index, lookups, memory
// Run `measure` in a fresh process so its RSS reflects only what the index keeps.

#include "portcullis/revocation/crl.hpp"
#include "portcullis/revocation/revocation_index.hpp"
#include "portcullis/tls/pki_builder.hpp"

#include <openssl/evp.h>
#include <openssl/pem.h>

#include <fmt/format.h>

#include <malloc.h>
#include <chrono>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <string>

using namespace portcullis;
using Clock = std::chrono::steady_clock;

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

int generate(const std::string& dir, std::size_t entries) {
  tls::CertSpec spec;
  spec.common_name = "Bench CA";
  spec.is_ca = true;
  const auto ca = tls::issue_certificate(spec, nullptr);
  tls::write_file(dir + "/ca.pem", tls::to_pem(ca.cert.get()));

  unsigned char* name_der = nullptr;
  const int name_len = i2d_X509_NAME(X509_get_subject_name(ca.cert.get()), &name_der);
  const std::string issuer(reinterpret_cast<char*>(name_der), static_cast<std::size_t>(name_len));
  OPENSSL_free(name_der);

  const std::string alg = tlv(0x30, tlv(0x06, std::string("\x2a\x86\x48\xce\x3d\x04\x03\x02", 8)));
  const auto now = std::time(nullptr);
  std::mt19937_64 rng(1);
  std::string revoked;
  revoked.reserve(entries * 40);
  const auto when = utc_time(now - 3600);
  for (std::size_t i = 0; i < entries; ++i) {
    std::string serial(16, '\0');
    for (auto& c : serial) c = static_cast<char>(rng());
    serial[0] = static_cast<char>((serial[0] & 0x7f) | 0x10);
    revoked += tlv(0x30, tlv(0x02, serial) + when);
  }
  const std::string crl_number = tlv(0x30, tlv(0x06, std::string("\x55\x1d\x14", 3)) +
                                               tlv(0x04, tlv(0x02, std::string(1, '\x01'))));
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
  std::ofstream(dir + "/crl.der", std::ios::binary) << crl;
  std::cout << fmt::format("wrote {}/crl.der: {} entries, {:.1f} MB\n", dir, entries,
                           crl.size() / 1e6);
  return 0;
}

int measure(const std::string& dir) {
  const long rss_start = rss_kib();
  tls::BioPtr bio(BIO_new_file((dir + "/ca.pem").c_str(), "r"));
  tls::X509Ptr ca(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  auto bytes = read(dir + "/crl.der");
  const long rss_file = rss_kib();

  auto t = Clock::now();
  auto parsed = revocation::parse_crl(bytes);
  const double parse_ms = ms_since(t);
  t = Clock::now();
  revocation::verify_crl(parsed, ca.get());
  const double verify_ms = ms_since(t);
  t = Clock::now();
  auto entry = std::make_shared<revocation::IssuerRevocations>();
  entry->issuer_key = revocation::key_hash_of(ca.get());
  entry->revoked = std::move(parsed.revoked);
  entry->revoked.shrink_to_fit();
  const auto n = entry->revoked.size();
  std::vector<revocation::Serial> probes(entry->revoked.begin(),
                                         entry->revoked.begin() + std::min<std::size_t>(n, 1000));
  revocation::RevocationIndex index({entry});
  const double index_ms = ms_since(t);
  parsed = {};
  bytes.clear();
  bytes.shrink_to_fit();
  malloc_trim(0);  // return freed parse buffers, so RSS shows what the index keeps
  const long rss_index = rss_kib();

  // Lookups: half present, half absent, in random order.
  std::mt19937_64 rng(2);
  std::vector<revocation::Serial> keys;
  for (int i = 0; i < 1'000'000; ++i) {
    revocation::Serial s{};
    if (i % 2 && !probes.empty()) {
      s = probes[rng() % probes.size()];
    } else {
      for (auto& b : s) b = static_cast<std::uint8_t>(rng());
    }
    keys.push_back(s);
  }
  std::size_t hits = 0;
  t = Clock::now();
  for (const auto& k : keys)
    hits += index.lookup(entry->issuer_key, k) == revocation::RevocationIndex::Result::revoked;
  const double lookup_ns = ms_since(t) * 1e6 / keys.size();

  const auto der = read(dir + "/crl.der");
  const unsigned char* p = reinterpret_cast<const unsigned char*>(der.data());
  t = Clock::now();
  tls::X509CrlPtr reference(d2i_X509_CRL(nullptr, &p, static_cast<long>(der.size())));
  const double openssl_ms = ms_since(t);

  std::cout << fmt::format(
      "entries                 {}\n"
      "parse (portcullis)      {:.0f} ms\n"
      "verify signature        {:.0f} ms\n"
      "build index             {:.0f} ms\n"
      "fetch-to-published      {:.0f} ms (parse + verify + index; file already read)\n"
      "index memory            {:.1f} bytes/entry held ({:.1f} MiB RSS growth over the empty "
      "process; RSS {:.1f} MiB)\n"
      "lookup                  {:.0f} ns (1M random lookups, {} hits)\n"
      "d2i_X509_CRL (OpenSSL)  {:.0f} ms\n",
      n, parse_ms, verify_ms, index_ms, parse_ms + verify_ms + index_ms,
      static_cast<double>(entry->revoked.capacity() * sizeof(revocation::Serial)) /
          std::max<std::size_t>(n, 1),
      (rss_index - rss_start) / 1024.0, rss_index / 1024.0, lookup_ns, hits, openssl_ms);
  return reference ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 3 && std::string(argv[1]) == "generate") {
    return generate(argv[2], argc >= 4 ? std::stoul(argv[3]) : 1'000'000);
  }
  if (argc >= 3 && std::string(argv[1]) == "measure") return measure(argv[2]);
  std::cerr << "usage: portcullis-crl-bench generate DIR [ENTRIES] | measure DIR\n";
  return 2;
}
