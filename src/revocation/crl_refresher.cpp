#include "portcullis/revocation/crl_refresher.hpp"

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
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/url/parse.hpp>

#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

namespace portcullis::revocation {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace fs = std::filesystem;
using tcp = net::ip::tcp;
using SysClock = std::chrono::system_clock;

namespace {

constexpr std::uint64_t max_crl_bytes = 512ULL * 1024 * 1024;
constexpr auto clock_skew = std::chrono::minutes(5);

struct FetchResult {
  enum class Kind { ok, not_modified, failed } kind = Kind::failed;
  std::string body;
  std::string etag, last_modified;
  std::string error;
};

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

// One GET with conditional headers, a size cap, timeouts and a small redirect budget.
net::awaitable<FetchResult> fetch_http(std::string url, std::string etag,
                                       std::string last_modified) {
  FetchResult result;
  for (int redirects = 0; redirects <= 3; ++redirects) {
    const auto parsed = boost::urls::parse_uri(url);
    if (!parsed) {
      result.error = "not a valid URL: " + url;
      co_return result;
    }
    if (parsed->scheme() != "http") {
      result.error = "only http:// CRL URLs are fetched by this version (" + url + ")";
      co_return result;
    }
    const std::string host = parsed->host();
    const std::string port = parsed->has_port() ? std::string(parsed->port()) : "80";
    std::string target = parsed->encoded_path().empty() ? "/" : std::string(parsed->encoded_path());
    if (parsed->has_query()) target += "?" + std::string(parsed->encoded_query());

    auto executor = co_await net::this_coro::executor;
    tcp::resolver resolver(executor);
    beast::tcp_stream stream(executor);
    stream.expires_after(std::chrono::seconds(10));
    auto [rec, endpoints] =
        co_await resolver.async_resolve(host, port, net::as_tuple(net::use_awaitable));
    if (rec) {
      result.error = fmt::format("cannot resolve {}: {}", host, rec.message());
      co_return result;
    }
    auto [cec, ep] = co_await stream.async_connect(endpoints, net::as_tuple(net::use_awaitable));
    if (cec) {
      result.error = fmt::format("cannot connect to {}:{}: {}", host, port, cec.message());
      co_return result;
    }
    http::request<http::empty_body> req{http::verb::get, target, 11};
    req.set(http::field::host, parsed->has_port() ? host + ":" + port : host);
    req.set(http::field::user_agent, "portcullis");
    req.set(http::field::accept, "application/pkix-crl, */*");
    if (!etag.empty()) req.set(http::field::if_none_match, etag);
    if (!last_modified.empty()) req.set(http::field::if_modified_since, last_modified);
    req.keep_alive(false);
    stream.expires_after(std::chrono::seconds(30));
    auto [wec, wn] = co_await http::async_write(stream, req, net::as_tuple(net::use_awaitable));
    if (wec) {
      result.error = "request failed: " + wec.message();
      co_return result;
    }
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(max_crl_bytes);
    auto [hec, hn] =
        co_await http::async_read(stream, buffer, parser, net::as_tuple(net::use_awaitable));
    if (hec) {
      result.error = hec == http::error::body_limit
                         ? fmt::format("response larger than {} bytes", max_crl_bytes)
                         : "response failed: " + hec.message();
      co_return result;
    }
    auto& res = parser.get();
    const auto status = res.result_int();
    if (status == 304) {
      result.kind = FetchResult::Kind::not_modified;
      co_return result;
    }
    if (status == 301 || status == 302 || status == 303 || status == 307 || status == 308) {
      url = std::string(res[http::field::location]);
      continue;
    }
    if (status != 200) {
      result.error = fmt::format("HTTP {} from {}", status, url);
      co_return result;
    }
    result.kind = FetchResult::Kind::ok;
    result.etag = std::string(res[http::field::etag]);
    result.last_modified = std::string(res[http::field::last_modified]);
    result.body = std::move(res.body());
    co_return result;
  }
  result.error = "too many redirects";
  co_return result;
}

}  // namespace

struct CrlRefresher::Impl : std::enable_shared_from_this<Impl> {
  config::Revocation settings;
  std::vector<std::shared_ptr<const tls::Truststore>> truststores;
  std::shared_ptr<CrlChecker> checker;

  mutable std::mutex mutex;  // guards statuses, entries, last_modified
  std::vector<SourceStatus> statuses;
  std::map<KeyHash, std::shared_ptr<const IssuerRevocations>> entries;
  std::map<std::string, std::string> last_modified;

  net::io_context io{1};
  std::optional<net::executor_work_guard<net::io_context::executor_type>> guard;
  std::thread thread;
  std::vector<std::unique_ptr<net::steady_timer>> timers;
  std::mt19937 rng{std::random_device{}()};

  fs::path cache_file(const std::string& source) const {
    return settings.crl.cache_dir / (hex_sha256(source) + ".crl");
  }

  // Parses, verifies and, when it is newer than what is held, publishes one CRL. Throws CrlError.
  void apply(std::size_t index, const std::string& bytes, bool from_cache) {
    auto parsed = parse_crl(bytes);
    const auto now = SysClock::now();
    if (parsed.this_update > now + clock_skew) {
      throw CrlError("thisUpdate " + rfc3339(parsed.this_update) + " is in the future");
    }
    X509* issuer = nullptr;
    std::string last_error = "no CA in the truststore has the CRL's issuer name";
    for (const auto& trust : truststores) {
      for (const auto& ca : trust->certificates()) {
        try {
          verify_crl(parsed, ca.get());
          issuer = ca.get();
          break;
        } catch (const CrlError& e) {
          if (std::string_view(e.what()).find("not the expected CA") == std::string_view::npos)
            last_error = e.what();
        }
      }
      if (issuer) break;
    }
    if (!issuer) throw CrlError(last_error);

    auto entry = std::make_shared<IssuerRevocations>();
    entry->issuer_key = key_hash_of(issuer);
    entry->issuer_subject = tls::subject_of(issuer);
    entry->source = statuses[index].source;
    entry->this_update = parsed.this_update;
    entry->next_update = parsed.next_update;
    entry->crl_number = parsed.crl_number.value_or("");
    entry->revoked = std::move(parsed.revoked);
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
      const auto tmp = target.string() + ".tmp";
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

  net::awaitable<void> run_source(std::size_t index) {
    auto self = shared_from_this();
    int failures = 0;
    for (;;) {
      const auto source = statuses[index].source;
      bool ok = false;
      if (source.rfind("http://", 0) == 0 || source.rfind("https://", 0) == 0) {
        std::string etag, modified;
        {
          std::lock_guard lock(mutex);
          etag = statuses[index].etag;
          modified = last_modified[source];
          statuses[index].last_fetch = SysClock::now();
        }
        auto result = co_await fetch_http(source, etag, modified);
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
      auto& timer = *timers[index];
      timer.expires_after(next_delay(index, ok, failures));
      auto [ec] = co_await timer.async_wait(net::as_tuple(net::use_awaitable));
      if (!guard) co_return;  // stopping
    }
  }
};

CrlRefresher::CrlRefresher(config::Revocation settings,
                           std::vector<std::shared_ptr<const tls::Truststore>> truststores,
                           std::shared_ptr<CrlChecker> checker)
    : impl_(std::make_shared<Impl>()) {
  impl_->settings = std::move(settings);
  impl_->truststores = std::move(truststores);
  impl_->checker = std::move(checker);
  std::vector<std::string> sources;
  for (const auto& s : impl_->settings.crl.sources)
    sources.push_back(s.url.empty() ? s.file.string() : s.url);
  if (impl_->settings.crl.discover) {
    // The CRL Distribution Points of the truststores' CAs (for the CRLs covering intermediates
    // and, for CAs that list their own CDP, their leaves).
    for (const auto& trust : impl_->truststores) {
      for (const auto& ca : trust->certificates()) {
        tls::GeneralNamesPtr unused;
        std::unique_ptr<CRL_DIST_POINTS, void (*)(CRL_DIST_POINTS*)> points(
            static_cast<CRL_DIST_POINTS*>(
                X509_get_ext_d2i(ca.get(), NID_crl_distribution_points, nullptr, nullptr)),
            [](CRL_DIST_POINTS* p) { CRL_DIST_POINTS_free(p); });
        if (!points) continue;
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
            if (url.rfind("http://", 0) == 0 &&
                std::find(sources.begin(), sources.end(), url) == sources.end()) {
              sources.push_back(url);
            }
          }
        }
      }
    }
  }
  for (auto& s : sources) {
    SourceStatus status;
    status.source = s;
    impl_->statuses.push_back(status);
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
  for (std::size_t i = 0; i < s.statuses.size(); ++i) {
    s.timers.push_back(std::make_unique<net::steady_timer>(s.io));
    net::co_spawn(s.io, s.run_source(i), net::detached);
  }
  s.guard.emplace(s.io.get_executor());
  s.thread = std::thread([impl = impl_] { impl->io.run(); });
}

void CrlRefresher::stop() {
  auto& s = *impl_;
  if (!s.thread.joinable()) return;
  s.guard.reset();
  s.io.stop();
  s.thread.join();
}

void CrlRefresher::refresh_now() {
  net::post(impl_->io, [impl = impl_] {
    for (auto& t : impl->timers) t->cancel();
  });
}

bool CrlRefresher::all_loaded() const {
  std::lock_guard lock(impl_->mutex);
  for (const auto& s : impl_->statuses) {
    if (!s.loaded) return false;
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
