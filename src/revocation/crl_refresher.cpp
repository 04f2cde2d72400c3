#include "portcullis/revocation/crl_refresher.hpp"

#include "portcullis/revocation/discovery_queue.hpp"
#include "portcullis/revocation/http_fetch.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <openssl/sha.h>
#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <boost/url/parse.hpp>

#include <unistd.h>

#include <atomic>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include <sys/resource.h>
#include <unistd.h>

namespace portcullis::revocation {

namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
namespace beast = boost::beast;
namespace http = beast::http;
namespace fs = std::filesystem;
using tcp = net::ip::tcp;
using SysClock = std::chrono::system_clock;

namespace {

constexpr auto clock_skew = std::chrono::minutes(5);
// Sources discovered from client certificates, at most: each costs a fetch per refresh.
constexpr std::size_t max_discovered_sources = DiscoveryQueue::capacity;

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw CrlError("cannot read " + path.string());
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string hex_sha256(std::string_view text) {
  unsigned char d[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), d);
  std::string out;
  for (auto b : d) out += fmt::format("{:02x}", b);
  return out;
}

std::string rfc3339(SysClock::time_point t) {
  return fmt::format("{:%Y-%m-%dT%H:%M:%SZ}", fmt::gmtime(SysClock::to_time_t(t)));
}

bool is_crl_url(std::string_view url) {
  return is_http_url(url);
}

// The http:// and https:// URIs of the certificate's CRL Distribution Points (full names only:
// a name relative to the issuer locates nothing fetchable).
std::vector<std::string> distribution_points(X509* cert) {
  std::vector<std::string> urls;
  std::unique_ptr<CRL_DIST_POINTS, tls::OpenSslDeleter<CRL_DIST_POINTS_free>> points(
      static_cast<CRL_DIST_POINTS*>(
          X509_get_ext_d2i(cert, NID_crl_distribution_points, nullptr, nullptr)));
  if (!points) return urls;
  for (int i = 0; i < sk_DIST_POINT_num(points.get()); ++i) {
    const DIST_POINT* point = sk_DIST_POINT_value(points.get(), i);
    if (!point->distpoint || point->distpoint->type != 0) continue;
    const GENERAL_NAMES* names = point->distpoint->name.fullname;
    for (int j = 0; j < sk_GENERAL_NAME_num(names); ++j) {
      const GENERAL_NAME* name = sk_GENERAL_NAME_value(names, j);
      if (name->type != GEN_URI) continue;
      const auto* uri = name->d.uniformResourceIdentifier;
      std::string url(reinterpret_cast<const char*>(ASN1_STRING_get0_data(uri)),
                      static_cast<std::size_t>(ASN1_STRING_length(uri)));
      if (is_crl_url(url) && std::find(urls.begin(), urls.end(), url) == urls.end()) {
        urls.push_back(std::move(url));
      }
    }
  }
  return urls;
}

}  // namespace

// The refresher's coroutines hold the Impl that owns this io_context: once the thread has
// stopped, shutdown() destroys them while they are still suspended, so that the Impl is not kept
// alive by its own frames.
struct RefresherIo : net::io_context {
  using net::execution_context::shutdown;
  using net::io_context::io_context;
};

struct CrlRefresher::Impl : std::enable_shared_from_this<Impl> {
  // What the refresher knows of a source beyond its public status.
  struct Source {
    std::optional<KeyHash> issuer_key;  // the CA whose CRLs this source publishes, once known
    tls::X509Ptr issuer;                // that CA's certificate
  };

  config::Revocation settings;
  std::vector<std::shared_ptr<const tls::Truststore>> truststores;
  std::shared_ptr<CrlChecker> checker;
  std::shared_ptr<DiscoveryQueue> discovery;
  std::optional<ssl::context> tls;

  mutable std::mutex mutex;  // guards statuses, sources, entries, last_modified
  std::vector<SourceStatus> statuses;
  std::vector<Source> sources;
  std::map<KeyHash, std::shared_ptr<const IssuerRevocations>> entries;
  std::map<std::string, std::string> last_modified;
  std::size_t discovered = 0;

  RefresherIo io{1};
  std::optional<net::executor_work_guard<net::io_context::executor_type>> guard;
  std::atomic<bool> stopping{false};  // set by stop() on another thread than the coroutines'
  std::thread thread;
  bool started = false;
  std::vector<std::unique_ptr<net::steady_timer>> timers;
  // Per source, on the io thread only: a refresh was asked for since its current fetch began.
  // Cancelling the timer is not enough while a fetch is in flight (no wait to cancel yet), and
  // that fetch may have been answered before the request.
  std::vector<bool> refresh_pending;
  std::mt19937 rng{std::random_device{}()};

  fs::path cache_file(const std::string& source) const {
    return settings.crl.cache_dir / (hex_sha256(source) + ".crl");
  }

  // Adds a source unless its URL is already one. Returns its index, or nullopt.
  std::optional<std::size_t> add_source(const std::string& url, bool is_discovered, X509* issuer) {
    std::lock_guard lock(mutex);
    for (const auto& s : statuses) {
      if (s.source == url) return std::nullopt;
    }
    SourceStatus status;
    status.source = url;
    status.discovered = is_discovered;
    Source source;
    if (issuer && X509_up_ref(issuer) == 1) {
      source.issuer.reset(issuer);
      source.issuer_key = key_hash_of(issuer);
    }
    statuses.push_back(std::move(status));
    sources.push_back(std::move(source));
    return statuses.size() - 1;
  }

  // Discovery: the CRL Distribution Points of a certificate whose issuer has no CRL yet. A
  // discovered source publishes the CRLs of the certificate's issuer and of no other CA.
  void discover(X509* cert, X509* issuer) {
    const auto key = key_hash_of(issuer);
    {
      std::lock_guard lock(mutex);
      if (entries.count(key)) return;
      for (const auto& source : sources) {
        if (source.issuer_key == key) return;
      }
    }
    for (const auto& url : distribution_points(cert)) {
      {
        std::lock_guard lock(mutex);
        if (discovered >= max_discovered_sources) {
          spdlog::warn("crl discovery: {} sources discovered already; ignoring {}", discovered,
                       url);
          return;
        }
      }
      const auto index = add_source(url, true, issuer);
      if (!index) continue;
      {
        std::lock_guard lock(mutex);
        ++discovered;
      }
      spdlog::info("crl source={} discovered in the certificate \"{}\" of issuer \"{}\"", url,
                   tls::subject_of(cert), tls::subject_of(issuer));
      if (started) spawn(*index);
    }
  }

  void spawn(std::size_t index) {
    timers.push_back(std::make_unique<net::steady_timer>(io));
    refresh_pending.push_back(false);
    net::co_spawn(io, run_source(index), net::detached);
  }

  // Parses, verifies and, when it is newer than what is held, publishes one CRL. Throws CrlError.
  void apply(std::size_t index, const std::string& bytes, bool from_cache) {
    auto parsed = parse_crl(bytes);
    const auto now = SysClock::now();
    if (parsed.this_update > now + clock_skew) {
      throw CrlError("thisUpdate " + rfc3339(parsed.this_update) + " is in the future");
    }
    std::optional<KeyHash> expected;
    X509* known_issuer = nullptr;
    std::string source_name;
    {
      std::lock_guard lock(mutex);
      expected = sources[index].issuer_key;
      known_issuer = sources[index].issuer.get();
      source_name = statuses[index].source;
    }
    // The candidates: the CA this source is known to publish for (a discovered source's issuer
    // may be an intermediate that only clients send), then every truststore CA.
    std::vector<X509*> candidates;
    if (known_issuer) candidates.push_back(known_issuer);
    for (const auto& trust : truststores) {
      for (const auto& ca : trust->certificates()) candidates.push_back(ca.get());
    }
    X509* issuer = nullptr;
    std::string last_error = "no CA in the truststore has the CRL's issuer name";
    for (X509* ca : candidates) {
      try {
        verify_crl(parsed, ca);
        issuer = ca;
        break;
      } catch (const CrlError& e) {
        if (std::string_view(e.what()).find("not the expected CA") == std::string_view::npos)
          last_error = e.what();
      }
    }
    if (!issuer) throw CrlError(last_error);
    const auto issuer_key = key_hash_of(issuer);
    if (expected && *expected != issuer_key) {
      // A source publishes one CA's CRLs: another CA's list here is misconfiguration or an
      // attempt to pass one CA's CRL off as another's.
      throw CrlError(fmt::format(
          "the CRL is issued by \"{}\", not by \"{}\" whose CRLs this "
          "source publishes",
          tls::subject_of(issuer), known_issuer ? tls::subject_of(known_issuer) : "another CA"));
    }

    auto entry = std::make_shared<IssuerRevocations>();
    entry->issuer_key = issuer_key;
    entry->issuer_public_key = std::string(public_key_bits(issuer));
    entry->issuer_subject = tls::subject_of(issuer);
    entry->source = source_name;
    entry->this_update = parsed.this_update;
    entry->next_update = parsed.next_update;
    entry->crl_number = parsed.crl_number.value_or("");
    entry->revoked = SerialSet(std::move(parsed.revoked));
    entry->oversized_serials = std::move(parsed.oversized_serials);

    std::lock_guard lock(mutex);
    if (const auto it = entries.find(entry->issuer_key); it != entries.end()) {
      const auto& held = *it->second;
      if (!held.crl_number.empty() && !entry->crl_number.empty() &&
          compare_crl_numbers(entry->crl_number, held.crl_number) < 0) {
        throw CrlError(fmt::format("cRLNumber {} is older than the {} already held",
                                   entry->crl_number, held.crl_number));
      }
      if (entry->this_update < held.this_update) {
        throw CrlError("thisUpdate is older than that of the CRL already held");
      }
    }
    auto& source = sources[index];
    if (!source.issuer && X509_up_ref(issuer) == 1) source.issuer.reset(issuer);
    source.issuer_key = issuer_key;
    auto& status = statuses[index];
    status.issuer = entry->issuer_subject;
    status.entries = entry->revoked.size() + entry->oversized_serials.size();
    status.this_update = entry->this_update;
    status.next_update = entry->next_update;
    status.crl_number = entry->crl_number;
    status.loaded = true;
    status.last_success = now;
    status.last_error.clear();
    entries[entry->issuer_key] = entry;
    std::vector<std::shared_ptr<const IssuerRevocations>> all;
    for (const auto& [key, e] : entries) all.push_back(e);
    checker->publish(std::make_shared<const RevocationIndex>(std::move(all)));
    spdlog::info("crl source={} issuer=\"{}\" entries={} crl_number={} next_update={}{}",
                 status.source, status.issuer, status.entries, status.crl_number,
                 status.next_update ? rfc3339(*status.next_update) : "none",
                 from_cache ? " (from cache)" : "");
    if (!from_cache && !settings.crl.cache_dir.empty()) {
      std::error_code ec;
      fs::create_directories(settings.crl.cache_dir, ec);
      const auto target = cache_file(status.source);
      // Unique per process: check-cert may share the gateway's cache directory.
      const auto tmp = fmt::format("{}.{}.tmp", target.string(), ::getpid());
      std::ofstream(tmp, std::ios::binary) << bytes;
      fs::rename(tmp, target, ec);
      if (ec) spdlog::warn("crl cache {}: {}", target.string(), ec.message());
    }
  }

  void record_failure(std::size_t index, const std::string& error, bool rejected) {
    std::lock_guard lock(mutex);
    auto& status = statuses[index];
    status.last_error = error;
    ++(rejected ? status.rejected : status.failed);
    spdlog::warn("crl source={} {}: {}; keeping the last good CRL", status.source,
                 rejected ? "rejected" : "fetch failed", error);
  }

  std::chrono::milliseconds next_delay(std::size_t index, bool ok, int failures) {
    const auto interval = settings.crl.refresh_interval;
    std::chrono::milliseconds delay = interval;
    if (!ok) {
      delay = std::min<std::chrono::milliseconds>(
          interval, std::chrono::seconds(1) * (1 << std::min(failures, 10)));
    } else {
      std::lock_guard lock(mutex);
      if (const auto& next = statuses[index].next_update) {
        const auto until =
            std::chrono::duration_cast<std::chrono::milliseconds>(*next - SysClock::now());
        if (until > std::chrono::seconds(1) && until < delay) delay = until;
      }
    }
    // Jitter keeps a fleet of gateways from fetching in lockstep.
    std::uniform_real_distribution<double> jitter(0.9, 1.1);
    return std::max<std::chrono::milliseconds>(
        std::chrono::milliseconds(200),
        std::chrono::milliseconds(static_cast<long>(delay.count() * jitter(rng))));
  }

  // On the io thread: every source fetches now, or again as soon as its fetch in flight ends.
  void refresh_all() {
    for (std::size_t i = 0; i < timers.size(); ++i) {
      refresh_pending[i] = true;
      timers[i]->cancel();
    }
  }

  net::awaitable<void> run_source(std::size_t index) {
    auto self = shared_from_this();
    int failures = 0;
    for (;;) {
      refresh_pending[index] = false;
      std::string source;
      {
        std::lock_guard lock(mutex);
        source = statuses[index].source;
      }
      bool ok = false;
      if (is_crl_url(source)) {
        std::string etag, modified;
        {
          std::lock_guard lock(mutex);
          etag = statuses[index].etag;
          modified = last_modified[source];
          statuses[index].last_fetch = SysClock::now();
        }
        FetchLimits limits;
        limits.deadline = std::chrono::steady_clock::now() + settings.crl.fetch_timeout;
        limits.max_size = settings.crl.max_size;
        limits.tls = tls ? &*tls : nullptr;
        auto result = co_await fetch_http(source, etag, modified, limits);
        if (result.kind == FetchResult::Kind::not_modified) {
          std::lock_guard lock(mutex);
          ++statuses[index].not_modified;
          ok = statuses[index].loaded;
        } else if (result.kind == FetchResult::Kind::failed) {
          record_failure(index, result.error, false);
        } else {
          try {
            apply(index, result.body, false);
            std::lock_guard lock(mutex);
            ++statuses[index].fetched;
            statuses[index].etag = result.etag;
            last_modified[source] = result.last_modified;
            ok = true;
          } catch (const std::exception& e) {
            record_failure(index, e.what(), true);
          }
        }
      } else {
        try {
          {
            std::lock_guard lock(mutex);
            statuses[index].last_fetch = SysClock::now();
          }
          apply(index, read_file(source), false);
          std::lock_guard lock(mutex);
          ++statuses[index].fetched;
          ok = true;
        } catch (const std::exception& e) {
          record_failure(index, e.what(), true);
        }
      }
      failures = ok ? 0 : failures + 1;
      if (!refresh_pending[index]) {
        auto& timer = *timers[index];
        timer.expires_after(next_delay(index, ok, failures));
        co_await timer.async_wait(net::as_tuple(net::use_awaitable));  // cancelled: refresh now
      }
      if (stopping) co_return;
    }
  }

  // Picks up what the verify path offered. Polling keeps the offer itself free of allocation
  // and of any call into Asio.
  net::awaitable<void> run_discovery() {
    auto self = shared_from_this();
    net::steady_timer timer(io);
    for (;;) {
      timer.expires_after(std::chrono::milliseconds(200));
      co_await timer.async_wait(net::as_tuple(net::use_awaitable));
      if (stopping) co_return;
      if (!discovery->pending()) continue;
      for (auto& [cert, issuer] : discovery->take()) discover(cert.get(), issuer.get());
    }
  }
};

CrlRefresher::CrlRefresher(config::Revocation settings,
                           std::vector<std::shared_ptr<const tls::Truststore>> truststores,
                           std::shared_ptr<CrlChecker> checker)
    : impl_(std::make_shared<Impl>()) {
  auto& s = *impl_;
  s.settings = std::move(settings);
  s.truststores = std::move(truststores);
  s.checker = std::move(checker);

  std::vector<X509*> cas;
  for (const auto& trust : s.truststores) {
    for (const auto& ca : trust->certificates()) cas.push_back(ca.get());
  }
  s.checker->set_issuer_rules(resolve_issuer_rules(s.settings.issuers, cas));

  // Certificate verification for https:// sources: the configured CA bundle, or OpenSSL's
  // default store (the system CAs).
  s.tls.emplace(ssl::context::tls_client);
  s.tls->set_verify_mode(ssl::verify_peer);
  SSL_CTX_set_min_proto_version(s.tls->native_handle(), TLS1_2_VERSION);
  boost::system::error_code ec;
  if (!s.settings.crl.https_ca.empty()) {
    s.tls->load_verify_file(s.settings.crl.https_ca.string(), ec);
    if (ec) {
      throw std::runtime_error(
          fmt::format("revocation.crl.https_ca: {} is not a PEM file of CA certificates: {}",
                      s.settings.crl.https_ca.string(), ec.message()));
    }
  } else {
    s.tls->set_default_verify_paths(ec);
    if (ec) spdlog::warn("crl: cannot load the default CA store for https:// sources");
  }

  for (const auto& source : s.settings.crl.sources) {
    s.add_source(source.url.empty() ? source.file.string() : source.url, false, nullptr);
  }
  if (s.settings.crl.discover) {
    // The CRL Distribution Points of the truststores' CAs (for the CRLs covering intermediates
    // and, for CAs that list their own CDP, their leaves).
    for (X509* ca : cas) {
      for (const auto& url : distribution_points(ca)) s.add_source(url, false, nullptr);
    }
    // And those of the certificates the verify path meets whose issuer has no CRL.
    s.discovery = std::make_shared<DiscoveryQueue>();
    s.checker->set_discovery(s.discovery);
  }
}

CrlRefresher::~CrlRefresher() {
  stop();
}

void CrlRefresher::start() {
  auto& s = *impl_;
  // Last-good CRLs first: enforced from the first handshake even when the servers are down.
  if (!s.settings.crl.cache_dir.empty()) {
    for (std::size_t i = 0; i < s.statuses.size(); ++i) {
      const auto file = s.cache_file(s.statuses[i].source);
      std::error_code ec;
      if (!fs::exists(file, ec)) continue;
      try {
        s.apply(i, read_file(file), true);
      } catch (const std::exception& e) {
        spdlog::warn("crl cache {} for {} ignored: {}", file.string(), s.statuses[i].source,
                     e.what());
      }
    }
  }
  for (std::size_t i = 0; i < s.statuses.size(); ++i) s.spawn(i);
  s.started = true;
  s.guard.emplace(s.io.get_executor());
  if (s.discovery) net::co_spawn(s.io, s.run_discovery(), net::detached);
  s.thread = std::thread([impl = impl_] {
    // Parsing and indexing a large CRL must not compete with handshakes for the CPU: on a busy
    // machine the new index arrives a little later, instead of handshakes waiting behind it.
    // (Linux applies a thread id's nice value to that thread only.)
    if (::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 19) != 0) {
      spdlog::debug("crl refresher: cannot lower the thread's priority");
    }
    impl->io.run();
  });
}

void CrlRefresher::stop() {
  auto& s = *impl_;
  if (!s.thread.joinable()) return;
  s.stopping = true;
  s.guard.reset();
  s.io.stop();
  s.thread.join();
  s.io.shutdown();
}

void CrlRefresher::refresh_now() {
  net::post(impl_->io, [impl = impl_] { impl->refresh_all(); });
}

void CrlRefresher::update_truststores(
    std::vector<std::shared_ptr<const tls::Truststore>> truststores) {
  // Swapped on the refresher's own thread, between two CRL verifications.
  net::post(impl_->io, [impl = impl_, trust = std::move(truststores)]() mutable {
    impl->truststores = std::move(trust);
    impl->refresh_all();
  });
}

void CrlRefresher::discover(X509* cert, X509* issuer) {
  impl_->discover(cert, issuer);
}

bool CrlRefresher::all_loaded() const {
  std::lock_guard lock(impl_->mutex);
  for (const auto& s : impl_->statuses) {
    if (!s.loaded) return false;
  }
  return true;
}

bool CrlRefresher::ready() const {
  const auto& s = *impl_;
  const auto now = SysClock::now();
  std::lock_guard lock(s.mutex);
  for (std::size_t i = 0; i < s.statuses.size(); ++i) {
    const auto& status = s.statuses[i];
    if (status.discovered) continue;
    if (status.loaded && s.checker->usable(status.next_update, now)) continue;
    // Until a source's first CRL names its issuer, the global policy is the one that applies.
    const auto policy = s.sources[i].issuer ? s.checker->on_unknown_for(s.sources[i].issuer.get())
                                            : s.checker->on_unknown();
    if (policy == config::OnUnknown::deny) return false;
  }
  return true;
}

std::vector<SourceStatus> CrlRefresher::status() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->statuses;
}

std::string CrlRefresher::render_metrics() const {
  const auto statuses = status();
  std::string out =
      "# HELP portcullis_crl_entries Revoked serials held per CRL source.\n# TYPE "
      "portcullis_crl_entries gauge\n";
  for (const auto& s : statuses)
    out += fmt::format("portcullis_crl_entries{{source=\"{}\"}} {}\n", s.source, s.entries);
  out +=
      "# HELP portcullis_crl_fetches_total CRL fetches by source and result.\n# TYPE "
      "portcullis_crl_fetches_total counter\n";
  for (const auto& s : statuses) {
    out += fmt::format("portcullis_crl_fetches_total{{source=\"{}\",result=\"ok\"}} {}\n", s.source,
                       s.fetched);
    out += fmt::format("portcullis_crl_fetches_total{{source=\"{}\",result=\"not_modified\"}} {}\n",
                       s.source, s.not_modified);
    out += fmt::format("portcullis_crl_fetches_total{{source=\"{}\",result=\"failed\"}} {}\n",
                       s.source, s.failed);
    out += fmt::format("portcullis_crl_fetches_total{{source=\"{}\",result=\"rejected\"}} {}\n",
                       s.source, s.rejected);
  }
  out +=
      "# HELP portcullis_crl_next_update_seconds Seconds until the CRL's nextUpdate (negative: "
      "stale).\n"
      "# TYPE portcullis_crl_next_update_seconds gauge\n";
  const auto now = SysClock::now();
  for (const auto& s : statuses) {
    if (s.next_update) {
      out += fmt::format(
          "portcullis_crl_next_update_seconds{{source=\"{}\"}} {}\n", s.source,
          std::chrono::duration_cast<std::chrono::seconds>(*s.next_update - now).count());
    }
  }
  const auto c = impl_->checker->counters();
  out +=
      "# HELP portcullis_revocation_denials_total Certificates refused by the revocation check, "
      "by reason.\n# TYPE portcullis_revocation_denials_total counter\n";
  out += fmt::format("portcullis_revocation_denials_total{{reason=\"revoked\"}} {}\n", c.revoked);
  out += fmt::format("portcullis_revocation_denials_total{{reason=\"no_crl_for_issuer\"}} {}\n",
                     c.denied_no_crl);
  out += fmt::format("portcullis_revocation_denials_total{{reason=\"crl_expired\"}} {}\n",
                     c.denied_expired);
  out +=
      "# HELP portcullis_revocation_unknown_allowed_total Certificates of unknown revocation "
      "status admitted by policy, by reason.\n# TYPE portcullis_revocation_unknown_allowed_total "
      "counter\n";
  out += fmt::format(
      "portcullis_revocation_unknown_allowed_total{{reason=\"no_crl_for_issuer\"}} {}\n",
      c.allowed_no_crl);
  out += fmt::format("portcullis_revocation_unknown_allowed_total{{reason=\"crl_expired\"}} {}\n",
                     c.allowed_expired);
  out +=
      "# HELP portcullis_crl_age_seconds Seconds since the CRL's thisUpdate.\n# TYPE "
      "portcullis_crl_age_seconds gauge\n";
  for (const auto& s : statuses) {
    if (s.this_update) {
      out += fmt::format(
          "portcullis_crl_age_seconds{{source=\"{}\"}} {}\n", s.source,
          std::chrono::duration_cast<std::chrono::seconds>(now - *s.this_update).count());
    }
  }
  return out;
}

}  // namespace portcullis::revocation
