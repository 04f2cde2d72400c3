#pragma once
// The HTTP(S) client of the revocation module: one GET (or POST) with a deadline for the whole
// exchange, a response size cap and a small redirect budget. Used for CRLs and OCSP.
// Thread-safety: each call is an independent coroutine; it touches only its arguments.

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ssl/context.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

namespace portcullis::revocation {

struct FetchResult {
  enum class Kind { ok, not_modified, failed } kind = Kind::failed;
  std::string body;
  std::string etag, last_modified;
  std::string error;
};

struct FetchLimits {
  std::chrono::steady_clock::time_point deadline;
  std::uint64_t max_size = 0;
  boost::asio::ssl::context* tls = nullptr;  // for https:// URLs
};

// A request body: sent with POST instead of GET.
struct HttpPost {
  std::string content_type;
  std::string body;
  std::string accept;
};

bool is_http_url(std::string_view url);

// GET `url` with conditional headers (when non-empty), or POST `post` when set. https:// verifies
// the server against `limits.tls`, by host name or IP address, and sends SNI for names.
boost::asio::awaitable<FetchResult> fetch_http(std::string url, std::string etag,
                                               std::string last_modified, FetchLimits limits,
                                               std::optional<HttpPost> post = std::nullopt);

}  // namespace portcullis::revocation
