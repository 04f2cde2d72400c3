#include "portcullis/revocation/ocsp_client.hpp"

#include "portcullis/admin/metrics.hpp"
#include "portcullis/revocation/http_fetch.hpp"
#include "portcullis/revocation/ocsp.hpp"

#include <openssl/evp.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <unordered_map>

namespace portcullis::revocation {

namespace net = boost::asio;
using SysClock = std::chrono::system_clock;
using Steady = std::chrono::steady_clock;

namespace {

constexpr std::uint64_t max_response_size = 1024 * 1024;

// The cache key: the issuer's subjectPublicKey bits (as OCSP's CertID names the issuer by its
// key) and the serial's content octets. Lookups compare views into the certificates, so the
// verify path builds nothing.
struct KeyView {
  std::string_view issuer_key, serial;
};
struct Key {
  std::string issuer_key, serial;
  operator KeyView() const noexcept { return {issuer_key, serial}; }  // NOLINT: lookups
};
struct KeyHasher {
  using is_transparent = void;
  std::size_t operator()(KeyView k) const noexcept {
    const std::size_t a = std::hash<std::string_view>{}(k.issuer_key);
    return a ^ (std::hash<std::string_view>{}(k.serial) + 0x9e3779b97f4a7c15ULL + (a << 6));
  }
};
struct KeyEqual {
  using is_transparent = void;
  bool operator()(KeyView a, KeyView b) const noexcept {
    return a.serial == b.serial && a.issuer_key == b.issuer_key;
  }
};

KeyView key_view(X509* cert, X509* issuer) noexcept {
  const ASN1_INTEGER* serial = X509_get0_serialNumber(cert);
  return {public_key_bits(issuer),
          std::string_view(reinterpret_cast<const char*>(ASN1_STRING_get0_data(serial)),
                           static_cast<std::size_t>(ASN1_STRING_length(serial)))};
}

// When an entry was last seen: steady milliseconds.
std::int64_t steady_ms() noexcept {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Steady::now().time_since_epoch())
      .count();
}

enum QueryResult { good_, revoked_, unknown_, unreachable_, timeout_, bad_response_, results_ };
constexpr std::array<const char*, results_> result_names = {
    "good", "revoked", "unknown", "unreachable", "timeout", "bad_response"};

// URL-safe text of a GET request: the base64 of the DER request, percent-encoded (RFC 6960 A.1).
std::string get_url(const std::string& responder, const std::string& der) {
  std::string b64(4 * ((der.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(b64.data()),
                                reinterpret_cast<const unsigned char*>(der.data()),
                                static_cast<int>(der.size()));
  b64.resize(static_cast<std::size_t>(std::max(n, 0)));
  std::string out = responder;
  if (out.empty() || out.back() != '/') out += '/';
  for (char c : b64) {
    if (c == '+')
      out += "%2B";
    else if (c == '/')
      out += "%2F";
    else if (c == '=')
      out += "%3D";
    else
      out += c;
  }
  return out;
}

}  // namespace

struct OcspClient::Impl {
  struct Entry {
    OcspLookup::Kind kind = OcspLookup::Kind::miss;
    std::string_view reason;
    SysClock::time_point fetched{}, expires{};
    std::optional<SysClock::time_point> this_update, next_update;
    std::string error;
    // Written by lookup() under the shared lock: atomic.
    mutable std::atomic<std::int64_t> last_seen{0};
    tls::X509Ptr cert, issuer;  // to renew it
    std::string responder;
  };
  struct InFlight {
    std::vector<std::function<void()>> waiters;
  };

  config::Revocation::Ocsp settings;
  Clock clock;
  net::io_context io{1};
  std::thread thread;

  mutable std::shared_mutex cache_mutex;
  std::unordered_map<Key, Entry, KeyHasher, KeyEqual> cache;  // guarded by cache_mutex
  // Own thread only.
  std::map<std::pair<std::string, std::string>, InFlight> in_flight;

  mutable std::mutex responders_mutex;
  std::map<std::string, OcspResponderStatus> responder_status;  // guarded by responders_mutex

  std::atomic<std::uint64_t> generation{1};
  mutable std::atomic<std::uint64_t> hits{0}, misses{0};
  std::array<std::atomic<std::uint64_t>, results_> results{};
  admin::Histogram latency{{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}};

  SysClock::time_point now() const { return clock(); }
  void join(OcspQuery query, std::function<void()> waiter);
  net::awaitable<void> run_query(std::pair<std::string, std::string> key, OcspQuery query);
  void record(const OcspQuery& query, const KeyView& key, QueryResult result,
              const OcspVerdict* verdict, const std::string& error, double seconds);
  SysClock::time_point expiry(const OcspVerdict& verdict, SysClock::time_point now) const;
  net::awaitable<void> renew_loop();
  void renew_and_evict();
  void evict_over_capacity(const Key& kept);  // with cache_mutex held exclusively
};

SysClock::time_point OcspClient::Impl::expiry(const OcspVerdict& verdict,
                                              SysClock::time_point now) const {
  if (verdict.status == OcspCertStatus::revoked) return now + settings.max_ttl;
  // Until nextUpdate, within [min_ttl, max_ttl] from now; never past nextUpdate plus the skew
  // allowance, beyond which the answer is stale. Without nextUpdate: min_ttl.
  auto expires = now + settings.min_ttl;
  if (verdict.next_update) {
    expires = std::max(expires, *verdict.next_update);
    expires = std::min(expires, *verdict.next_update + settings.clock_skew);
  }
  return std::min(expires, now + settings.max_ttl);
}

void OcspClient::Impl::record(const OcspQuery& query, const KeyView& key, QueryResult result,
                              const OcspVerdict* verdict, const std::string& error,
                              double seconds) {
  results[result].fetch_add(1, std::memory_order_relaxed);
  latency.observe(seconds);
  const auto at = now();
  const bool answered = result == good_ || result == revoked_ || result == unknown_;
  {
    std::lock_guard lock(responders_mutex);
    auto& r = responder_status[query.responder];
    r.url = query.responder;
    ++r.queries;
    r.last_latency_seconds = seconds;
    r.healthy = answered;
    if (answered) {
      r.last_success = at;
    } else {
      ++r.failures;
      r.last_failure = at;
      r.last_error = error;
    }
  }
  std::unique_lock lock(cache_mutex);
  auto it = cache.find(key);
  if (!answered && it != cache.end() && it->second.kind != OcspLookup::Kind::failed &&
      at < it->second.expires) {
    // A bad or missing answer never replaces one that is still current.
    it->second.error = error;
    return;
  }
  if (it == cache.end()) {
    it = cache.try_emplace(Key{std::string(key.issuer_key), std::string(key.serial)}).first;
    it->second.last_seen.store(steady_ms(), std::memory_order_relaxed);
  }
  auto& e = it->second;
  const auto previous = e.kind;
  e.fetched = at;
  e.error = error;
  e.responder = query.responder;
  if (!e.cert) {
    e.cert.reset(X509_dup(query.cert.get()));
    e.issuer.reset(X509_dup(query.issuer.get()));
  }
  if (answered) {
    e.kind = result == good_      ? OcspLookup::Kind::good
             : result == revoked_ ? OcspLookup::Kind::revoked
                                  : OcspLookup::Kind::unknown;
    e.reason = result == unknown_ ? ocsp_reason::unknown : std::string_view{};
    e.this_update = verdict->this_update;
    e.next_update = verdict->next_update;
    e.expires = expiry(*verdict, at);
  } else {
    e.kind = OcspLookup::Kind::failed;
    e.reason = result == bad_response_ ? ocsp_reason::bad_response : ocsp_reason::unreachable;
    e.expires = at + settings.failure_ttl;
  }
  if (e.kind != previous && e.kind != OcspLookup::Kind::good) {
    generation.fetch_add(1, std::memory_order_acq_rel);
  }
  if (cache.size() > settings.max_entries) evict_over_capacity(it->first);
}

void OcspClient::Impl::evict_over_capacity(const Key& kept) {
  // Drops the least recently seen tenth, so eviction runs once per many inserts.
  const std::size_t keep = settings.max_entries - settings.max_entries / 10;
  if (cache.size() <= keep) return;
  using Item = std::pair<std::int64_t, decltype(cache)::iterator>;
  std::vector<Item> seen;
  seen.reserve(cache.size());
  for (auto it = cache.begin(); it != cache.end(); ++it) {
    // The entry just written is never the one dropped, whatever the clock's resolution.
    if (&it->first != &kept)
      seen.emplace_back(it->second.last_seen.load(std::memory_order_relaxed), it);
  }
  const auto drop = static_cast<std::ptrdiff_t>(cache.size() - keep);
  std::nth_element(seen.begin(), seen.begin() + drop, seen.end(),
                   [](const Item& a, const Item& b) { return a.first < b.first; });
  for (auto it = seen.begin(); it != seen.begin() + drop; ++it) cache.erase(it->second);
}

net::awaitable<void> OcspClient::Impl::run_query(std::pair<std::string, std::string> key,
                                                 OcspQuery query) {
  const auto started = Steady::now();
  const KeyView view{key.first, key.second};
  const auto seconds = [&] {
    return std::chrono::duration<double>(Steady::now() - started).count();
  };
  OcspRequest request;
  try {
    request = make_ocsp_request(query.cert.get(), query.issuer.get(), settings.nonce);
  } catch (const std::exception& e) {
    record(query, view, unreachable_, nullptr, e.what(), 0);
  }
  if (request.request) {
    FetchLimits limits;
    limits.deadline = started + settings.timeout;
    limits.max_size = max_response_size;
    const bool get = settings.get && request.der.size() <= 180;  // base64 fits in 255 bytes
    const std::string url = get ? get_url(query.responder, request.der) : query.responder;
    std::optional<HttpPost> post;
    if (!get) post = HttpPost{"application/ocsp-request", request.der, "application/ocsp-response"};
    // Named locals, not temporaries, in the co_await expression (GCC 12).
    const std::string no_etag, no_last_modified;
    auto fetched = co_await fetch_http(url, no_etag, no_last_modified, limits, std::move(post));
    if (fetched.kind != FetchResult::Kind::ok) {
      const bool timed_out = Steady::now() >= limits.deadline;
      const auto error = fetched.error.empty() ? std::string("no response") : fetched.error;
      spdlog::warn("OCSP query to {} failed: {}", query.responder, error);
      record(query, view, timed_out ? timeout_ : unreachable_, nullptr, error, seconds());
    } else {
      const auto verdict = verify_ocsp_response(
          fetched.body, query.cert.get(), query.issuer.get(), request.request.get(), now(),
          std::chrono::duration_cast<std::chrono::seconds>(settings.clock_skew));
      // A revocation is final: an authentic "revoked" counts even when its dates are off.
      if (verdict.current || (verdict.authentic && verdict.status == OcspCertStatus::revoked)) {
        const auto result = verdict.status == OcspCertStatus::good      ? good_
                            : verdict.status == OcspCertStatus::revoked ? revoked_
                                                                        : unknown_;
        record(query, view, result, &verdict, "", seconds());
      } else {
        spdlog::warn("OCSP answer from {} rejected: {}", query.responder, verdict.error);
        record(query, view, bad_response_, nullptr, verdict.error, seconds());
      }
    }
  }
  auto node = in_flight.extract(key);
  if (!node.empty()) {
    for (auto& waiter : node.mapped().waiters) waiter();
  }
}

void OcspClient::Impl::join(OcspQuery query, std::function<void()> waiter) {
  const auto view = key_view(query.cert.get(), query.issuer.get());
  std::pair<std::string, std::string> key{std::string(view.issuer_key), std::string(view.serial)};
  if (waiter && !in_flight.count(key)) {
    // A connection that missed the cache just before a query for the same certificate ended
    // finds its answer here rather than asking again.
    std::shared_lock lock(cache_mutex);
    const auto cached = cache.find(view);
    if (cached != cache.end() && now() < cached->second.expires) {
      lock.unlock();
      waiter();
      return;
    }
  }
  auto [it, inserted] = in_flight.try_emplace(key);
  if (waiter) it->second.waiters.push_back(std::move(waiter));
  if (inserted) net::co_spawn(io, run_query(std::move(key), std::move(query)), net::detached);
}

void OcspClient::Impl::renew_and_evict() {
  if (settings.refresh_recent.count() == 0) {
    // No renewal: expired entries go.
    std::unique_lock lock(cache_mutex);
    const auto at = now();
    std::erase_if(cache, [&](const auto& kv) { return kv.second.expires < at; });
    return;
  }
  const auto at = now();
  const auto recent = steady_ms() - settings.refresh_recent.count();  // Duration: milliseconds
  const auto tick = std::chrono::duration_cast<SysClock::duration>(std::clamp<config::Duration>(
      settings.min_ttl / 4, std::chrono::seconds(1), std::chrono::seconds(30)));
  std::vector<OcspQuery> due;
  {
    std::unique_lock lock(cache_mutex);
    for (auto it = cache.begin(); it != cache.end();) {
      const auto& e = it->second;
      const bool seen = e.last_seen.load(std::memory_order_relaxed) >= recent;
      if (!seen && e.expires < at) {
        it = cache.erase(it);
        continue;
      }
      // Renewed at three quarters of its life, or when less than two ticks remain; a revoked
      // status is final and a failed one is retried once it lapses.
      const auto renew_at = e.fetched + (e.expires - e.fetched) * 3 / 4;
      const bool due_now = e.kind == OcspLookup::Kind::failed
                               ? at >= e.expires
                               : at >= renew_at || e.expires - at < 2 * tick;
      if (seen && e.kind != OcspLookup::Kind::revoked && due_now && e.cert && e.issuer &&
          !in_flight.count({it->first.issuer_key, it->first.serial})) {
        OcspQuery q;
        q.cert.reset(X509_dup(e.cert.get()));
        q.issuer.reset(X509_dup(e.issuer.get()));
        q.responder = e.responder;
        if (q.cert && q.issuer) due.push_back(std::move(q));
      }
      ++it;
    }
  }
  for (auto& q : due) join(std::move(q), {});
}

net::awaitable<void> OcspClient::Impl::renew_loop() {
  net::steady_timer timer(io);
  const auto tick = std::clamp<config::Duration>(settings.min_ttl / 4, std::chrono::seconds(1),
                                                 std::chrono::seconds(30));
  for (;;) {
    timer.expires_after(tick);
    auto [ec] = co_await timer.async_wait(net::as_tuple(net::use_awaitable));
    if (ec) co_return;
    renew_and_evict();
  }
}

OcspClient::OcspClient(config::Revocation::Ocsp settings, Clock clock)
    : impl_(std::make_shared<Impl>()) {
  impl_->settings = std::move(settings);
  impl_->clock = clock ? std::move(clock) : Clock([] { return SysClock::now(); });
}

OcspClient::~OcspClient() {
  stop();
}

void OcspClient::start() {
  auto& s = *impl_;
  if (s.thread.joinable()) return;
  net::co_spawn(s.io, s.renew_loop(), net::detached);
  s.thread = std::thread([impl = impl_.get()] { impl->io.run(); });
}

void OcspClient::stop() {
  auto& s = *impl_;
  s.io.stop();
  if (s.thread.joinable()) s.thread.join();
}

OcspLookup OcspClient::lookup(X509* cert, X509* issuer) const noexcept {
  auto& s = *impl_;
  const auto key = key_view(cert, issuer);
  const auto at = s.now();
  std::shared_lock lock(s.cache_mutex);
  const auto it = s.cache.find(key);
  if (it == s.cache.end() || at >= it->second.expires) {
    if (it != s.cache.end()) it->second.last_seen.store(steady_ms(), std::memory_order_relaxed);
    s.misses.fetch_add(1, std::memory_order_relaxed);
    return {};
  }
  it->second.last_seen.store(steady_ms(), std::memory_order_relaxed);
  s.hits.fetch_add(1, std::memory_order_relaxed);
  return {it->second.kind, it->second.reason};
}

void OcspClient::resolve(std::vector<OcspQuery> queries, std::function<void()> done) {
  if (queries.empty()) {
    done();
    return;
  }
  auto* s = impl_.get();
  net::post(s->io, [s, queries = std::make_shared<std::vector<OcspQuery>>(std::move(queries)),
                    done = std::move(done)]() mutable {
    auto remaining = std::make_shared<std::size_t>(queries->size());
    auto finish = [remaining, done = std::move(done)] {
      if (--*remaining == 0) done();
    };
    for (auto& q : *queries) s->join(std::move(q), finish);
  });
}

std::uint64_t OcspClient::generation() const noexcept {
  return impl_->generation.load(std::memory_order_acquire);
}

std::size_t OcspClient::entries() const {
  std::shared_lock lock(impl_->cache_mutex);
  return impl_->cache.size();
}

std::vector<OcspResponderStatus> OcspClient::responders() const {
  std::lock_guard lock(impl_->responders_mutex);
  std::vector<OcspResponderStatus> out;
  for (const auto& [url, status] : impl_->responder_status) out.push_back(status);
  return out;
}

OcspClient::Detail OcspClient::detail(X509* cert, X509* issuer) const {
  auto& s = *impl_;
  Detail d;
  d.lookup = lookup(cert, issuer);
  std::shared_lock lock(s.cache_mutex);
  const auto it = s.cache.find(key_view(cert, issuer));
  if (it != s.cache.end()) {
    d.this_update = it->second.this_update;
    d.next_update = it->second.next_update;
    d.responder = it->second.responder;
    d.error = it->second.error;
  }
  return d;
}

std::string OcspClient::render_metrics() const {
  const auto& s = *impl_;
  std::string out =
      "# HELP portcullis_ocsp_queries_total OCSP queries about client certificates, by "
      "result.\n# TYPE portcullis_ocsp_queries_total counter\n";
  for (int r = 0; r < results_; ++r) {
    out += fmt::format("portcullis_ocsp_queries_total{{result=\"{}\"}} {}\n", result_names[r],
                       s.results[r].load(std::memory_order_relaxed));
  }
  out +=
      "# HELP portcullis_ocsp_query_duration_seconds Time from sending an OCSP query to its "
      "answer or failure.\n# TYPE portcullis_ocsp_query_duration_seconds histogram\n";
  s.latency.render(out, "portcullis_ocsp_query_duration_seconds", "");
  out += fmt::format(
      "# HELP portcullis_ocsp_cache_entries Client certificate statuses held.\n"
      "# TYPE portcullis_ocsp_cache_entries gauge\nportcullis_ocsp_cache_entries {}\n",
      entries());
  const auto hits = s.hits.load(std::memory_order_relaxed);
  const auto misses = s.misses.load(std::memory_order_relaxed);
  out += fmt::format(
      "# HELP portcullis_ocsp_cache_lookups_total Handshake-time lookups of OCSP statuses.\n"
      "# TYPE portcullis_ocsp_cache_lookups_total counter\n"
      "portcullis_ocsp_cache_lookups_total{{result=\"hit\"}} {}\n"
      "portcullis_ocsp_cache_lookups_total{{result=\"miss\"}} {}\n"
      "# HELP portcullis_ocsp_cache_hit_ratio Hits over lookups since start.\n"
      "# TYPE portcullis_ocsp_cache_hit_ratio gauge\nportcullis_ocsp_cache_hit_ratio {}\n",
      hits, misses,
      hits + misses == 0 ? 0.0 : static_cast<double>(hits) / static_cast<double>(hits + misses));
  const auto rs = responders();
  if (!rs.empty()) {
    out +=
        "# HELP portcullis_ocsp_responder_up Whether the responder's last answer was "
        "authentic and current.\n# TYPE portcullis_ocsp_responder_up gauge\n";
    for (const auto& r : rs) {
      out += fmt::format("portcullis_ocsp_responder_up{{responder=\"{}\"}} {}\n", r.url,
                         r.healthy ? 1 : 0);
    }
  }
  return out;
}

}  // namespace portcullis::revocation
