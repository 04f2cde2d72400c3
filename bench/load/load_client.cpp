#include "load_client.hpp"

#include "portcullis/tls/openssl.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/stream_base.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

#include <fmt/format.h>

#include <sys/resource.h>
#include <optional>
#include <thread>

namespace portcullis::bench {

namespace net = boost::asio;
namespace ssl = net::ssl;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;
using SslSessionPtr = std::unique_ptr<SSL_SESSION, tls::OpenSslDeleter<SSL_SESSION_free>>;

namespace {

double us_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double, std::micro>(to - from).count();
}

double cpu_seconds_self() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const auto s = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  return s(usage.ru_utime) + s(usage.ru_stime);
}

std::string kind_of(std::string_view step, const boost::system::error_code& ec) {
  if (ec == beast::error::timeout) return fmt::format("{}: timeout", step);
  return fmt::format("{}: {}", step, ec.message());
}

}  // namespace

struct LoadClient::Slot {
  struct Connection {
    Connection(const net::any_io_executor& ex, ssl::context& ctx) : stream(ex, ctx) {}
    beast::ssl_stream<beast::tcp_stream> stream;
    beast::flat_buffer buffer;
  };
  net::any_io_executor executor;
  std::optional<Connection> conn;
  SslSessionPtr session;  // resume mode: the session to offer on the next connection
};

LoadClient::LoadClient(Options options) : o_(std::move(options)), ctx_(ssl::context::tls_client) {
  SSL_CTX* ctx = ctx_.native_handle();
  const int version = o_.tls == "1.2" ? TLS1_2_VERSION : TLS1_3_VERSION;
  SSL_CTX_set_min_proto_version(ctx, version);
  SSL_CTX_set_max_proto_version(ctx, version);
  if (!o_.groups.empty() && SSL_CTX_set1_groups_list(ctx, o_.groups.c_str()) != 1) {
    tls::throw_openssl_error("--groups: '" + o_.groups +
                             "' is not a group list this OpenSSL knows");
  }
  // Loaded once: every connection shares the parsed certificate chain and key.
  if (SSL_CTX_use_certificate_chain_file(ctx, o_.cert.c_str()) != 1) {
    tls::throw_openssl_error("--cert: " + o_.cert + " is not a PEM certificate chain");
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, o_.key.c_str(), SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(ctx) != 1) {
    tls::throw_openssl_error("--key: " + o_.key + " is not the unencrypted key of " + o_.cert);
  }
  if (!o_.cacert.empty()) {
    if (SSL_CTX_load_verify_locations(ctx, o_.cacert.c_str(), nullptr) != 1) {
      tls::throw_openssl_error("--cacert: cannot load " + o_.cacert);
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
  }
  // Without tickets a TLS 1.2 server falls back to its session-id cache.
  if (o_.mode == Mode::resume && o_.resume_with == ResumeWith::session_id) {
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
  }
  // Sessions are kept per slot by hand; OpenSSL's client cache would only add locking.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  static const unsigned char alpn[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
  SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn));

  boost::system::error_code ec;
  const auto address = net::ip::make_address(o_.host, ec);
  if (ec) throw std::runtime_error("--host: '" + o_.host + "' is not an IP address");
  endpoint_ = tcp::endpoint(address, o_.port);

  const bool close = o_.mode != Mode::keepalive;
  request_ = fmt::format("{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: portcullis-bench\r\n",
                         o_.request_size ? "POST" : "GET", o_.path, o_.sni);
  if (o_.request_size) {
    request_ += fmt::format("Content-Type: application/octet-stream\r\nContent-Length: {}\r\n",
                            o_.request_size);
  }
  request_ += close ? "Connection: close\r\n\r\n" : "\r\n";
  request_.append(o_.request_size, 'x');
}

net::awaitable<void> LoadClient::one_request(Slot& slot, Recorder& rec,
                                             Clock::time_point scheduled) {
  const auto timeout =
      std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o_.timeout_s));
  const auto since_start = [this] { return us_between(start_, Clock::now()) / 1e6; };
  const auto fail = [&](std::string_view step, const boost::system::error_code& ec) {
    rec.error(kind_of(step, ec), since_start());
    slot.conn.reset();  // a failed connection is dropped, not shut down
  };
  Sample sample;

  if (!slot.conn) {
    const auto begin = Clock::now();
    slot.conn.emplace(slot.executor, ctx_);
    auto& stream = slot.conn->stream;
    auto& tcp_stream = beast::get_lowest_layer(stream);
    tcp_stream.expires_after(timeout);
    auto [cec] = co_await tcp_stream.async_connect(endpoint_, net::as_tuple(net::use_awaitable));
    if (cec) co_return fail("connect", cec);
    tcp_stream.socket().set_option(tcp::no_delay(true));
    SSL* ssl = stream.native_handle();
    SSL_set_tlsext_host_name(ssl, o_.sni.c_str());
    const bool offered = o_.mode == Mode::resume && slot.session;
    if (offered) SSL_set_session(ssl, slot.session.get());
    auto [hec] = co_await stream.async_handshake(ssl::stream_base::client,
                                                 net::as_tuple(net::use_awaitable));
    if (hec) co_return fail("handshake", hec);
    sample.handshake_us = us_between(begin, Clock::now());
    sample.resumed = SSL_session_reused(ssl) == 1;
    ++(sample.resumed ? rec.resumed_handshakes : rec.full_handshakes);
    if (offered && !sample.resumed) ++rec.not_resumed;
  }

  auto& conn = *slot.conn;
  auto& tcp_stream = beast::get_lowest_layer(conn.stream);
  tcp_stream.expires_after(timeout);
  auto [wec, wn] = co_await net::async_write(conn.stream, net::buffer(request_),
                                             net::as_tuple(net::use_awaitable));
  if (wec) co_return fail("write", wec);
  http::response_parser<http::string_body> parser;
  parser.body_limit(64 * 1024 * 1024);
  auto [rec_ec, rn] = co_await http::async_read(conn.stream, conn.buffer, parser,
                                                net::as_tuple(net::use_awaitable));
  if (rec_ec) co_return fail("read", rec_ec);
  const auto done = Clock::now();
  const auto status = parser.get().result_int();

  // TLS 1.3 tickets arrive after the handshake; by the end of the response they have been read.
  if (o_.mode == Mode::resume) slot.session.reset(SSL_get1_session(conn.stream.native_handle()));
  if (o_.mode != Mode::keepalive || !parser.keep_alive()) {
    // Both sides send close_notify, as the gateway expects; its outcome is not measured.
    tcp_stream.expires_after(std::chrono::seconds(2));
    co_await conn.stream.async_shutdown(net::as_tuple(net::use_awaitable));
    slot.conn.reset();
  }
  if (status < 200 || status > 299) {
    rec.error(fmt::format("http {}", status), since_start());
    co_return;
  }
  sample.end_s = us_between(start_, done) / 1e6;
  sample.latency_us = us_between(scheduled, done);
  rec.samples.push_back(sample);
}

net::awaitable<void> LoadClient::run_slot(int index, Recorder& rec) {
  Slot slot;
  slot.executor = co_await net::this_coro::executor;
  net::steady_timer timer(slot.executor);
  const bool timed = o_.duration_s > 0;
  for (std::uint64_t k = 0;; ++k) {
    if (o_.count && issued_.fetch_add(1, std::memory_order_relaxed) >= *o_.count) break;
    auto scheduled = Clock::now();
    if (o_.rate > 0) {
      // Open loop: slot i owns requests i, i+N, i+2N, ... of one evenly spaced schedule. A
      // request that starts late is timed from when it should have started.
      const double at_s =
          static_cast<double>(k * static_cast<std::uint64_t>(o_.connections) + index) / o_.rate;
      scheduled =
          start_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(at_s));
      if (timed && scheduled >= deadline_) break;
      if (scheduled > Clock::now()) {
        timer.expires_at(scheduled);
        co_await timer.async_wait(net::as_tuple(net::use_awaitable));
      }
    } else if (timed && scheduled >= deadline_) {
      break;
    }
    co_await one_request(slot, rec, scheduled);
  }
  if (slot.conn) {
    beast::get_lowest_layer(slot.conn->stream).expires_after(std::chrono::seconds(2));
    co_await slot.conn->stream.async_shutdown(net::as_tuple(net::use_awaitable));
  }
}

Recorder LoadClient::run(RunInfo& info) {
  const auto threads = static_cast<std::size_t>(o_.threads);
  std::vector<std::unique_ptr<net::io_context>> contexts;
  std::vector<Recorder> recorders(threads);
  for (std::size_t i = 0; i < threads; ++i)
    contexts.push_back(std::make_unique<net::io_context>(1));

  const double cpu_before = cpu_seconds_self();
  const double server_before = o_.server_pid ? process_cpu_seconds(o_.server_pid) : -1;
  start_ = Clock::now();
  deadline_ = start_ + std::chrono::duration_cast<Clock::duration>(
                           std::chrono::duration<double>(o_.duration_s));
  // Slots are spread over the threads; each thread's slots share its recorder without locks.
  for (int i = 0; i < o_.connections; ++i) {
    const auto t = static_cast<std::size_t>(i) % threads;
    net::co_spawn(*contexts[t], run_slot(i, recorders[t]), [](std::exception_ptr e) {
      if (e) std::rethrow_exception(e);
    });
  }
  std::vector<std::thread> pool;
  for (std::size_t i = 1; i < threads; ++i) pool.emplace_back([&, i] { contexts[i]->run(); });
  contexts[0]->run();
  for (auto& t : pool) t.join();

  Recorder all;
  for (auto& r : recorders) all.merge(std::move(r));
  double last = 0;
  for (const auto& s : all.samples) last = std::max(last, s.end_s);
  for (double t : all.error_times_s) last = std::max(last, t);
  info.wall_s = last;
  info.client_cpu_s = cpu_seconds_self() - cpu_before;
  if (server_before >= 0) {
    const double after = process_cpu_seconds(o_.server_pid);
    info.server_cpu_s = after >= 0 ? after - server_before : -1;
  }
  return all;
}

}  // namespace portcullis::bench
