#include "portcullis/revocation/http_fetch.hpp"

#include <fmt/format.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <boost/url/parse.hpp>

namespace portcullis::revocation {

namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

namespace {

// One request and its response on a connected stream (plain or TLS). Sets `location` for a
// redirect.
template <typename Stream>
net::awaitable<FetchResult> exchange(Stream& stream, http::request<http::string_body>& req,
                                     const std::string& url, const FetchLimits& limits,
                                     std::string& location) {
  FetchResult result;
  auto& tcp_layer = beast::get_lowest_layer(stream);
  tcp_layer.expires_at(limits.deadline);
  auto [wec, wn] = co_await http::async_write(stream, req, net::as_tuple(net::use_awaitable));
  if (wec) {
    result.error = "request failed: " + wec.message();
    co_return result;
  }
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(limits.max_size);
  tcp_layer.expires_at(limits.deadline);
  auto [hec, hn] =
      co_await http::async_read(stream, buffer, parser, net::as_tuple(net::use_awaitable));
  if (hec) {
    result.error = hec == http::error::body_limit
                       ? fmt::format("response larger than {} bytes", limits.max_size)
                   : hec == beast::error::timeout ? "no complete response within the fetch timeout"
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
    location = std::string(res[http::field::location]);
    if (location.empty()) result.error = fmt::format("HTTP {} without a Location", status);
    co_return result;
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

}  // namespace

bool is_http_url(std::string_view url) {
  return url.rfind("http://", 0) == 0 || url.rfind("https://", 0) == 0;
}

// A size cap, a deadline for the whole fetch (redirects included) and a small redirect budget.
net::awaitable<FetchResult> fetch_http(std::string url, std::string etag, std::string last_modified,
                                       FetchLimits limits, std::optional<HttpPost> post) {
  FetchResult result;
  for (int redirects = 0; redirects <= 3; ++redirects) {
    const auto parsed = boost::urls::parse_uri(url);
    if (!parsed) {
      result.error = "not a valid URL: " + url;
      co_return result;
    }
    const bool https = parsed->scheme() == "https";
    if (!https && parsed->scheme() != "http") {
      result.error = "only http:// and https:// URLs can be fetched (" + url + ")";
      co_return result;
    }
    const std::string host = parsed->host_address();
    const bool ip_host = parsed->host_type() == boost::urls::host_type::ipv4 ||
                         parsed->host_type() == boost::urls::host_type::ipv6;
    const std::string port =
        parsed->has_port() ? std::string(parsed->port()) : (https ? "443" : "80");
    std::string target = parsed->encoded_path().empty() ? "/" : std::string(parsed->encoded_path());
    if (parsed->has_query()) target += "?" + std::string(parsed->encoded_query());

    auto executor = co_await net::this_coro::executor;
    tcp::resolver resolver(executor);
    auto [rec, endpoints] =
        co_await resolver.async_resolve(host, port, net::as_tuple(net::use_awaitable));
    if (rec) {
      result.error = fmt::format("cannot resolve {}: {}", host, rec.message());
      co_return result;
    }
    http::request<http::string_body> req{post ? http::verb::post : http::verb::get, target, 11};
    req.set(http::field::host, std::string(parsed->encoded_host_and_port()));
    req.set(http::field::user_agent, "portcullis");
    if (post) {
      req.set(http::field::accept, post->accept);
      req.set(http::field::content_type, post->content_type);
      req.body() = post->body;
    } else {
      req.set(http::field::accept, "application/pkix-crl, */*");
    }
    req.prepare_payload();
    if (!etag.empty()) req.set(http::field::if_none_match, etag);
    if (!last_modified.empty()) req.set(http::field::if_modified_since, last_modified);
    req.keep_alive(false);

    std::string location;
    if (!https) {
      beast::tcp_stream stream(executor);
      stream.expires_at(limits.deadline);
      auto [cec, ep] = co_await stream.async_connect(endpoints, net::as_tuple(net::use_awaitable));
      if (cec) {
        result.error = fmt::format("cannot connect to {}:{}: {}", host, port, cec.message());
        co_return result;
      }
      result = co_await exchange(stream, req, url, limits, location);
    } else {
      if (!limits.tls) {
        result.error = "no TLS context for " + url;
        co_return result;
      }
      beast::ssl_stream<beast::tcp_stream> stream(executor, *limits.tls);
      SSL* ssl = stream.native_handle();
      X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
      const bool named = ip_host ? X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str()) == 1
                                 : SSL_set_tlsext_host_name(ssl, host.c_str()) == 1 &&
                                       X509_VERIFY_PARAM_set1_host(param, host.c_str(), 0) == 1;
      if (!named) {
        result.error = "cannot set the expected server name " + host;
        co_return result;
      }
      beast::get_lowest_layer(stream).expires_at(limits.deadline);
      auto [cec, ep] = co_await beast::get_lowest_layer(stream).async_connect(
          endpoints, net::as_tuple(net::use_awaitable));
      if (cec) {
        result.error = fmt::format("cannot connect to {}:{}: {}", host, port, cec.message());
        co_return result;
      }
      auto [tec] = co_await stream.async_handshake(ssl::stream_base::client,
                                                   net::as_tuple(net::use_awaitable));
      if (tec) {
        const long verify = SSL_get_verify_result(ssl);
        result.error =
            verify != X509_V_OK
                ? fmt::format(
                      "TLS handshake with {}:{} failed: server certificate not trusted "
                      "({})",
                      host, port, X509_verify_cert_error_string(verify))
                : fmt::format("TLS handshake with {}:{} failed: {}", host, port, tec.message());
        co_return result;
      }
      // The response is complete when parsed (Content-Length or chunked), and a truncated CRL
      // fails its signature check anyway: no close_notify exchange is awaited.
      result = co_await exchange(stream, req, url, limits, location);
    }
    if (location.empty()) co_return result;
    url = location;
  }
  result.error = "too many redirects";
  co_return result;
}

}  // namespace portcullis::revocation
