#pragma once
// OCSP checks of client certificates: a cache of verified statuses per (issuer key, serial) that
// the verify path reads without I/O; the queries that fill it, run on the client's own thread,
// one query per certificate however many connections wait for its answer; and the background
// renewal of statuses for certificates seen recently, so the steady state queries nothing on
// the request path.
// Thread-safety: lookup() from any thread (a shared lock held for a few loads, no allocation);
// resolve(), status() and render_metrics() from any thread; the rest runs on the own thread.
// A failed or bad answer never replaces a status that is still current.

#include "portcullis/config/config.hpp"
#include "portcullis/revocation/revocation_index.hpp"
#include "portcullis/tls/openssl.hpp"

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace portcullis::revocation {

// Why an OCSP status could not be had. Static text: stable names for logs and metrics.
namespace ocsp_reason {
inline constexpr std::string_view unreachable = "ocsp_unreachable";
inline constexpr std::string_view bad_response = "ocsp_bad_response";
inline constexpr std::string_view no_responder = "no_ocsp_responder";
inline constexpr std::string_view unresolved = "ocsp_unresolved";
inline constexpr std::string_view unknown = "ocsp_unknown";
}  // namespace ocsp_reason

struct OcspLookup {
  enum class Kind { miss, good, revoked, unknown, failed } kind = Kind::miss;
  std::string_view reason;  // for failed
};

// One certificate to ask about, and where.
struct OcspQuery {
  tls::X509Ptr cert, issuer;
  std::string responder;  // http:// URL
};

struct OcspResponderStatus {
  std::string url;
  std::uint64_t queries = 0, failures = 0;
  std::optional<std::chrono::system_clock::time_point> last_success, last_failure;
  std::string last_error;
  double last_latency_seconds = 0;
  bool healthy = false;  // the last query got an authentic, current answer
};

class OcspClient {
 public:
  using Clock = std::function<std::chrono::system_clock::time_point()>;

  explicit OcspClient(config::Revocation::Ocsp settings, Clock clock = {});
  ~OcspClient();
  OcspClient(const OcspClient&) = delete;
  OcspClient& operator=(const OcspClient&) = delete;

  // Starts the own thread (queries, renewal); stop() joins it. Pending resolve() callbacks are
  // dropped by stop().
  void start();
  void stop();

  // The cached status of `cert`, if any is still valid, and notes that it was seen.
  OcspLookup lookup(X509* cert, X509* issuer) const noexcept;

  // Asks the responders about `queries` (joining queries already under way for the same
  // certificate) and calls `done` once, on the client's thread, when every one has an answer
  // in the cache or has failed. Each query is bounded by the configured timeout.
  void resolve(std::vector<OcspQuery> queries, std::function<void()> done);

  // Changes whenever a cached status changes to something other than good, so live
  // connections know to check again.
  std::uint64_t generation() const noexcept;

  std::size_t entries() const;
  std::vector<OcspResponderStatus> responders() const;
  // portcullis_ocsp_* metrics, with their HELP and TYPE lines.
  std::string render_metrics() const;

  // What the cache holds for `cert`, for check-cert: status, thisUpdate, nextUpdate, the
  // responder and the last error.
  struct Detail {
    OcspLookup lookup;
    std::optional<std::chrono::system_clock::time_point> this_update, next_update;
    std::string responder, error;
  };
  Detail detail(X509* cert, X509* issuer) const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace portcullis::revocation
