#include "portcullis/tls/verified_chains.hpp"

#include "portcullis/tls/pki_builder.hpp"
#include "portcullis/tls/truststore.hpp"
#include "test_support.hpp"

#include <openssl/err.h>
#include <catch2/catch.hpp>

#include <ctime>
#include <optional>
#include <string>
#include <thread>
#include <vector>

using namespace portcullis::tls;
using namespace portcullis::tls::testing;

namespace {

// What the verify callback saw: one entry per call, "depth:ok:subject".
struct Seen {
  std::vector<std::string> calls;
  int reject_depth = -1;         // return 0 at this depth
  int reject_error = X509_V_OK;  // ... setting this error first (X509_V_OK: none)
  bool accept_errors = false;    // return 1 when OpenSSL reports an error
};

int seen_index() {
  static const int index = X509_STORE_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

int record(int ok, X509_STORE_CTX* ctx) {
  auto* seen = static_cast<Seen*>(X509_STORE_CTX_get_ex_data(ctx, seen_index()));
  const int depth = X509_STORE_CTX_get_error_depth(ctx);
  X509* cert = X509_STORE_CTX_get_current_cert(ctx);
  seen->calls.push_back(std::to_string(depth) + ":" + std::to_string(ok) + ":" +
                        (cert ? subject_of(cert) : std::string("?")));
  if (!ok) return seen->accept_errors ? 1 : 0;
  if (depth == seen->reject_depth) {
    if (seen->reject_error != X509_V_OK) X509_STORE_CTX_set_error(ctx, seen->reject_error);
    return 0;
  }
  return 1;
}

struct Result {
  int verified = -1;
  int error = X509_V_OK;
  std::vector<X509*> chain;  // pointers, leaf first
  std::vector<std::string> subjects;
  std::vector<X509*> untrusted;  // the untrusted stack afterwards
  std::vector<X509*> own;        // this verification's decoded copies of what was sent
  // The context's leaf, the chain's and the untrusted stack's first are one object.
  bool consistent = false;
};

// A fresh decode of `cert`, as each handshake decodes what the client sends. No test macros:
// called from several threads.
X509Ptr decoded(X509* cert) {
  unsigned char* der = nullptr;
  const int length = i2d_X509(cert, &der);
  if (length <= 0) return nullptr;
  const unsigned char* in = der;
  X509Ptr out(d2i_X509(nullptr, &in, length));
  OPENSSL_free(der);
  return out;
}

// `cert` with one byte of its signature changed.
X509Ptr tampered(X509* cert) {
  unsigned char* der = nullptr;
  const int length = i2d_X509(cert, &der);
  REQUIRE(length > 8);
  der[length - 4] ^= 0x01;
  const unsigned char* in = der;
  X509Ptr out(d2i_X509(nullptr, &in, length));
  OPENSSL_free(der);
  REQUIRE(out);
  return out;
}

struct Pki {
  Issued root = issue_certificate(ca_spec("Root"), nullptr);
  Issued intermediate = issue_certificate(ca_spec("Intermediate"), &root);
  Issued leaf = issue_certificate(leaf_spec("client-1"), &intermediate);
  X509StorePtr store{X509_STORE_new()};

  Pki() { REQUIRE(X509_STORE_add_cert(store.get(), root.cert.get()) == 1); }

  // Verifies `sent` (leaf first; decoded afresh, as in a handshake) through `chains`, as libssl
  // does: the leaf is also among the untrusted certificates (unless `leaf_untrusted` is false).
  // `at` = 0: now. Null when the context cannot be set up. No test macros: called from several
  // threads.
  std::optional<Result> try_verify(VerifiedChains& chains, const std::vector<X509*>& sent,
                                   Seen& seen, std::time_t at = 0, unsigned long flags = 0,
                                   bool leaf_untrusted = true) const {
    std::vector<X509Ptr> copies;
    X509StackPtr untrusted(sk_X509_new_null());
    for (X509* cert : sent) {
      copies.push_back(decoded(cert));
      if (!copies.back() || !untrusted) return std::nullopt;
      if (copies.size() == 1 && !leaf_untrusted) continue;
      if (!sk_X509_push(untrusted.get(), copies.back().get())) return std::nullopt;
      X509_up_ref(copies.back().get());
    }
    X509StoreCtxPtr ctx(X509_STORE_CTX_new());
    if (!ctx ||
        X509_STORE_CTX_init(ctx.get(), store.get(), copies.front().get(), untrusted.get()) != 1)
      return std::nullopt;
    X509_STORE_CTX_set_purpose(ctx.get(), X509_PURPOSE_SSL_CLIENT);
    X509_STORE_CTX_set_verify_cb(ctx.get(), record);
    X509_STORE_CTX_set_ex_data(ctx.get(), seen_index(), &seen);
    if (at) X509_VERIFY_PARAM_set_time(X509_STORE_CTX_get0_param(ctx.get()), at);
    if (flags) X509_STORE_CTX_set_flags(ctx.get(), flags);
    Result result;
    result.verified = chains.verify(ctx.get());
    result.error = X509_STORE_CTX_get_error(ctx.get());
    STACK_OF(X509)* chain = X509_STORE_CTX_get0_chain(ctx.get());
    for (int i = 0; i < sk_X509_num(chain); ++i) {
      result.chain.push_back(sk_X509_value(chain, i));
      result.subjects.push_back(subject_of(sk_X509_value(chain, i)));
    }
    for (int i = 0; i < sk_X509_num(untrusted.get()); ++i) {
      result.untrusted.push_back(sk_X509_value(untrusted.get(), i));
    }
    for (const auto& copy : copies) result.own.push_back(copy.get());
    X509* leaf = X509_STORE_CTX_get0_cert(ctx.get());
    result.consistent = !result.chain.empty() && result.chain.front() == leaf &&
                        (!leaf_untrusted || result.untrusted.front() == leaf);
    ERR_clear_error();
    return result;
  }

  Result verify(VerifiedChains& chains, const std::vector<X509*>& sent, Seen& seen,
                std::time_t at = 0) const {
    auto result = try_verify(chains, sent, seen, at);
    REQUIRE(result);
    if (!result->chain.empty()) CHECK(result->consistent);
    return *result;
  }
};

const std::vector<std::string> good_calls = {"2:1:CN=Root", "1:1:CN=Intermediate",
                                             "0:1:CN=client-1"};

}  // namespace

TEST_CASE("a chain verified once is found again, with the callback called as before",
          "[verified_chains]") {
  Pki pki;
  VerifiedChains chains(16);
  Seen first, second;
  const auto a = pki.verify(chains, {pki.leaf.cert.get(), pki.intermediate.cert.get()}, first);
  CHECK(a.verified == 1);
  CHECK(a.error == X509_V_OK);
  CHECK(chains.misses() == 1);
  CHECK(chains.hits() == 0);
  CHECK(chains.size() == 1);

  const auto b = pki.verify(chains, {pki.leaf.cert.get(), pki.intermediate.cert.get()}, second);
  CHECK(b.verified == 1);
  CHECK(b.error == X509_V_OK);
  CHECK(chains.hits() == 1);
  CHECK(chains.misses() == 1);
  CHECK(b.subjects == a.subjects);
  CHECK(b.subjects == std::vector<std::string>{"CN=client-1", "CN=Intermediate", "CN=Root"});
  // The anchor is the truststore's own object. The first verification's decoded leaf and
  // intermediate are kept, and the second takes them in place of its own copies, in the chain
  // and in the untrusted stack (what libssl keeps in the session).
  CHECK(b.chain.back() == pki.root.cert.get());
  CHECK(a.chain.front() == a.own.front());
  CHECK(a.untrusted == a.own);
  CHECK(b.chain == a.chain);
  CHECK(b.untrusted == a.own);
  CHECK(b.untrusted != b.own);
  CHECK(first.calls == good_calls);
  CHECK(second.calls == good_calls);
}

TEST_CASE("a cached chain shares the truststore's object for a certificate it holds too",
          "[verified_chains]") {
  Pki pki;
  REQUIRE(X509_STORE_add_cert(pki.store.get(), pki.intermediate.cert.get()) == 1);
  VerifiedChains chains(16);
  Seen first, second;
  const auto a = pki.verify(chains, {pki.leaf.cert.get(), pki.intermediate.cert.get()}, first);
  const auto b = pki.verify(chains, {pki.leaf.cert.get(), pki.intermediate.cert.get()}, second);
  CHECK(a.verified == 1);
  CHECK(b.verified == 1);
  CHECK(chains.hits() == 1);
  // The chain runs through the truststore's intermediate; the sent one is replaced by it.
  REQUIRE(b.chain.size() == 3);
  CHECK(b.chain[1] == pki.intermediate.cert.get());
  CHECK(b.untrusted == std::vector<X509*>{a.own[0], pki.intermediate.cert.get()});
}

TEST_CASE("clients sending the same intermediate share one copy of it", "[verified_chains]") {
  Pki pki;
  const auto other = issue_certificate(leaf_spec("client-2"), &pki.intermediate);
  const auto intermediate_2 = issue_certificate(ca_spec("Intermediate 2"), &pki.root);
  const auto third = issue_certificate(leaf_spec("client-3"), &intermediate_2);
  Seen seen;
  SECTION("from the first handshake of each") {
    VerifiedChains chains(16);
    const auto a = pki.verify(chains, {pki.leaf.cert.get(), pki.intermediate.cert.get()}, seen);
    const auto b = pki.verify(chains, {other.cert.get(), pki.intermediate.cert.get()}, seen);
    CHECK(chains.misses() == 2);
    CHECK(chains.shared_cas() == 1);
    // The second keeps its own leaf, and takes the first's intermediate for the session.
    CHECK(b.untrusted == std::vector<X509*>{b.own[0], a.own[1]});
    CHECK(b.chain.front() == b.own[0]);
    const auto c = pki.verify(chains, {other.cert.get(), pki.intermediate.cert.get()}, seen);
    CHECK(c.untrusted == std::vector<X509*>{b.own[0], a.own[1]});
    // Another intermediate is another copy.
    const auto d = pki.verify(chains, {third.cert.get(), intermediate_2.cert.get()}, seen);
    CHECK(d.verified == 1);
    CHECK(d.untrusted == d.own);
    CHECK(chains.shared_cas() == 2);
  }
  SECTION("released with the last entry that includes it") {
    VerifiedChains chains(1);
    pki.verify(chains, {pki.leaf.cert.get(), pki.intermediate.cert.get()}, seen);
    pki.verify(chains, {other.cert.get(), pki.intermediate.cert.get()}, seen);
    CHECK(chains.shared_cas() == 1);
    pki.verify(chains, {third.cert.get(), intermediate_2.cert.get()}, seen);
    CHECK(chains.shared_cas() == 1);
    CHECK(chains.size() == 1);
    // The first intermediate was released: sent again, it is this handshake's own copy.
    const auto e = pki.verify(chains, {other.cert.get(), pki.intermediate.cert.get()}, seen);
    CHECK(e.untrusted == e.own);
  }
}

TEST_CASE("a certificate sent along that the chain does not use is not kept", "[verified_chains]") {
  Pki pki;
  const auto stray = issue_certificate(ca_spec("Unrelated"), nullptr);
  VerifiedChains chains(16);
  Seen seen;
  const std::vector<X509*> sent = {pki.leaf.cert.get(), pki.intermediate.cert.get(),
                                   stray.cert.get()};
  const auto a = pki.verify(chains, sent, seen);
  const auto b = pki.verify(chains, sent, seen);
  CHECK(b.verified == 1);
  CHECK(chains.hits() == 1);
  CHECK(chains.shared_cas() == 1);  // the intermediate only
  // The leaf and intermediate are the first handshake's; the stray certificate is b's own.
  CHECK(b.untrusted == std::vector<X509*>{a.own[0], a.own[1], b.own[2]});
}

TEST_CASE("a context in another layout keeps its own objects", "[verified_chains]") {
  // The leaf only as the context's certificate, not among the untrusted ones.
  Pki pki;
  VerifiedChains chains(16);
  Seen first, second;
  const std::vector<X509*> sent = {pki.leaf.cert.get(), pki.intermediate.cert.get()};
  const auto a = pki.try_verify(chains, sent, first, 0, 0, false);
  const auto b = pki.try_verify(chains, sent, second, 0, 0, false);
  REQUIRE(a);
  REQUIRE(b);
  CHECK(b->verified == 1);
  CHECK(chains.hits() == 1);
  CHECK(b->consistent);
  CHECK(b->chain.front() == b->own.front());
  CHECK(b->untrusted == std::vector<X509*>{b->own[1]});
  CHECK(second.calls == good_calls);
}

TEST_CASE("what the client sent is the key: anything else is verified afresh",
          "[verified_chains]") {
  Pki pki;
  VerifiedChains chains(16);
  Seen seen;
  REQUIRE(pki.verify(chains, {pki.leaf.cert.get(), pki.intermediate.cert.get()}, seen).verified ==
          1);

  SECTION("the leaf alone: no path without the intermediate") {
    const auto r = pki.verify(chains, {pki.leaf.cert.get()}, seen);
    CHECK(r.verified == 0);
    CHECK(r.error == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);
    CHECK(chains.hits() == 0);
  }
  SECTION("a leaf whose signature was changed fails, though it names the same everything") {
    const auto bad = tampered(pki.leaf.cert.get());
    const auto r = pki.verify(chains, {bad.get(), pki.intermediate.cert.get()}, seen);
    CHECK(r.verified == 0);
    CHECK(r.error == X509_V_ERR_CERT_SIGNATURE_FAILURE);
    CHECK(chains.hits() == 0);
  }
  SECTION("a changed intermediate fails") {
    const auto bad = tampered(pki.intermediate.cert.get());
    const auto r = pki.verify(chains, {pki.leaf.cert.get(), bad.get()}, seen);
    CHECK(r.verified == 0);
    CHECK(chains.hits() == 0);
  }
  SECTION("another certificate sent along is another key") {
    const auto r = pki.verify(
        chains, {pki.leaf.cert.get(), pki.intermediate.cert.get(), pki.root.cert.get()}, seen);
    CHECK(r.verified == 1);
    CHECK(chains.hits() == 0);
    CHECK(chains.size() == 2);
  }
  CHECK(chains.misses() == 2);
}

TEST_CASE("a cached chain counts only while every certificate in it is valid",
          "[verified_chains]") {
  Pki pki;
  auto spec = leaf_spec("client-short");
  spec.not_before_offset = -std::chrono::hours(1);
  spec.not_after_offset = std::chrono::hours(1);
  const auto leaf = issue_certificate(spec, &pki.intermediate);
  const std::vector<X509*> sent = {leaf.cert.get(), pki.intermediate.cert.get()};
  VerifiedChains chains(16);
  Seen seen;
  const std::time_t now = std::time(nullptr);
  REQUIRE(pki.verify(chains, sent, seen, now).verified == 1);

  const auto later = pki.verify(chains, sent, seen, now + 2 * 3600);
  CHECK(later.verified == 0);
  CHECK(later.error == X509_V_ERR_CERT_HAS_EXPIRED);
  const auto earlier = pki.verify(chains, sent, seen, now - 2 * 3600);
  CHECK(earlier.verified == 0);
  CHECK(earlier.error == X509_V_ERR_CERT_NOT_YET_VALID);
  CHECK(chains.hits() == 0);

  CHECK(pki.verify(chains, sent, seen, now + 60).verified == 1);
  CHECK(chains.hits() == 1);
}

TEST_CASE("the callback can still refuse a cached chain", "[verified_chains]") {
  Pki pki;
  const std::vector<X509*> sent = {pki.leaf.cert.get(), pki.intermediate.cert.get()};
  VerifiedChains chains(16);
  Seen ok;
  REQUIRE(pki.verify(chains, sent, ok).verified == 1);

  Seen revoked;
  revoked.reject_depth = 0;
  revoked.reject_error = X509_V_ERR_CERT_REVOKED;
  const auto r = pki.verify(chains, sent, revoked);
  CHECK(chains.hits() == 1);
  CHECK(r.verified == 0);
  CHECK(r.error == X509_V_ERR_CERT_REVOKED);
  CHECK(revoked.calls == good_calls);  // anchor first, then down to the leaf that it refused

  Seen silent;
  silent.reject_depth = 1;
  const auto s = pki.verify(chains, sent, silent);
  CHECK(s.verified == 0);
  CHECK(s.error == X509_V_ERR_UNSPECIFIED);  // refused without saying why
  CHECK(silent.calls == std::vector<std::string>{"2:1:CN=Root", "1:1:CN=Intermediate"});
  CHECK(chains.hits() == 2);
}

TEST_CASE("only chains that verified cleanly are kept", "[verified_chains]") {
  Pki pki;
  VerifiedChains chains(16);

  SECTION("refused by the callback") {
    Seen seen;
    seen.reject_depth = 0;
    const std::vector<X509*> sent = {pki.leaf.cert.get(), pki.intermediate.cert.get()};
    CHECK(pki.verify(chains, sent, seen).verified == 0);
    CHECK(pki.verify(chains, sent, seen).verified == 0);
    CHECK(chains.size() == 0);
    CHECK(chains.misses() == 2);
  }
  SECTION("an error the callback let through") {
    auto spec = leaf_spec("client-expired");
    spec.not_before_offset = -std::chrono::hours(48);
    spec.not_after_offset = -std::chrono::hours(24);
    const auto expired = issue_certificate(spec, &pki.intermediate);
    Seen lenient;
    lenient.accept_errors = true;
    const std::vector<X509*> sent = {expired.cert.get(), pki.intermediate.cert.get()};
    const auto r = pki.verify(chains, sent, lenient);
    CHECK(r.verified == 1);
    CHECK(r.error == X509_V_ERR_CERT_HAS_EXPIRED);
    CHECK(chains.size() == 0);
    // A strict callback refuses it next time.
    Seen strict;
    CHECK(pki.verify(chains, sent, strict).verified == 0);
  }
}

TEST_CASE("the least recently used chain goes first", "[verified_chains]") {
  Pki pki;
  const auto other = issue_certificate(leaf_spec("client-2"), &pki.intermediate);
  const auto third = issue_certificate(leaf_spec("client-3"), &pki.intermediate);
  X509* inter = pki.intermediate.cert.get();
  VerifiedChains chains(2);
  Seen seen;
  REQUIRE(pki.verify(chains, {pki.leaf.cert.get(), inter}, seen).verified == 1);
  REQUIRE(pki.verify(chains, {other.cert.get(), inter}, seen).verified == 1);
  REQUIRE(pki.verify(chains, {pki.leaf.cert.get(), inter}, seen).verified == 1);  // hit: newest
  REQUIRE(pki.verify(chains, {third.cert.get(), inter}, seen).verified == 1);     // evicts client-2
  CHECK(chains.size() == 2);
  CHECK(chains.hits() == 1);
  REQUIRE(pki.verify(chains, {pki.leaf.cert.get(), inter}, seen).verified == 1);
  CHECK(chains.hits() == 2);
  REQUIRE(pki.verify(chains, {other.cert.get(), inter}, seen).verified == 1);
  CHECK(chains.hits() == 2);
  CHECK(chains.misses() == 4);
}

TEST_CASE("a context that checks no time is never served from the cache", "[verified_chains]") {
  Pki pki;
  VerifiedChains chains(16);
  Seen seen;
  for (int i = 0; i < 2; ++i) {
    const auto r = pki.try_verify(chains, {pki.leaf.cert.get(), pki.intermediate.cert.get()}, seen,
                                  0, X509_V_FLAG_NO_CHECK_TIME);
    REQUIRE(r);
    CHECK(r->verified == 1);
  }
  CHECK(chains.size() == 0);
  CHECK(chains.hits() == 0);
  CHECK(chains.misses() == 0);
}

TEST_CASE("threads share one cache", "[verified_chains]") {
  Pki pki;
  std::vector<Issued> leaves;
  for (int i = 0; i < 3; ++i) {
    leaves.push_back(
        issue_certificate(leaf_spec("client-" + std::to_string(i)), &pki.intermediate));
  }
  VerifiedChains chains(2);  // smaller than the set of clients: entries come and go meanwhile
  constexpr int threads = 4, rounds = 30;
  std::vector<int> verified(threads, 0);
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      for (int i = 0; i < rounds; ++i) {
        Seen seen;
        const auto& leaf = leaves[static_cast<std::size_t>((t + i) % 3)];
        const auto r = pki.try_verify(chains, {leaf.cert.get(), pki.intermediate.cert.get()}, seen);
        if (r && r->verified == 1 && r->consistent && seen.calls.size() == 3) {
          ++verified[static_cast<std::size_t>(t)];
        }
      }
    });
  }
  for (auto& worker : workers) worker.join();
  for (int t = 0; t < threads; ++t) CHECK(verified[static_cast<std::size_t>(t)] == rounds);
  CHECK(chains.hits() + chains.misses() == threads * rounds);
  CHECK(chains.size() <= 2);
}
