#include "portcullis/app/check_cert.hpp"

#include "portcullis/authz/authorizer.hpp"
#include "portcullis/config/config.hpp"
#include "portcullis/proxy/request_rules.hpp"
#include "portcullis/revocation/checker_factory.hpp"
#include "portcullis/revocation/crl_refresher.hpp"
#include "portcullis/revocation/ocsp.hpp"
#include "portcullis/revocation/revocation_checker.hpp"
#include "portcullis/tls/peer_identity.hpp"
#include "portcullis/tls/truststore.hpp"

#include <fmt/chrono.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include <chrono>
#include <fstream>
#include <future>
#include <iostream>
#include <sstream>
#include <thread>

namespace portcullis::app {

namespace {

std::vector<tls::X509Ptr> read_pem_certs(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::stringstream text;
  text << in.rdbuf();
  const auto pem = text.str();
  tls::BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  std::vector<tls::X509Ptr> out;
  while (X509* cert = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr))
    out.emplace_back(cert);
  ERR_clear_error();
  if (out.empty()) throw std::runtime_error(path + " holds no PEM certificate");
  return out;
}

const char* reason_name(int error) {
  switch (error) {
    case X509_V_ERR_CERT_HAS_EXPIRED:
      return "expired";
    case X509_V_ERR_CERT_NOT_YET_VALID:
      return "not_yet_valid";
    case X509_V_ERR_INVALID_PURPOSE:
      return "bad_purpose";
    case X509_V_ERR_CERT_CHAIN_TOO_LONG:
      return "chain_too_long";
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
      return "unknown_ca";
    default:
      return "bad_certificate";
  }
}

}  // namespace

int check_cert(const CheckCertOptions& o) {
  try {
    auto loaded = config::load_config(o.config);
    auto& cfg = loaded.config;
    const config::Listener* listener = &cfg.listeners.front();
    for (const auto& l : cfg.listeners) {
      if (l.name == o.listener) listener = &l;
    }
    if (!o.listener.empty() && listener->name != o.listener) {
      std::cerr << "check-cert: no listener named '" << o.listener << "'\n";
      return 2;
    }
    const auto trust = tls::Truststore::load(listener->client_auth.truststore);
    auto certs = read_pem_certs(o.cert);
    if (!o.chain.empty()) {
      for (auto& c : read_pem_certs(o.chain)) certs.push_back(std::move(c));
    }
    X509* leaf = certs.front().get();
    const auto when = o.at ? std::chrono::system_clock::from_time_t(static_cast<time_t>(*o.at))
                           : std::chrono::system_clock::now();
    std::cout << "certificate: " << tls::subject_of(leaf) << "\n";
    std::cout << "listener:    " << listener->name << " (truststore "
              << trust->summary().path.string() << ", " << trust->summary().certificates
              << " certificates)\n";

    // The same verification the handshake runs: truststore, TLS client purpose, depth limit.
    tls::X509StackPtr untrusted(sk_X509_new_null());
    for (std::size_t i = 1; i < certs.size(); ++i) sk_X509_push(untrusted.get(), certs[i].get());
    tls::X509StoreCtxPtr ctx(X509_STORE_CTX_new());
    X509_STORE_CTX_init(ctx.get(), trust->store(), leaf, untrusted.get());
    X509_STORE_CTX_set_purpose(ctx.get(), X509_PURPOSE_SSL_CLIENT);
    X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx.get());
    X509_VERIFY_PARAM_set_depth(param, listener->client_auth.max_chain_depth);
    if (o.at) X509_VERIFY_PARAM_set_time(param, static_cast<time_t>(*o.at));
    if (X509_verify_cert(ctx.get()) != 1) {
      const int error = X509_STORE_CTX_get_error(ctx.get());
      std::cout << "chain:       REFUSED " << reason_name(error) << " ("
                << X509_verify_cert_error_string(error) << " at depth "
                << X509_STORE_CTX_get_error_depth(ctx.get()) << ")\n";
      std::cout << "verdict:     refused (" << reason_name(error) << ")\n";
      return 1;
    }
    STACK_OF(X509)* chain = X509_STORE_CTX_get0_chain(ctx.get());
    std::cout << "chain:       ok";
    for (int i = 0; i < sk_X509_num(chain); ++i) {
      std::cout << (i ? " -> " : " ") << tls::subject_of(sk_X509_value(chain, i));
    }
    std::cout << "\n";

    auto checker_settings = cfg.revocation;
    for (const auto& file : o.crls) {
      if (checker_settings.mode == config::RevocationMode::none)
        checker_settings.mode = config::RevocationMode::crl;
      config::CrlSource source;
      source.file = file;
      checker_settings.crl.sources.push_back(source);
    }
    if (o.offline) {
      std::erase_if(checker_settings.crl.sources, [](const auto& s) { return !s.url.empty(); });
    }
    if (!revocation::checks_revocation(checker_settings)) {
      std::cout << "revocation:  off (revocation.mode none)\n";
    } else {
      auto checkers = revocation::make_checkers(checker_settings, [when] { return when; });
      const auto& checker = checkers.crl;
      const auto* combined =
          dynamic_cast<const revocation::RevocationChecker*>(checkers.checker.get());
      revocation::CrlRefresher refresher(checker_settings, {trust}, checker);
      // As the gateway discovers them in handshakes: the CRL Distribution Points of the chain.
      if (checker_settings.crl.discover) {
        for (int depth = 0; depth + 1 < sk_X509_num(chain); ++depth) {
          refresher.discover(sk_X509_value(chain, depth), sk_X509_value(chain, depth + 1));
        }
      }
      refresher.start();
      // One attempt at every source, bounded.
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(45);
      while (std::chrono::steady_clock::now() < deadline) {
        bool attempted = true;
        for (const auto& s : refresher.status()) {
          if (!s.loaded && s.fetched + s.failed + s.rejected + s.not_modified == 0)
            attempted = false;
        }
        if (attempted) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      refresher.stop();
      for (const auto& s : refresher.status()) {
        std::cout << "crl source:  " << s.source << ": "
                  << (s.loaded ? std::to_string(s.entries) + " entries, issuer " + s.issuer
                               : "not loaded (" + s.last_error + ")")
                  << "\n";
      }
      if (checkers.ocsp) checkers.ocsp->start();
      const int n = sk_X509_num(chain);
      for (int depth = 0; depth + 1 < n; ++depth) {
        X509* cert = sk_X509_value(chain, depth);
        X509* issuer = sk_X509_value(chain, depth + 1);
        const auto mode = combined ? combined->mode_for(issuer) : checker_settings.mode;
        const bool uses_crl =
            mode != config::RevocationMode::none && mode != config::RevocationMode::ocsp;
        const bool uses_ocsp =
            combined && mode != config::RevocationMode::none && mode != config::RevocationMode::crl;
        std::cout << "revocation:  depth " << depth << " " << tls::subject_of(cert) << ": ";
        if (uses_crl) {
          const auto raw = checker->lookup(cert, issuer);
          std::cout << (raw.status == revocation::Status::good      ? "good"
                        : raw.status == revocation::Status::revoked ? "REVOKED"
                                                                    : "unknown");
          if (!raw.reason.empty() && raw.status != revocation::Status::revoked) {
            std::cout << " (" << raw.reason << ")";
          }
          if (raw.status == revocation::Status::unknown) {
            const auto policy = checker->on_unknown_for(issuer);
            std::cout << ", policy on_unknown="
                      << (policy == config::OnUnknown::deny ? "deny" : "allow")
                      << (policy == checker_settings.on_unknown ? "" : " (issuer rule)");
          }
          if (combined) std::cout << " [mode " << config::to_string(mode) << "]";
          std::cout << "\n";
        } else {
          std::cout << "mode " << config::to_string(mode) << "\n";
        }
        auto decided = checkers.checker->check(cert, issuer);
        if (decided.status == revocation::Status::pending && !o.offline) {
          // One query, bounded by revocation.ocsp.timeout.
          std::promise<void> answered;
          auto done = answered.get_future();
          checkers.checker->resolve({{cert, issuer}}, [&answered] { answered.set_value(); });
          done.wait_for(checker_settings.ocsp.timeout + std::chrono::seconds(5));
        }
        if (decided.status == revocation::Status::pending) {
          decided = checkers.checker->check_settled(cert, issuer);
        }
        if (uses_ocsp) {
          const auto d = checkers.ocsp->detail(cert, issuer);
          const auto responder =
              d.responder.empty() ? combined->responder_for(cert, issuer) : d.responder;
          const char* status = "not asked";
          switch (d.lookup.kind) {
            case revocation::OcspLookup::Kind::good:
              status = "good";
              break;
            case revocation::OcspLookup::Kind::revoked:
              status = "REVOKED";
              break;
            case revocation::OcspLookup::Kind::unknown:
              status = "unknown (the responder does not know the certificate)";
              break;
            case revocation::OcspLookup::Kind::failed:
              status = "failed";
              break;
            case revocation::OcspLookup::Kind::miss:
              break;
          }
          std::cout << "  ocsp:      " << status;
          if (d.lookup.kind == revocation::OcspLookup::Kind::failed) {
            std::cout << " (" << d.lookup.reason << (d.error.empty() ? "" : ": " + d.error) << ")";
          }
          std::cout << ", responder " << (responder.empty() ? "none (no AIA OCSP URI)" : responder);
          const auto stamp = [](const auto& t) {
            if (!t) return std::string("not set");
            return fmt::format("{:%Y-%m-%dT%H:%M:%SZ}",
                               fmt::gmtime(std::chrono::system_clock::to_time_t(*t)));
          };
          if (d.this_update) {
            std::cout << ", thisUpdate " << stamp(d.this_update) << ", nextUpdate "
                      << stamp(d.next_update);
          }
          std::cout << "\n";
        }
        if (combined && decided.status == revocation::Status::good && !decided.reason.empty()) {
          std::cout << "  policy:    admitted (" << decided.reason << ")\n";
        }
        if (decided.status != revocation::Status::good) {
          if (combined) std::cout << "  reason:    " << decided.reason << "\n";
          const auto reason =
              decided.status == revocation::Status::revoked ? "revoked" : "revocation_unknown";
          std::cout << "verdict:     refused (" << reason << ")\n";
          if (checkers.ocsp) checkers.ocsp->stop();
          return 1;
        }
      }
      if (checkers.ocsp) checkers.ocsp->stop();
    }

    if (!o.host.empty() || !o.path.empty()) {
      const auto identity = tls::identity_from_certificate(leaf, nullptr);
      const auto* route = proxy::select_route(*listener, o.host, o.path.empty() ? "/" : o.path);
      if (!route) {
        std::cout << "route:       none matches host '" << o.host << "' path '" << o.path
                  << "' (404)\n";
        std::cout << "verdict:     refused (no_route)\n";
        return 1;
      }
      const auto decision = authz::authorize(*route, identity);
      std::cout << "route:       host " << route->match.host << " path " << route->match.path_prefix
                << " -> upstream " << route->upstream << ": "
                << (decision.allowed ? "allowed" : "DENIED") << " (" << decision.reason
                << (decision.rule >= 0 ? ", rule " + std::to_string(decision.rule) : "") << ")\n";
      if (!decision.allowed) {
        std::cout << "verdict:     refused (403 " << decision.reason << ")\n";
        return 1;
      }
    }
    std::cout << "verdict:     admitted\n";
    return 0;
  } catch (const config::ConfigError& e) {
    for (const auto& d : e.errors()) std::cerr << "error: " << d.to_string() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "check-cert: " << e.what() << "\n";
    return 2;
  }
}

}  // namespace portcullis::app
