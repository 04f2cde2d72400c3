#include "portcullis/app/gateway.hpp"

#include "portcullis/admin/admin_server.hpp"
#include "portcullis/app/service_notify.hpp"
#include "portcullis/proxy/listener.hpp"
#include "portcullis/proxy/services.hpp"
#include "portcullis/proxy/snapshot.hpp"
#include "portcullis/proxy/worker.hpp"
#include "portcullis/revocation/checker_factory.hpp"
#include "portcullis/revocation/crl_refresher.hpp"
#include "portcullis/revocation/ocsp_stapler.hpp"
#include "portcullis/tls/builtin_ec_keys.hpp"
#include "portcullis/tls/library_context.hpp"
#include "portcullis/tls/server_context.hpp"
#include "portcullis/util/logging.hpp"

#include <fmt/chrono.h>
#include <openssl/opensslv.h>
#include <openssl/ssl.h>
#include <spdlog/spdlog.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/json.hpp>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <optional>
#include <thread>

namespace portcullis::app {

namespace net = boost::asio;
namespace json = boost::json;

struct Gateway::Impl {
  net::io_context control{1};
  proxy::Services services;
  std::atomic<std::shared_ptr<const proxy::Snapshot>> snapshot;
  std::vector<std::unique_ptr<proxy::Worker>> workers;
  std::vector<std::unique_ptr<proxy::Listener>> listeners;
  std::unique_ptr<admin::AdminServer> admin;
  std::shared_ptr<revocation::CrlChecker> crl_checker;
  // Set when some issuer is checked with OCSP; stopped before the workers.
  std::shared_ptr<revocation::OcspClient> ocsp;
  std::shared_ptr<const revocation::Checker> checker;  // what snapshots are built with
  std::unique_ptr<revocation::CrlRefresher> refresher;
  // One per listener (null with stapling off). Staplers outlive snapshots: a reload keeps the
  // stapler of a listener whose certificate and stapling settings are unchanged.
  std::vector<std::shared_ptr<revocation::OcspStapler>> staplers;
  bool staplers_started = false;
  std::atomic<bool> ready{false};
  bool stopping = false;
  std::string last_reload_error;
  std::chrono::system_clock::time_point started = std::chrono::system_clock::now();

  // runtime.watch_interval: the files as they were at the last reload, and as last seen when
  // they differ (a reload waits until two looks agree, so a file being written settles first).
  std::optional<net::steady_timer> watch_timer;
  std::string watched, pending;
  std::optional<net::steady_timer> sweep_timer;  // expired sessions out of the session caches

  std::shared_ptr<const proxy::Snapshot> current() const { return snapshot.load(); }
  std::string file_stamps() const;
  void watch_files();
  void sweep_sessions();
  bool is_ready() const;
  std::string status_json() const;
  void attach_staplers(const proxy::Snapshot& snap);
  admin::Response reload();
  void begin_shutdown(std::string_view why);
  void wait_for_drain(std::chrono::steady_clock::time_point deadline);
};

namespace {

// Each listener's TLS caches, for the current configuration (a reload starts new, empty ones,
// and their counts from zero): the sessions its session cache holds, to size
// tls.session_cache_size by (each holds the client certificate), its verified chain cache
// (client_auth.chain_cache_size), when it has one, and its client identity cache.
std::string tls_cache_metrics(const proxy::Snapshot& snap) {
  std::string sessions =
      "# HELP portcullis_tls_session_cache_sessions Resumable TLS sessions in the listener's "
      "cache.\n"
      "# TYPE portcullis_tls_session_cache_sessions gauge\n";
  std::string chains =
      "# HELP portcullis_tls_chain_cache_chains Verified client chains in the listener's cache.\n"
      "# TYPE portcullis_tls_chain_cache_chains gauge\n";
  std::string lookups =
      "# HELP portcullis_tls_chain_cache_lookups_total Client chains looked up in the listener's "
      "cache since the configuration was loaded, by result.\n"
      "# TYPE portcullis_tls_chain_cache_lookups_total counter\n";
  std::string identities =
      "# HELP portcullis_identity_cache_lookups_total Client identities looked up in the "
      "listener's cache since the configuration was loaded, by result.\n"
      "# TYPE portcullis_identity_cache_lookups_total counter\n";
  for (const auto& listener : snap.listeners) {
    if (!listener || !listener->ssl || !listener->config) continue;
    if (listener->identities) {
      identities += fmt::format(
          "portcullis_identity_cache_lookups_total{{listener=\"{}\",result=\"hit\"}} {}\n"
          "portcullis_identity_cache_lookups_total{{listener=\"{}\",result=\"miss\"}} {}\n",
          listener->config->name, listener->identities->hits(), listener->config->name,
          listener->identities->misses());
    }
    SSL_CTX* ctx = listener->ssl->native_handle();
    const auto& name = listener->config->name;
    sessions += fmt::format("portcullis_tls_session_cache_sessions{{listener=\"{}\"}} {}\n", name,
                            SSL_CTX_sess_number(ctx));
    const auto stats = tls::chain_cache_stats(ctx);
    if (!stats) continue;
    chains += fmt::format("portcullis_tls_chain_cache_chains{{listener=\"{}\"}} {}\n", name,
                          stats->chains);
    lookups += fmt::format(
        "portcullis_tls_chain_cache_lookups_total{{listener=\"{}\",result=\"hit\"}} {}\n"
        "portcullis_tls_chain_cache_lookups_total{{listener=\"{}\",result=\"miss\"}} {}\n",
        name, stats->hits, name, stats->misses);
  }
  return sessions + chains + lookups + identities;
}

// The revocation settings the process's checker and refresher were built from. Both outlive
// configuration generations, so a reload that changes these is refused rather than half applied.
std::string revocation_settings(const config::Revocation& r) {
  std::string out = fmt::format("{}|{}|", config::to_string(r.mode),
                                r.on_unknown == config::OnUnknown::deny ? "deny" : "allow");
  for (const auto& rule : r.issuers) {
    out += fmt::format("{}|{}|{}|{}|{}|", rule.subject, rule.sha256,
                       rule.on_unknown == config::OnUnknown::deny ? "deny" : "allow",
                       rule.mode ? config::to_string(*rule.mode) : "", rule.ocsp_responder);
  }
  const auto& o = r.ocsp;
  out +=
      fmt::format("{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|", o.timeout.count(), o.nonce, o.get,
                  o.clock_skew.count(), o.min_ttl.count(), o.max_ttl.count(), o.failure_ttl.count(),
                  o.refresh_recent.count(), o.max_entries, o.check_intermediates);
  for (const auto& source : r.crl.sources) out += source.url + "|" + source.file.string() + "|";
  out += fmt::format("{}|{}|{}|{}|{}|{}|{}", r.crl.discover, r.crl.refresh_interval.count(),
                     r.crl.stale_grace.count(), r.crl.cache_dir.string(),
                     r.crl.fetch_timeout.count(), r.crl.max_size, r.crl.https_ca.string());
  return out;
}

json::array warnings_json(const std::vector<std::string>& warnings) {
  json::array out;
  for (const auto& w : warnings) out.emplace_back(w);
  return out;
}

json::value stapling_json(const revocation::OcspStapler* stapler) {
  if (!stapler) return json::object{{"enabled", false}};
  const auto st = stapler->status();
  const auto when = [](const auto& t) -> json::value {
    if (!t) return nullptr;
    return json::value(fmt::format("{:%Y-%m-%dT%H:%M:%SZ}",
                                   fmt::gmtime(std::chrono::system_clock::to_time_t(*t))));
  };
  return json::object{{"enabled", true},
                      {"responder", st.responder},
                      {"valid", st.valid},
                      {"this_update", when(st.this_update)},
                      {"next_update", when(st.next_update)},
                      {"last_fetch", when(st.last_fetch)},
                      {"last_success", when(st.last_success)},
                      {"fetched", st.fetched},
                      {"failed", st.failed},
                      {"rejected", st.rejected},
                      {"last_error", st.last_error}};
}

}  // namespace

// Hooks every listener's TLS context of `snap` to its stapler: the current one when the
// certificate and stapling settings are unchanged, otherwise a new one (started at once when
// the gateway runs; the old one stops, and connections of older snapshots keep stapling its last
// response). All or nothing: a stapler that cannot be built leaves the running set alone.
void Gateway::Impl::attach_staplers(const proxy::Snapshot& snap) {
  std::vector<std::shared_ptr<revocation::OcspStapler>> next(snap.listeners.size());
  for (std::size_t i = 0; i < snap.listeners.size(); ++i) {
    const auto& listener = *snap.listeners[i]->config;
    if (!listener.tls.ocsp_stapling.enabled) continue;
    const auto key = fmt::format("listeners[{}].tls.ocsp_stapling", i);
    try {
      next[i] = std::make_shared<revocation::OcspStapler>(listener.name, listener.tls.ocsp_stapling,
                                                          listener.tls.certificate);
    } catch (const std::exception& e) {
      throw config::ConfigError({config::Diagnostic{snap.config->source.string(),
                                                    snap.config->line_of(key), key, e.what()}});
    }
    if (i < staplers.size() && staplers[i] && staplers[i]->identity() == next[i]->identity()) {
      next[i] = staplers[i];
    }
  }
  for (std::size_t i = 0; i < next.size(); ++i) {
    if (!next[i]) continue;
    std::shared_ptr<const revocation::OcspStapler> stapler = next[i];
    tls::enable_ocsp_stapling(snap.listeners[i]->ssl->native_handle(),
                              [stapler] { return stapler->response(); });
  }
  for (std::size_t i = 0; i < next.size(); ++i) {
    const bool replaced = i >= staplers.size() || staplers[i] != next[i];
    if (staplers_started && next[i] && replaced) next[i]->start();
    if (i < staplers.size() && staplers[i] && staplers[i] != next[i]) staplers[i]->stop();
  }
  staplers = std::move(next);
}

// Not ready while a fail-closed issuer (globally or by its own policy) has no usable CRL:
// admitting clients then would mean refusing them all.
bool Gateway::Impl::is_ready() const {
  if (!ready.load()) return false;
  return !refresher || refresher->ready();
}

std::string Gateway::Impl::status_json() const {
  const auto snap = current();
  json::object status;
  status["version"] = PORTCULLIS_VERSION;
  status["openssl"] = OPENSSL_VERSION_TEXT;
  status["config"] = snap->config->source.string();
  status["ready"] = ready.load();
  status["uptime_seconds"] =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now() - started)
          .count();
  status["active_connections"] = services.metrics.active_connections();
  json::array listeners_json;
  for (std::size_t i = 0; i < listeners.size(); ++i) {
    const auto& cfg = *snap->listeners[i]->config;
    const auto& trust = snap->listeners[i]->truststore->summary();
    json::array routes;
    for (const auto& r : cfg.routes) {
      routes.push_back(json::object{{"host", r.match.host},
                                    {"path_prefix", r.match.path_prefix},
                                    {"upstream", r.upstream},
                                    {"restricted", r.has_allow}});
    }
    listeners_json.push_back(json::object{
        {"name", cfg.name},
        {"address", listeners[i]->address()},
        {"connections", listeners[i]->connections()},
        {"min_tls_version", cfg.tls.min_version},
        {"identity_headers", config::to_string(cfg.identity_headers)},
        {"routes", std::move(routes)},
        {"ocsp_stapling", stapling_json(i < staplers.size() ? staplers[i].get() : nullptr)},
        {"truststore", json::object{{"path", trust.path.string()},
                                    {"certificates", trust.certificates},
                                    {"roots", trust.roots},
                                    {"intermediates", trust.intermediates},
                                    {"warnings", warnings_json(trust.warnings)}}},
    });
  }
  status["listeners"] = std::move(listeners_json);
  // The first listener's truststore, for the common single-listener case.
  if (!snap->listeners.empty()) {
    const auto& trust = snap->listeners.front()->truststore->summary();
    status["truststore"] = json::object{{"path", trust.path.string()},
                                        {"certificates", trust.certificates},
                                        {"roots", trust.roots},
                                        {"intermediates", trust.intermediates},
                                        {"warnings", warnings_json(trust.warnings)}};
  }
  json::object upstreams;
  for (const auto& [name, u] : snap->config->upstreams) {
    json::array endpoints;
    for (const auto& e : u.endpoints) endpoints.emplace_back(e.to_string());
    upstreams[name] = json::object{{"endpoints", std::move(endpoints)}};
  }
  status["upstreams"] = std::move(upstreams);
  json::array sources;
  const auto when = [](const auto& t) -> json::value {
    if (!t) return nullptr;
    return json::value(fmt::format("{:%Y-%m-%dT%H:%M:%SZ}",
                                   fmt::gmtime(std::chrono::system_clock::to_time_t(*t))));
  };
  if (refresher) {
    for (const auto& src : refresher->status()) {
      json::object o;
      o["source"] = src.source;
      o["issuer"] = src.issuer;
      o["loaded"] = src.loaded;
      o["discovered"] = src.discovered;
      o["entries"] = src.entries;
      o["crl_number"] = src.crl_number;
      o["this_update"] = when(src.this_update);
      o["next_update"] = when(src.next_update);
      o["last_fetch"] = when(src.last_fetch);
      o["last_success"] = when(src.last_success);
      o["etag"] = src.etag;
      o["fetched"] = src.fetched;
      o["not_modified"] = src.not_modified;
      o["failed"] = src.failed;
      o["rejected"] = src.rejected;
      o["last_error"] = src.last_error;
      sources.push_back(std::move(o));
    }
  }
  status["revocation"] = json::object{
      {"mode", config::to_string(snap->config->revocation.mode)},
      {"on_unknown",
       snap->config->revocation.on_unknown == config::OnUnknown::deny ? "deny" : "allow"},
      {"sources", std::move(sources)}};
  if (ocsp) {
    json::array responders;
    for (const auto& r : ocsp->responders()) {
      responders.push_back(json::object{{"url", r.url},
                                        {"healthy", r.healthy},
                                        {"queries", r.queries},
                                        {"failures", r.failures},
                                        {"last_success", when(r.last_success)},
                                        {"last_failure", when(r.last_failure)},
                                        {"last_error", r.last_error},
                                        {"last_latency_seconds", r.last_latency_seconds}});
    }
    status["revocation"].as_object()["ocsp"] =
        json::object{{"cache_entries", ocsp->entries()}, {"responders", std::move(responders)}};
  }
  json::array config_warnings;
  for (const auto& w : snap->warnings) config_warnings.emplace_back(w.to_string());
  status["config_warnings"] = std::move(config_warnings);
  status["last_reload_error"] = last_reload_error;
  return json::serialize(status) + "\n";
}

// Builds the new generation on the control thread, away from the io threads. The listener set
// itself (names and addresses) cannot change without a restart.
admin::Response Gateway::Impl::reload() {
  const auto old = current();
  notify_reloading();
  // Whatever the outcome, the service manager hears that the gateway serves again.
  struct ReadyAgain {
    Impl& impl;
    ~ReadyAgain() {
      notify_ready(impl.last_reload_error.empty()
                       ? "serving"
                       : "serving; last reload failed: " + impl.last_reload_error);
      // The configuration now in force may name other files; watch those from here on.
      impl.watched = impl.file_stamps();
      impl.pending.clear();
    }
  } ready_again{*this};
  try {
    auto loaded = config::load_config(old->config->source);
    const auto& next = loaded.config.listeners;
    const auto& prev = old->config->listeners;
    if (next.size() != prev.size()) {
      throw std::runtime_error("the set of listeners changed; restart to apply it");
    }
    for (std::size_t i = 0; i < next.size(); ++i) {
      if (next[i].name != prev[i].name ||
          next[i].address.to_string() != prev[i].address.to_string()) {
        throw std::runtime_error("listener '" + next[i].name +
                                 "' changed name or address; restart to apply it");
      }
    }
    if (revocation_settings(loaded.config.revocation) !=
        revocation_settings(old->config->revocation)) {
      throw std::runtime_error(
          "the revocation settings changed; restart to apply them (nothing was reloaded)");
    }
    auto built = proxy::build_snapshot(std::move(loaded), checker);
    attach_staplers(*built);
    snapshot.store(built);
    if (refresher) {
      // CRLs of CAs the new truststores add are verified from now on, and local CRL files are
      // read again at once.
      std::vector<std::shared_ptr<const tls::Truststore>> truststores;
      for (const auto& l : built->listeners) truststores.push_back(l->truststore);
      refresher->update_truststores(std::move(truststores));
    }
    last_reload_error.clear();
    services.metrics.config_reload(true);
    spdlog::info("configuration reloaded from {}", built->config->source.string());
    return admin::Response{200, "text/plain; charset=utf-8", "reloaded\n"};
  } catch (const std::exception& e) {
    last_reload_error = e.what();
    services.metrics.config_reload(false);
    spdlog::error("reload failed, keeping the running configuration: {}", e.what());
    return admin::Response{400, "text/plain; charset=utf-8",
                           std::string("reload failed: ") + e.what() + "\n"};
  }
}

// The files a configuration is made of, with what identifies their content cheaply.
std::string Gateway::Impl::file_stamps() const {
  const auto& cfg = *current()->config;
  std::vector<std::filesystem::path> files{cfg.source};
  for (const auto& l : cfg.listeners) {
    files.insert(files.end(), {l.tls.certificate, l.tls.private_key, l.tls.session_ticket_keys,
                               l.client_auth.truststore});
  }
  for (const auto& source : cfg.revocation.crl.sources) files.push_back(source.file);
  std::string out;
  for (const auto& file : files) {
    if (file.empty()) continue;
    std::error_code ec;
    // Follows symbolic links, as Kubernetes swaps mounted ConfigMaps and Secrets by relinking.
    const auto mtime = std::filesystem::last_write_time(file, ec);
    const auto size = ec ? 0 : std::filesystem::file_size(file, ec);
    out += ec ? fmt::format("{}|missing;", file.string())
              : fmt::format("{}|{}|{};", file.string(), mtime.time_since_epoch().count(), size);
  }
  return out;
}

void Gateway::Impl::watch_files() {
  const auto interval = current()->config->runtime.watch_interval;
  if (interval.count() <= 0 || stopping) return;
  if (!watch_timer) watch_timer.emplace(control);
  watch_timer->expires_after(interval);
  watch_timer->async_wait([this](boost::system::error_code ec) {
    if (ec || stopping) return;
    if (const auto now = file_stamps(); now != watched) {
      if (now == pending) {
        spdlog::info("configuration files changed; reloading");
        reload();
      } else {
        pending = now;
      }
    }
    watch_files();
  });
}

// Every 30 seconds the sessions past their lifetime leave the current listeners' session caches
// (OpenSSL's own clean-up is off: tls::remove_expired_sessions).
void Gateway::Impl::sweep_sessions() {
  if (stopping) return;
  if (!sweep_timer) sweep_timer.emplace(control);
  sweep_timer->expires_after(std::chrono::seconds(30));
  sweep_timer->async_wait([this](boost::system::error_code ec) {
    if (ec || stopping) return;
    for (const auto& listener : current()->listeners) {
      if (listener && listener->ssl) tls::remove_expired_sessions(listener->ssl->native_handle());
    }
    sweep_sessions();
  });
}

void Gateway::Impl::begin_shutdown(std::string_view why) {
  if (stopping) return;
  stopping = true;
  ready = false;
  notify_stopping();
  if (watch_timer) watch_timer->cancel();
  if (sweep_timer) sweep_timer->cancel();
  spdlog::info("shutting down ({}): no new connections, finishing requests in flight", why);
  services.draining = true;
  for (auto& l : listeners) l->stop();
  for (auto& w : workers) w->drain_idle();
  const auto grace = current()->config->runtime.shutdown_grace;
  wait_for_drain(std::chrono::steady_clock::now() + grace);
}

void Gateway::Impl::wait_for_drain(std::chrono::steady_clock::time_point deadline) {
  auto timer = std::make_shared<net::steady_timer>(control, std::chrono::milliseconds(20));
  timer->async_wait([this, timer, deadline](boost::system::error_code) {
    const auto active = services.metrics.active_connections();
    if (active == 0 || std::chrono::steady_clock::now() >= deadline) {
      if (active != 0) spdlog::warn("shutdown grace over; closing {} connections", active);
      if (admin) admin->stop();
      control.stop();
      return;
    }
    // Connections that went idle after their last response are closed as they turn idle.
    for (auto& w : workers) w->drain_idle();
    wait_for_drain(deadline);
  });
}

Gateway::Gateway(config::LoadResult loaded) : impl_(std::make_unique<Impl>()) {
  util::setup_logging(loaded.config.logging.level);
  impl_->services.access_log = util::make_access_log(loaded.config.logging.access_log);
  for (const auto& w : loaded.warnings) spdlog::warn("config: {}", w.to_string());
  // Before the first certificate is parsed, and before any thread that parses them starts.
  tls::use_builtin_ec_keys();
  auto checkers = revocation::make_checkers(loaded.config.revocation);
  impl_->crl_checker = checkers.crl;
  impl_->ocsp = checkers.ocsp;
  impl_->checker = checkers.checker;
  const auto revocation_settings = loaded.config.revocation;
  auto snap = proxy::build_snapshot(std::move(loaded), impl_->checker);
  impl_->attach_staplers(*snap);
  if (impl_->crl_checker) {
    std::vector<std::shared_ptr<const tls::Truststore>> truststores;
    for (const auto& l : snap->listeners) truststores.push_back(l->truststore);
    impl_->refresher = std::make_unique<revocation::CrlRefresher>(revocation_settings, truststores,
                                                                  impl_->crl_checker);
  }
  for (const auto& l : snap->listeners) {
    for (const auto& w : l->truststore->summary().warnings) {
      spdlog::warn("truststore {}: {}", l->truststore->summary().path.string(), w);
    }
  }
  impl_->snapshot.store(std::move(snap));
}

Gateway::~Gateway() {
  // The OCSP client's thread completes connections' waits on the workers: it stops first.
  if (impl_->ocsp) impl_->ocsp->stop();
  for (auto& w : impl_->workers) w->stop();
}

int Gateway::run(std::function<void()> on_ready) {
  auto& s = *impl_;
  const auto snap = s.current();
  const auto& cfg = *snap->config;

  int threads = cfg.runtime.io_threads;
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::vector<proxy::Worker*> worker_ptrs;
  for (int i = 0; i < threads; ++i) {
    s.workers.push_back(std::make_unique<proxy::Worker>());
    worker_ptrs.push_back(s.workers.back().get());
  }

  for (std::size_t i = 0; i < cfg.listeners.size(); ++i) {
    s.listeners.push_back(std::make_unique<proxy::Listener>(s.control, cfg.listeners[i], i));
  }
  admin::Handlers handlers;
  handlers.ready = [&s] { return s.is_ready(); };
  handlers.metrics = [&s] {
    std::string stapling;
    for (const auto& stapler : s.staplers) {
      if (stapler) stapling += stapler->render_metrics();
    }
    if (!stapling.empty()) stapling = revocation::OcspStapler::metric_headers() + stapling;
    return s.services.metrics.render() + tls_cache_metrics(*s.current()) +
           (s.refresher ? s.refresher->render_metrics() : "") +
           (s.ocsp ? s.ocsp->render_metrics() : "") + stapling;
  };
  handlers.post["/revocation/refresh"] = [&s] {
    if (!s.refresher)
      return admin::Response{404, "text/plain; charset=utf-8", "revocation is off\n"};
    s.refresher->refresh_now();
    return admin::Response{202, "text/plain; charset=utf-8", "refresh started\n"};
  };
  handlers.status_json = [&s] { return s.status_json(); };
  handlers.post["/reload"] = [&s] { return s.reload(); };
  s.admin = std::make_unique<admin::AdminServer>(s.control.get_executor(), cfg.admin.address,
                                                 std::move(handlers));

  if (s.refresher) s.refresher->start();
  if (s.ocsp) s.ocsp->start();
  for (auto& stapler : s.staplers) {
    if (stapler) stapler->start();
  }
  s.staplers_started = true;
  for (auto& w : s.workers) w->start();
  for (auto& l : s.listeners) {
    l->start([&s] { return s.current(); }, worker_ptrs, s.services);
  }
  s.admin->start();

  net::signal_set signals(s.control, SIGINT, SIGTERM, SIGHUP);
  std::function<void(boost::system::error_code, int)> on_signal = [&](boost::system::error_code ec,
                                                                      int signo) {
    if (ec) return;
    if (signo == SIGHUP) {
      s.reload();
      signals.async_wait(on_signal);
      return;
    }
    s.begin_shutdown(signo == SIGINT ? "SIGINT" : "SIGTERM");
  };
  signals.async_wait(on_signal);

  s.ready = true;
  for (const auto& l : s.listeners) {
    spdlog::info("listener '{}' on {} ({} io threads)", l->name(), l->address(), threads);
  }
  spdlog::info("admin on {}",
               config::HostPort{cfg.admin.address.host, s.admin->port()}.to_string());
  if (!tls::handshake_library_context()) {
    spdlog::info(
        "OpenSSL is configured with providers beyond the default one (or FIPS mode): TLS "
        "handshakes use the default library context, whose certificate decoding is slower");
  } else if (!tls::use_builtin_ec_keys()) {
    spdlog::info(
        "OpenSSL has engines configured: EC keys in certificates are decoded through the "
        "providers, which is slower");
  }
  if (on_ready) on_ready();
  notify_ready(fmt::format("serving on {}", s.listeners.front()->address()));
  s.watched = s.file_stamps();
  s.watch_files();
  s.sweep_sessions();

  s.control.run();
  for (auto& w : s.workers) w->stop();
  if (s.refresher) s.refresher->stop();
  for (auto& stapler : s.staplers) {
    if (stapler) stapler->stop();
  }
  spdlog::info("stopped");
  return 0;
}

void Gateway::request_shutdown() {
  net::post(impl_->control, [this] { impl_->begin_shutdown("requested"); });
}

void Gateway::request_reload() {
  net::post(impl_->control, [this] { impl_->reload(); });
}

}  // namespace portcullis::app
