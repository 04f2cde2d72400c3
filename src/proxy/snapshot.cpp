#include "portcullis/proxy/snapshot.hpp"

#include "portcullis/proxy/request_rules.hpp"
#include "portcullis/tls/identity_headers.hpp"
#include "portcullis/tls/server_context.hpp"

#include <openssl/evp.h>

#include <algorithm>

#include <fmt/format.h>

namespace portcullis::proxy {

namespace {

// Sessions may only resume under the trust and policy they were established with: the session
// id context changes whenever the truststore, the chain rules or the revocation policy change.
std::string session_context(const config::Listener& listener, const tls::Truststore& trust,
                            const config::Revocation& revocation) {
  return fmt::format("{}|{}|{}|{}|{}", listener.name, trust.digest(),
                     listener.client_auth.max_chain_depth, config::to_string(revocation.mode),
                     revocation.on_unknown == config::OnUnknown::deny ? "deny" : "allow");
}

// Failures found while loading a listener's files are reported like validation errors, with
// the file, line and key path. TLS errors start with the key ("listeners[0].tls.groups: ...").
[[noreturn]] void throw_located(const config::Config& config, const std::string& listener_key,
                                std::string_view key_hint, std::string_view message) {
  std::string key(key_hint);
  if (key.empty()) {
    key = listener_key;
    const auto colon = message.find(": ");
    if (message.substr(0, listener_key.size() + 1) == listener_key + "." &&
        colon != std::string_view::npos) {
      key = std::string(message.substr(0, colon));
      message.remove_prefix(colon + 2);
    }
  }
  throw config::ConfigError(
      {config::Diagnostic{config.source.string(), config.line_of(key), key, std::string(message)}});
}

}  // namespace

std::shared_ptr<const Snapshot> build_snapshot(
    config::LoadResult loaded, std::shared_ptr<const revocation::Checker> revocation) {
  auto snapshot = std::make_shared<Snapshot>();
  auto config = std::make_shared<const config::Config>(std::move(loaded.config));
  snapshot->config = config;
  snapshot->warnings = std::move(loaded.warnings);
  snapshot->revocation = std::move(revocation);

  for (std::size_t i = 0; i < config->listeners.size(); ++i) {
    const auto& listener = config->listeners[i];
    const auto key = fmt::format("listeners[{}]", i);
    auto context = std::make_unique<ListenerContext>();
    context->config = &listener;
    try {
      context->truststore = tls::Truststore::load(listener.client_auth.truststore);
    } catch (const std::exception& e) {
      throw_located(*config, key, key + ".client_auth.truststore", e.what());
    }
    tls::ServerContextOptions options;
    options.listener = &listener;
    options.config_key = key;
    options.truststore = context->truststore;
    options.revocation = snapshot->revocation;
    options.session_id_context =
        session_context(listener, *context->truststore, config->revocation);
    try {
      auto native = tls::build_server_context(options);
      context->ssl = std::make_unique<boost::asio::ssl::context>(native.release());
    } catch (const tls::TlsError& e) {
      throw_located(*config, key, "", e.what());
    }
    context->identities = std::make_unique<IdentityCache>(
        static_cast<std::size_t>(std::max(0, listener.client_auth.chain_cache_size)),
        [preset = listener.identity_headers](const tls::PeerIdentity& id) {
          return header_lines(tls::identity_headers(preset, id));
        });
    snapshot->listeners.push_back(std::move(context));
  }
  for (const auto& [name, upstream] : config->upstreams) {
    if (!upstream.tls) continue;
    const auto key = "upstreams." + name + ".tls";
    try {
      snapshot->upstream_tls[name] = upstream::build_tls_client_context(*upstream.tls);
    } catch (const std::exception& e) {
      throw_located(*config, key, key, e.what());
    }
  }
  return snapshot;
}

}  // namespace portcullis::proxy
