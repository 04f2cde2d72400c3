#include "portcullis/tls/socket_stream.hpp"

#include "portcullis/tls/pki_builder.hpp"
#include "test_support.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/error.hpp>
#include <catch2/catch.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <exception>
#include <string>
#include <vector>

using namespace portcullis;
using namespace portcullis::tls;
using namespace portcullis::tls::testing;
using namespace std::chrono_literals;
namespace net = boost::asio;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;
using boost::system::error_code;

namespace portcullis::tls::testing {
std::int64_t data_segments_out(int fd);  // tcp_segments.cpp
}

namespace {

constexpr auto tuple = net::as_tuple(net::use_awaitable);

// A server context with a self-signed certificate (the stream does not care about client
// certificates), and a client that trusts anything.
struct Contexts {
  ssl::context server{make_server()};
  ssl::context client{ssl::context::tls_client};

  static SSL_CTX* make_server() {
    auto spec = leaf_spec("localhost", Eku::server_auth);
    spec.sans = {"DNS:localhost"};
    const auto issued = issue_certificate(spec, nullptr);
    SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
    REQUIRE(ctx);
    REQUIRE(SSL_CTX_use_certificate(ctx, issued.cert.get()) == 1);
    REQUIRE(SSL_CTX_use_PrivateKey(ctx, issued.key.get()) == 1);
    return ctx;
  }
};

// A connected pair on loopback: the server end under test, Asio's ssl::stream as the client.
struct Pair {
  net::io_context io;
  Contexts contexts;
  std::unique_ptr<SocketStream> server;
  std::unique_ptr<ssl::stream<tcp::socket>> client;

  Pair() {
    tcp::acceptor acceptor(io, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
    tcp::socket client_socket(io);
    client_socket.connect(acceptor.local_endpoint());
    server = std::make_unique<SocketStream>(acceptor.accept(), contexts.server);
    client = std::make_unique<ssl::stream<tcp::socket>>(std::move(client_socket), contexts.client);
  }

  // Runs the coroutines to the end (bounded: a hang fails the test instead of the run).
  template <class... Coroutines>
  void run(Coroutines&&... coroutines) {
    std::exception_ptr failure;
    int left = sizeof...(coroutines);
    const auto done = [&](std::exception_ptr e) {
      if (e && !failure) failure = e;
      --left;
    };
    (net::co_spawn(io, std::forward<Coroutines>(coroutines), done), ...);
    io.run_for(20s);
    if (failure) std::rethrow_exception(failure);
    REQUIRE(left == 0);
    io.restart();
  }

  void handshake() {
    run(
        [this]() -> net::awaitable<void> {
          auto [ec] = co_await server->async_handshake(ssl::stream_base::server, tuple);
          REQUIRE_FALSE(ec);
        }(),
        [this]() -> net::awaitable<void> {
          auto [ec] = co_await client->async_handshake(ssl::stream_base::client, tuple);
          REQUIRE_FALSE(ec);
        }());
  }
};

std::string pattern(std::size_t size, char seed) {
  std::string out(size, '\0');
  for (std::size_t i = 0; i < size; ++i) out[i] = static_cast<char>(seed + i % 251);
  return out;
}

}  // namespace

TEST_CASE("data crosses both ways whole, in records of any size", "[socket_stream]") {
  Pair pair;
  pair.handshake();
  const auto upload = pattern(1 << 20, 'a');
  const auto header = pattern(200, 'h');
  const auto body = pattern(100 * 1024, 'b');
  std::string received(upload.size(), '\0');
  std::string downloaded(header.size() + body.size(), '\0');
  pair.run(
      [&]() -> net::awaitable<void> {
        auto [ec, n] = co_await net::async_read(*pair.server, net::buffer(received), tuple);
        REQUIRE_FALSE(ec);
        REQUIRE(n == upload.size());
        // A header and a body in one gathered write, as Beast's serializer hands them over.
        const std::array<net::const_buffer, 2> pieces{net::buffer(header), net::buffer(body)};
        std::tie(ec, n) = co_await net::async_write(*pair.server, pieces, tuple);
        REQUIRE_FALSE(ec);
        REQUIRE(n == header.size() + body.size());
      }(),
      [&]() -> net::awaitable<void> {
        auto [ec, n] = co_await net::async_write(*pair.client, net::buffer(upload), tuple);
        REQUIRE_FALSE(ec);
        std::tie(ec, n) = co_await net::async_read(*pair.client, net::buffer(downloaded), tuple);
        REQUIRE_FALSE(ec);
      }());
  CHECK(received == upload);
  CHECK(downloaded == header + body);
}

TEST_CASE("small gathered writes go out as one record each", "[socket_stream]") {
  Pair pair;
  pair.handshake();
  std::string all;
  for (int i = 0; i < 200; ++i) all += "head-" + std::to_string(i) + "|body-" + std::to_string(i);
  std::string received(all.size(), '\0');
  pair.run(
      [&]() -> net::awaitable<void> {
        for (int i = 0; i < 200; ++i) {
          const auto head = "head-" + std::to_string(i);
          const auto body = "|body-" + std::to_string(i);
          const std::array<net::const_buffer, 3> pieces{net::buffer(head), net::const_buffer(),
                                                        net::buffer(body)};
          // One write_some takes both pieces: the coalesced record.
          auto [ec, n] = co_await pair.server->async_write_some(pieces, tuple);
          REQUIRE_FALSE(ec);
          REQUIRE(n == head.size() + body.size());
        }
      }(),
      [&]() -> net::awaitable<void> {
        auto [ec, n] = co_await net::async_read(*pair.client, net::buffer(received), tuple);
        REQUIRE_FALSE(ec);
      }());
  CHECK(received == all);
}

TEST_CASE("close_notify reads as eof, a transport closed without it as truncation",
          "[socket_stream]") {
  SECTION("close_notify") {
    Pair pair;
    pair.handshake();
    error_code read_error;
    pair.run(
        [&]() -> net::awaitable<void> {
          std::array<char, 16> buf;
          std::tie(read_error, std::ignore) =
              co_await pair.server->async_read_some(net::buffer(buf), tuple);
          // Our close_notify back, then the peer's has already been seen: shutdown completes.
          auto [ec] = co_await pair.server->async_shutdown(tuple);
          CHECK_FALSE(ec);
        }(),
        [&]() -> net::awaitable<void> {
          auto [ec] = co_await pair.client->async_shutdown(tuple);
          CHECK_FALSE(ec);
        }());
    CHECK(read_error == net::error::eof);
  }
  SECTION("close_notify sent without waiting for the peer's") {
    Pair pair;
    pair.handshake();
    error_code read_error;
    bool server_done = false;
    pair.run([&]() -> net::awaitable<void> {
      // The client sends nothing: a shutdown that waited for its close_notify would not end.
      auto [ec] = co_await pair.server->async_close_notify(tuple);
      CHECK_FALSE(ec);
      server_done = true;
      std::array<char, 16> buf;
      std::tie(read_error, std::ignore) =
          co_await pair.client->async_read_some(net::buffer(buf), tuple);
    }());
    CHECK(server_done);
    CHECK(read_error == net::error::eof);  // the client saw a close_notify, not a truncation
  }
  SECTION("truncated") {
    Pair pair;
    pair.handshake();
    error_code read_error;
    pair.run([&]() -> net::awaitable<void> {
      // A FIN with no close_notify before it (close() would reset: the client never read
      // its session ticket).
      pair.client->next_layer().shutdown(tcp::socket::shutdown_send);
      std::array<char, 16> buf;
      std::tie(read_error, std::ignore) =
          co_await pair.server->async_read_some(net::buffer(buf), tuple);
    }());
    CHECK(read_error == ssl::error::stream_truncated);
  }
}

TEST_CASE("a last write leaves with the close_notify, in one segment", "[socket_stream]") {
  const bool close_after = GENERATE(false, true);
  INFO("close_after_this " << close_after);
  Pair pair;
  pair.handshake();
  const auto response = pattern(1100, 'a');
  std::string received(response.size(), '\0');
  error_code end;
  const int fd = pair.server->next_layer().socket().native_handle();
  std::int64_t before = -1, after = -1;
  pair.run([&]() -> net::awaitable<void> {
    // The session ticket goes out with a first write; the count starts once it has arrived.
    auto [fec, fn] = co_await net::async_write(*pair.server, net::buffer("x", 1), tuple);
    REQUIRE_FALSE(fec);
    char first = 0;
    auto [frec, frn] = co_await net::async_read(*pair.client, net::buffer(&first, 1), tuple);
    REQUIRE_FALSE(frec);
    before = data_segments_out(fd);
    REQUIRE(before >= 0);
    if (close_after) pair.server->close_after_this();
    auto [ec, n] = co_await net::async_write(*pair.server, net::buffer(response), tuple);
    REQUIRE_FALSE(ec);
    auto [sec] = co_await pair.server->async_close_notify(tuple);
    REQUIRE_FALSE(sec);
    auto [rec, rn] = co_await net::async_read(*pair.client, net::buffer(received), tuple);
    REQUIRE_FALSE(rec);
    std::array<char, 16> buf;
    std::tie(end, std::ignore) = co_await pair.client->async_read_some(net::buffer(buf), tuple);
    after = data_segments_out(fd);  // all of it has arrived, so all of it was sent
  }());
  CHECK(received == response);
  CHECK(end == net::error::eof);  // the close_notify arrived after the data
  INFO("data segments before " << before << ", after " << after);
  CHECK(after - before == (close_after ? 1 : 2));
}

TEST_CASE("a handshake that fails reports OpenSSL's error", "[socket_stream]") {
  Pair pair;
  error_code handshake_error;
  pair.run(
      [&]() -> net::awaitable<void> {
        std::tie(handshake_error) =
            co_await pair.server->async_handshake(ssl::stream_base::server, tuple);
      }(),
      [&]() -> net::awaitable<void> {
        const std::string plain = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
        co_await net::async_write(pair.client->next_layer(), net::buffer(plain), tuple);
      }());
  REQUIRE(handshake_error);
  CHECK(handshake_error.category() == net::error::get_ssl_category());
}

TEST_CASE("a deadline that passes ends the wait with timeout and closes the socket",
          "[socket_stream]") {
  Pair pair;
  pair.handshake();
  error_code read_error, write_error;
  const auto started = std::chrono::steady_clock::now();
  pair.run([&]() -> net::awaitable<void> {
    pair.server->next_layer().expires_after(50ms);
    std::array<char, 16> buf;
    std::tie(read_error, std::ignore) =
        co_await pair.server->async_read_some(net::buffer(buf), tuple);
    // The descriptor is gone: OpenSSL must not write to whatever reuses its number.
    std::tie(write_error, std::ignore) =
        co_await pair.server->async_write_some(net::buffer("late", 4), tuple);
  }());
  CHECK(read_error == boost::beast::error::timeout);
  CHECK_FALSE(pair.server->next_layer().socket().is_open());
  CHECK(write_error);
  CHECK(std::chrono::steady_clock::now() - started < 5s);
}

TEST_CASE("a deadline moved while an operation waits applies at once", "[socket_stream]") {
  Pair pair;
  pair.handshake();
  error_code read_error;
  net::steady_timer later(pair.io, 30ms);
  pair.run(
      [&]() -> net::awaitable<void> {
        pair.server->next_layer().expires_after(1h);
        std::array<char, 16> buf;
        std::tie(read_error, std::ignore) =
            co_await pair.server->async_read_some(net::buffer(buf), tuple);
      }(),
      [&]() -> net::awaitable<void> {
        co_await later.async_wait(tuple);
        pair.server->next_layer().expires_after(0s);  // as Worker::drain_idle does
      }());
  CHECK(read_error == boost::beast::error::timeout);
}

TEST_CASE("a deadline moved later while an operation waits applies when it passes",
          "[socket_stream]") {
  Pair pair;
  pair.handshake();
  error_code read_error;
  const auto started = std::chrono::steady_clock::now();
  std::chrono::steady_clock::duration took{};
  net::steady_timer later(pair.io, 20ms);
  pair.run(
      [&]() -> net::awaitable<void> {
        pair.server->next_layer().expires_after(50ms);
        std::array<char, 16> buf;
        std::tie(read_error, std::ignore) =
            co_await pair.server->async_read_some(net::buffer(buf), tuple);
        took = std::chrono::steady_clock::now() - started;
      }(),
      [&]() -> net::awaitable<void> {
        co_await later.async_wait(tuple);
        pair.server->next_layer().expires_after(300ms);
      }());
  CHECK(read_error == boost::beast::error::timeout);
  CHECK(took >= 300ms);  // not at the first deadline, when the timer first fires
  CHECK(took < 5s);
}

TEST_CASE("expires_never lifts a deadline, even during a wait", "[socket_stream]") {
  Pair pair;
  pair.handshake();
  error_code read_error;
  std::size_t got = 0;
  net::steady_timer later(pair.io, 100ms);
  pair.run(
      [&]() -> net::awaitable<void> {
        pair.server->next_layer().expires_after(50ms);
        pair.server->next_layer().expires_never();
        std::array<char, 16> buf;
        std::tie(read_error, got) = co_await pair.server->async_read_some(net::buffer(buf), tuple);
      }(),
      [&]() -> net::awaitable<void> {
        co_await later.async_wait(tuple);
        co_await net::async_write(*pair.client, net::buffer("hi", 2), tuple);
      }());
  CHECK_FALSE(read_error);
  CHECK(got == 2);
}

TEST_CASE("cancel ends a wait with operation_aborted and the connection goes on",
          "[socket_stream]") {
  Pair pair;
  pair.handshake();
  error_code first, second;
  std::string got;
  net::steady_timer later(pair.io, 30ms);
  pair.run(
      [&]() -> net::awaitable<void> {
        pair.server->next_layer().expires_after(10s);
        std::array<char, 16> buf;
        std::tie(first, std::ignore) =
            co_await pair.server->async_read_some(net::buffer(buf), tuple);
        auto [ec, n] = co_await pair.server->async_read_some(net::buffer(buf), tuple);
        second = ec;
        got.assign(buf.data(), n);
      }(),
      [&]() -> net::awaitable<void> {
        co_await later.async_wait(tuple);
        pair.server->next_layer().socket().cancel();
        co_await net::async_write(*pair.client, net::buffer("after", 5), tuple);
      }());
  CHECK(first == net::error::operation_aborted);
  CHECK_FALSE(second);
  CHECK(got == "after");
}

namespace {

// `wait` waits for the server side to become readable: it must complete when the peer sends,
// at once when OpenSSL already holds bytes, and with timeout when the deadline passes.
template <class Wait>
void check_readable_wait(Pair& pair, Wait wait) {
  bool sent = false;
  bool ready_before_send = false;
  std::string got;
  net::steady_timer later(pair.io, 30ms);
  pair.run(
      [&]() -> net::awaitable<void> {
        auto ec = co_await wait();
        REQUIRE_FALSE(ec);
        ready_before_send = !sent;
        // Two records arrive in one recv; reading one byte leaves the rest inside OpenSSL,
        // where the socket cannot tell: the wait must complete without the socket.
        char one = 0;
        std::size_t n = 0;
        std::tie(ec, n) = co_await pair.server->async_read_some(net::buffer(&one, 1), tuple);
        REQUIRE_FALSE(ec);
        got += one;
        ec = co_await wait();
        REQUIRE_FALSE(ec);
        std::array<char, 64> buf;
        while (got.size() < 6) {
          std::tie(ec, n) = co_await pair.server->async_read_some(net::buffer(buf), tuple);
          REQUIRE_FALSE(ec);
          got.append(buf.data(), n);
        }
        pair.server->next_layer().expires_after(20ms);
        ec = co_await wait();
        CHECK(ec == boost::beast::error::timeout);
      }(),
      [&]() -> net::awaitable<void> {
        co_await later.async_wait(tuple);
        sent = true;
        co_await net::async_write(*pair.client, net::buffer("abc", 3), tuple);
        co_await net::async_write(*pair.client, net::buffer("def", 3), tuple);
      }());
  CHECK_FALSE(ready_before_send);
  CHECK(got == "abcdef");
  CHECK_FALSE(pair.server->next_layer().socket().is_open());
}

}  // namespace

TEST_CASE("async_wait_readable waits for the peer, or not at all when OpenSSL holds bytes",
          "[socket_stream]") {
  Pair pair;
  pair.handshake();
  check_readable_wait(pair, [&]() -> net::awaitable<error_code> {
    auto [ec] = co_await pair.server->async_wait_readable(tuple);
    co_return ec;
  });
}

TEST_CASE("wait_readable calls back when the peer sends, or at once when OpenSSL holds bytes",
          "[socket_stream]") {
  Pair pair;
  pair.handshake();
  check_readable_wait(pair, [&]() -> net::awaitable<error_code> {
    // Resumes this coroutine when the callback is called.
    net::steady_timer called(pair.io, net::steady_timer::time_point::max());
    error_code result = net::error::would_block;
    pair.server->wait_readable([&](error_code ec) {
      result = ec;
      called.cancel();
    });
    co_await called.async_wait(tuple);
    co_return result;
  });
}

TEST_CASE("writes to a peer that has gone fail on the connection, not the process",
          "[socket_stream]") {
  Pair pair;
  pair.handshake();
  error_code write_error;
  pair.run([&]() -> net::awaitable<void> {
    // Reset, not FIN: the server's next sends meet EPIPE/ECONNRESET (SIGPIPE without
    // MSG_NOSIGNAL would end the test binary here).
    pair.client->next_layer().set_option(net::socket_base::linger(true, 0));
    pair.client->next_layer().close();
    const auto chunk = pattern(64 * 1024, 'x');
    for (int i = 0; i < 100 && !write_error; ++i) {
      std::tie(write_error, std::ignore) =
          co_await net::async_write(*pair.server, net::buffer(chunk), tuple);
    }
  }());
  REQUIRE(write_error);
  CHECK((write_error == net::error::connection_reset || write_error == net::error::broken_pipe));
}

TEST_CASE("read_some_now and write_some_now act at once, or say that they would wait",
          "[socket_stream]") {
  Pair pair;
  pair.handshake();
  std::array<char, 64> space{};
  std::size_t n = 99;
  error_code ec;
  // Nothing sent yet: the read would wait, and nothing is lost by trying.
  CHECK_FALSE(pair.server->read_some_now(net::buffer(space), n, ec));
  CHECK(n == 0);
  CHECK_FALSE(ec);

  const std::string hello = "hello, now";
  const auto big = pattern(200 * 1024, 'z');
  std::string received(hello.size() + big.size(), '\0');
  std::size_t first_write = 0;
  pair.run(
      [&]() -> net::awaitable<void> {
        auto [write_ec, written] =
            co_await net::async_write(*pair.client, net::buffer(hello), tuple);
        REQUIRE_FALSE(write_ec);
        std::tie(write_ec, written) =
            co_await net::async_read(*pair.client, net::buffer(received), tuple);
        REQUIRE_FALSE(write_ec);
      }(),
      [&]() -> net::awaitable<void> {
        auto [wait_ec] = co_await pair.server->async_wait_readable(tuple);
        REQUIRE_FALSE(wait_ec);
        error_code read_ec;
        std::size_t got = 0;
        REQUIRE(pair.server->read_some_now(net::buffer(space), got, read_ec));
        REQUIRE_FALSE(read_ec);
        REQUIRE(std::string(space.data(), got) == hello);
        // Two pieces go out at once as one record; a large one a record at a time, the rest
        // with an asynchronous write from where the immediate one stopped.
        const std::array<net::const_buffer, 2> pieces{net::buffer(hello.data(), 5),
                                                      net::buffer(hello.data() + 5, 5)};
        error_code write_ec;
        REQUIRE(pair.server->write_some_now(pieces, write_ec) == 10);
        REQUIRE_FALSE(write_ec);
        first_write = pair.server->write_some_now(net::buffer(big), write_ec);
        REQUIRE_FALSE(write_ec);
        REQUIRE(first_write > 0);
        auto [rest_ec, rest] =
            co_await net::async_write(*pair.server, net::buffer(big) + first_write, tuple);
        REQUIRE_FALSE(rest_ec);
        REQUIRE(first_write + rest == big.size());
      }());
  CHECK(first_write <= 16 * 1024);
  CHECK(received == hello + big);
}

TEST_CASE("reads that wait between the peer's writes get every byte, and wait again after",
          "[socket_stream]") {
  // Each wait follows a read that found the socket empty, the case in which the wait does not
  // re-arm the descriptor: bytes that came before it, or while it waited, must complete it.
  Pair pair;
  pair.handshake();
  constexpr int pieces = 200;
  std::string sent;
  for (int i = 0; i < pieces; ++i) sent += "piece-" + std::to_string(i) + ";";
  std::string got;
  int waits = 0;
  // The client goes on once the server has everything sent so far (the server cancels the
  // timer), so that the server's next read finds the socket empty and waits.
  std::size_t wanted = 0;
  int catch_ups = 0;
  net::steady_timer caught_up(pair.io, net::steady_timer::time_point::max());
  pair.run(
      [&]() -> net::awaitable<void> {
        std::array<char, 7> buf;  // smaller than a piece: some reads leave bytes in OpenSSL
        while (got.size() < sent.size()) {
          std::size_t n = 0;
          error_code ec;
          if (!pair.server->read_some_now(net::buffer(buf), n, ec)) {
            ++waits;
            std::tie(ec, n) = co_await pair.server->async_read_some(net::buffer(buf), tuple);
          }
          REQUIRE_FALSE(ec);
          got.append(buf.data(), n);
          if (wanted != 0 && got.size() >= wanted) {
            wanted = 0;
            caught_up.cancel();
          }
        }
        // Nothing more comes: the wait ends at its deadline, not at a stale readiness.
        pair.server->next_layer().expires_after(50ms);
        auto [ec] = co_await pair.server->async_wait_readable(tuple);
        CHECK(ec == boost::beast::error::timeout);
      }(),
      [&]() -> net::awaitable<void> {
        std::size_t written = 0;
        for (int i = 0; i < pieces; ++i) {
          const auto piece = "piece-" + std::to_string(i) + ";";
          auto [ec, n] = co_await net::async_write(*pair.client, net::buffer(piece), tuple);
          REQUIRE_FALSE(ec);
          written += n;
          // Every tenth piece, wait until the server has read up to here.
          if (i % 10 == 0 && got.size() < written) {
            ++catch_ups;
            wanted = written;
            caught_up.expires_at(net::steady_timer::time_point::max());
            co_await caught_up.async_wait(tuple);
          }
        }
      }());
  CHECK(got == sent);
  // Each catch-up leaves the server reading an empty socket, so it waits at least that often.
  CHECK(catch_ups > 0);
  CHECK(waits >= catch_ups);
}
