#pragma once
// Everything one configuration generation needs at run time, built once and never changed:
// the config itself, each listener's TLS context and truststore, and the revocation checker.
// A connection holds the Snapshot it was accepted with for its whole life; a reload builds a new
// one next to it.
// Thread-safety: immutable after build_snapshot() but for each listener's identity cache, which
// is safe to use from any thread; share as std::shared_ptr<const Snapshot>.

#include "portcullis/config/config.hpp"
#include "portcullis/proxy/identity_cache.hpp"
#include "portcullis/revocation/checker.hpp"
#include "portcullis/tls/truststore.hpp"
#include "portcullis/upstream/tls_client_context.hpp"

#include <boost/asio/ssl/context.hpp>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace portcullis::proxy {

struct ListenerContext {
  const config::Listener* config = nullptr;  // points into Snapshot::config
  std::shared_ptr<const tls::Truststore> truststore;
  std::unique_ptr<boost::asio::ssl::context> ssl;
  // The identities of recent clients with their identity headers (the one mutable part, safe
  // for concurrent use).
  std::unique_ptr<IdentityCache> identities;
};

struct Snapshot {
  std::shared_ptr<const config::Config> config;
  std::vector<config::Diagnostic> warnings;
  std::shared_ptr<const revocation::Checker> revocation;
  std::vector<std::unique_ptr<ListenerContext>> listeners;  // same order as config->listeners
  // By upstream name, for the upstreams with `tls`.
  std::map<std::string, std::unique_ptr<upstream::TlsClientContext>> upstream_tls;
};

// Loads truststores, builds TLS contexts and the revocation checker. Throws config::ConfigError
// naming the config file, line and key (and the file that failed to load) on any failure: a
// snapshot that cannot enforce client authentication is never built.
// `revocation` is the process's checker (null when revocation is off); it outlives snapshots.
std::shared_ptr<const Snapshot> build_snapshot(
    config::LoadResult loaded, std::shared_ptr<const revocation::Checker> revocation);

}  // namespace portcullis::proxy
