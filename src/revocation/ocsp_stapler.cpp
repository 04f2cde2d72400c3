#include "portcullis/revocation/ocsp_stapler.hpp"

#include "portcullis/revocation/http_fetch.hpp"
#include "portcullis/revocation/ocsp.hpp"

#include <fmt/format.h>
#include <openssl/pem.h>
#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

namespace portcullis::revocation {

namespace net = boost::asio;
namespace fs = std::filesystem;
using SysClock = std::chrono::system_clock;

namespace {

constexpr auto clock_skew = std::chrono::minutes(5);
constexpr std::uint64_t max_response_size = 64 * 1024;
constexpr auto first_retry = std::chrono::seconds(1);
constexpr auto max_retry = std::chrono::minutes(5);

struct Staple {
  std::string der;
  SysClock::time_point expires;
};

std::string read_all(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<tls::X509Ptr> read_chain(const fs::path& path) {
  const auto pem = read_all(path);
  tls::BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  std::vector<tls::X509Ptr> chain;
  while (bio) {
    tls::X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (!cert) break;
    chain.push_back(std::move(cert));
  }
  ERR_clear_error();
  return chain;
}

}  // namespace

struct OcspStapler::Impl {
  std::string listener;
  config::OcspStapling settings;
  tls::X509Ptr leaf, issuer;
  std::string url;
  std::string identity;
  std::atomic<std::shared_ptr<const Staple>> current;
  mutable std::mutex mutex;
  StaplingStatus status;  // guarded by mutex
  net::io_context io{1};
  std::thread thread;
  std::chrono::steady_clock::duration backoff = first_retry;

  net::awaitable<void> run();
  net::awaitable<std::chrono::steady_clock::duration> attempt();
  std::chrono::steady_clock::duration failed(std::string error, bool rejected);
};

std::chrono::steady_clock::duration OcspStapler::Impl::failed(std::string error, bool rejected) {
  spdlog::warn("listener '{}': OCSP stapling: {}; {}", listener, error,
               current.load() ? "keeping the last good response" : "nothing is stapled");
  {
    std::lock_guard lock(mutex);
    status.last_error = std::move(error);
    ++(rejected ? status.rejected : status.failed);
  }
  // Retries never wait longer than the regular refresh would.
  const auto delay = std::min<std::chrono::steady_clock::duration>(backoff, settings.refresh);
  backoff = std::min<std::chrono::steady_clock::duration>(backoff * 2, max_retry);
  return delay;
}

net::awaitable<std::chrono::steady_clock::duration> OcspStapler::Impl::attempt() {
  {
    std::lock_guard lock(mutex);
    status.last_fetch = SysClock::now();
  }
  std::string der;
  OcspRequest request;
  if (!settings.file.empty()) {
    try {
      der = read_all(settings.file);
    } catch (const std::exception& e) {
      co_return failed(e.what(), false);
    }
  } else {
    try {
      request = make_ocsp_request(leaf.get(), issuer.get(), true);
    } catch (const std::exception& e) {
      co_return failed(e.what(), false);
    }
    FetchLimits limits;
    limits.deadline = std::chrono::steady_clock::now() + settings.fetch_timeout;
    limits.max_size = max_response_size;
    // Named locals, not temporaries, in the co_await expression: GCC 12 destroys temporaries
    // of a co_await full-expression twice.
    std::optional<HttpPost> post(
        HttpPost{"application/ocsp-request", request.der, "application/ocsp-response"});
    const std::string no_etag, no_last_modified;
    auto result = co_await fetch_http(url, no_etag, no_last_modified, limits, std::move(post));
    if (result.kind != FetchResult::Kind::ok) {
      co_return failed(result.error.empty() ? "no response" : result.error, false);
    }
    der = std::move(result.body);
  }
  const auto now = SysClock::now();
  const auto verdict =
      verify_ocsp_response(der, leaf.get(), issuer.get(), request.request.get(), now, clock_skew);
  if (!verdict.usable) co_return failed(verdict.error, true);

  // Without a nextUpdate the responder promises nothing; the response is used until the next
  // regular refresh is due (plus the skew allowance).
  const auto expires = verdict.next_update ? *verdict.next_update + clock_skew
                                           : *verdict.this_update + settings.refresh + clock_skew;
  current.store(std::make_shared<const Staple>(Staple{std::move(der), expires}));
  {
    std::lock_guard lock(mutex);
    status.this_update = verdict.this_update;
    status.next_update = verdict.next_update;
    status.last_success = now;
    status.last_error.clear();
    ++status.fetched;
  }
  backoff = first_retry;
  std::string next;
  if (verdict.next_update) {
    next = fmt::format(
        "in {}s",
        std::chrono::duration_cast<std::chrono::seconds>(*verdict.next_update - now).count());
  } else {
    next = "not set";
  }
  spdlog::info("listener '{}': OCSP stapling: good response from {} (next update {})", listener,
               status.responder, next);
  // Half-way to nextUpdate, at most `refresh` from now.
  std::chrono::steady_clock::duration delay = settings.refresh;
  if (verdict.next_update && *verdict.next_update > now) {
    delay = std::min<std::chrono::steady_clock::duration>(delay, (*verdict.next_update - now) / 2);
  }
  co_return std::max<std::chrono::steady_clock::duration>(delay, std::chrono::seconds(1));
}

// The Impl outlives this coroutine: stop() (also run by the destructor) joins the thread first.
net::awaitable<void> OcspStapler::Impl::run() {
  net::steady_timer timer(io);
  for (;;) {
    const auto delay = co_await attempt();
    timer.expires_after(delay);
    auto [ec] = co_await timer.async_wait(net::as_tuple(net::use_awaitable));
    if (ec) co_return;
  }
}

OcspStapler::OcspStapler(std::string listener, config::OcspStapling settings,
                         const fs::path& certificate_chain)
    : impl_(std::make_shared<Impl>()) {
  auto& s = *impl_;
  s.listener = std::move(listener);
  s.settings = std::move(settings);
  auto chain = read_chain(certificate_chain);
  if (chain.empty()) {
    throw std::runtime_error(fmt::format("no certificate in {}", certificate_chain.string()));
  }
  for (std::size_t i = 1; i < chain.size(); ++i) {
    if (X509_check_issued(chain[i].get(), chain[0].get()) == X509_V_OK) {
      s.issuer = std::move(chain[i]);
      break;
    }
  }
  s.leaf = std::move(chain[0]);
  if (!s.issuer) {
    throw std::runtime_error(
        fmt::format("the issuer of the server certificate is not in {} (stapling needs "
                    "it to verify responses; append it after the leaf)",
                    certificate_chain.string()));
  }
  if (s.settings.file.empty()) {
    s.url = s.settings.responder.empty() ? ocsp_responder_url(s.leaf.get()) : s.settings.responder;
    if (s.url.empty()) {
      throw std::runtime_error(
          fmt::format("the certificate in {} has no http:// OCSP URI in its "
                      "Authority Information Access; set the responder URL or a response file",
                      certificate_chain.string()));
    }
  }
  s.status.listener = s.listener;
  s.status.responder = s.settings.file.empty() ? s.url : s.settings.file.string();
  unsigned char* der = nullptr;
  const int length = i2d_X509(s.leaf.get(), &der);
  std::string leaf_der(length > 0 ? reinterpret_cast<const char*>(der) : "",
                       static_cast<std::size_t>(std::max(length, 0)));
  OPENSSL_free(der);
  s.identity =
      fmt::format("{}|{}|{}|{}|{}|", s.url, s.settings.file.string(), s.settings.refresh.count(),
                  s.settings.fetch_timeout.count(), s.settings.enabled) +
      leaf_der;
}

OcspStapler::~OcspStapler() {
  stop();
}

void OcspStapler::start() {
  auto& s = *impl_;
  if (s.thread.joinable()) return;
  net::co_spawn(s.io, s.run(), net::detached);
  s.thread = std::thread([impl = impl_.get()] { impl->io.run(); });
}

void OcspStapler::stop() {
  auto& s = *impl_;
  s.io.stop();
  if (s.thread.joinable()) s.thread.join();
}

std::shared_ptr<const std::string> OcspStapler::response() const {
  auto staple = impl_->current.load();
  if (!staple || SysClock::now() >= staple->expires) return nullptr;
  return std::shared_ptr<const std::string>(staple, &staple->der);
}

StaplingStatus OcspStapler::status() const {
  StaplingStatus out;
  {
    std::lock_guard lock(impl_->mutex);
    out = impl_->status;
  }
  out.valid = response() != nullptr;
  return out;
}

const std::string& OcspStapler::identity() const {
  return impl_->identity;
}

std::string OcspStapler::metric_headers() {
  return "# HELP portcullis_ocsp_staple_fetches_total OCSP responses fetched for stapling, by "
         "result (success, failed: no response, rejected: not verified or not good).\n"
         "# TYPE portcullis_ocsp_staple_fetches_total counter\n"
         "# HELP portcullis_ocsp_staple_valid 1 when a good, current OCSP response is stapled.\n"
         "# TYPE portcullis_ocsp_staple_valid gauge\n"
         "# HELP portcullis_ocsp_staple_next_update_seconds Seconds until the stapled OCSP "
         "response's nextUpdate.\n"
         "# TYPE portcullis_ocsp_staple_next_update_seconds gauge\n";
}

std::string OcspStapler::render_metrics() const {
  const auto st = status();
  const auto& l = st.listener;
  std::string out;
  out +=
      fmt::format("portcullis_ocsp_staple_fetches_total{{listener=\"{}\",result=\"success\"}} {}\n",
                  l, st.fetched);
  out +=
      fmt::format("portcullis_ocsp_staple_fetches_total{{listener=\"{}\",result=\"failed\"}} {}\n",
                  l, st.failed);
  out += fmt::format(
      "portcullis_ocsp_staple_fetches_total{{listener=\"{}\",result=\"rejected\"}} {}\n", l,
      st.rejected);
  out += fmt::format("portcullis_ocsp_staple_valid{{listener=\"{}\"}} {}\n", l, st.valid ? 1 : 0);
  if (st.valid && st.next_update) {
    out += fmt::format(
        "portcullis_ocsp_staple_next_update_seconds{{listener=\"{}\"}} {}\n", l,
        std::chrono::duration_cast<std::chrono::seconds>(*st.next_update - SysClock::now())
            .count());
  }
  return out;
}

}  // namespace portcullis::revocation
