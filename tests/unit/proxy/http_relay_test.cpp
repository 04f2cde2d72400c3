#include "../../../src/proxy/http_relay.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/message.hpp>
#include <catch2/catch.hpp>

namespace http = boost::beast::http;
using portcullis::proxy::serialize_header;

namespace {

// What Beast's own serializer writes for the same header.
template <bool isRequest>
std::string beast_header(const http::header<isRequest>& h) {
  http::message<isRequest, http::empty_body> message(h);
  http::serializer<isRequest, http::empty_body> serializer(message);
  serializer.split(true);
  std::string out;
  boost::system::error_code ec;
  while (!serializer.is_header_done()) {
    serializer.next(ec, [&](boost::system::error_code&, const auto& buffers) {
      out += boost::beast::buffers_to_string(buffers);
      serializer.consume(boost::asio::buffer_size(buffers));
    });
    REQUIRE_FALSE(ec);
  }
  return out;
}

}  // namespace

TEST_CASE("the relayed header is byte for byte what Beast's serializer writes", "[http_relay]") {
  SECTION("requests, known and unknown methods, both versions") {
    http::request_header<> req;
    req.method(http::verb::get);
    req.target("/a/b?c=d%20e");
    req.version(11);
    req.set(http::field::host, "api.example");
    req.insert("X-Client-Cert-Subject", "CN=client,O=Example");
    req.insert("x-custom", "");
    req.insert("X-Repeated", "one");
    req.insert("X-Repeated", "two");
    CHECK(serialize_header(req) == beast_header(req));
    req.method_string("PURGE");
    req.version(10);
    CHECK(serialize_header(req) == beast_header(req));
  }
  SECTION("responses, with the upstream's reason or the standard one") {
    http::response_header<> res;
    res.result(http::status::ok);
    res.version(11);
    res.set(http::field::content_length, "1024");
    res.set(http::field::content_type, "application/octet-stream");
    CHECK(serialize_header(res) == beast_header(res));
    CHECK(serialize_header(res).starts_with("HTTP/1.1 200 OK\r\n"));
    res.reason("Fine Thanks");
    res.result(299);
    res.version(10);
    CHECK(serialize_header(res) == beast_header(res));
    CHECK(serialize_header(res).starts_with("HTTP/1.0 299 Fine Thanks\r\n"));
    res.reason("");
    res.result(http::status::not_found);
    CHECK(serialize_header(res) == beast_header(res));
    CHECK(serialize_header(res).ends_with("\r\n\r\n"));
  }
}

TEST_CASE("added header lines are written as if they were the last fields", "[http_relay]") {
  http::request_header<> req;
  req.method(http::verb::get);
  req.target("/");
  req.version(11);
  req.set(http::field::host, "api.example");
  const std::string lines = "X-Forwarded-For: 127.0.0.1\r\nX-Client-Cert-Subject: CN=a\r\n";
  const auto with_lines = serialize_header(req, lines);
  portcullis::proxy::insert_header_lines(req, lines);
  CHECK(with_lines == beast_header(req));
  CHECK(with_lines == serialize_header(req));
}

namespace {

namespace net = boost::asio;
using net::ip::tcp;

// A stream over a gateway-side socket that records the size of every write the relay makes,
// and before which write the relay asked to hold the last one for the close (close_after_this).
struct CountingStream {
  boost::beast::tcp_stream& stream;
  std::vector<std::size_t>& writes;
  std::vector<std::size_t>& holds;

  void close_after_this() { holds.push_back(writes.size()); }

  using executor_type = boost::beast::tcp_stream::executor_type;
  using next_layer_type = boost::beast::tcp_stream;
  executor_type get_executor() { return stream.get_executor(); }
  next_layer_type& next_layer() { return stream; }
  template <class Buffers, class Handler>
  auto async_write_some(const Buffers& buffers, Handler&& handler) {
    writes.push_back(net::buffer_size(buffers));
    return stream.async_write_some(buffers, std::forward<Handler>(handler));
  }
  template <class Buffers, class Handler>
  auto async_read_some(const Buffers& buffers, Handler&& handler) {
    return stream.async_read_some(buffers, std::forward<Handler>(handler));
  }
};

std::pair<tcp::socket, tcp::socket> connected_pair(net::io_context& io) {
  tcp::acceptor acceptor(io, {net::ip::address_v4::loopback(), 0});
  tcp::socket a(io), b(io);
  a.connect(acceptor.local_endpoint());
  acceptor.accept(b);
  return {std::move(a), std::move(b)};
}

struct RelayRun {
  std::vector<std::size_t> writes;   // what the relay wrote to the client, write by write
  std::vector<std::size_t> holds;    // close_after_this, by the number of writes made before
  std::size_t held_before_body = 0;  // bytes the client had when the body was about to go
  portcullis::proxy::RelayResult result;
  std::string received;  // all the client got
};

// An upstream writes `head`, then `body` (or closes, when `body` is empty) once the client has
// received something or 50 ms have passed; the relay forwards the response to the client.
RelayRun relay_response(const std::string& head, const std::string& body,
                        portcullis::proxy::SmallBody small_body, std::size_t chunk_size = 1024,
                        bool closes_after = false) {
  net::io_context io;
  auto [upstream, gateway_in] = connected_pair(io);
  auto [gateway_out, client] = connected_pair(io);
  boost::beast::tcp_stream in(std::move(gateway_in));
  boost::beast::tcp_stream out_stream(std::move(gateway_out));
  RelayRun run;
  CountingStream out{out_stream, run.writes, run.holds};

  net::co_spawn(
      io,
      [&]() -> net::awaitable<void> {
        co_await net::async_write(upstream, net::buffer(head), net::use_awaitable);
        // The body follows once the client has something, or after 50 ms of nothing: the
        // bound on how long a held header is watched for.
        using namespace boost::asio::experimental::awaitable_operators;
        net::steady_timer watch(io, std::chrono::milliseconds(50));
        co_await (client.async_wait(tcp::socket::wait_read, net::use_awaitable) ||
                  watch.async_wait(net::use_awaitable));
        run.held_before_body = client.available();
        if (body.empty()) {
          upstream.close();
        } else {
          co_await net::async_write(upstream, net::buffer(body), net::use_awaitable);
        }
      },
      net::detached);
  net::co_spawn(
      io,
      [&]() -> net::awaitable<void> {
        boost::beast::flat_buffer buffer;
        http::response_parser<http::buffer_body> parser;
        co_await http::async_read_header(in, buffer, parser, net::use_awaitable);
        std::vector<char> chunk(chunk_size);
        run.result = co_await portcullis::proxy::relay_message(
            in, buffer, parser, out, true, std::chrono::seconds(5), std::chrono::seconds(5), chunk,
            std::nullopt, {}, small_body, closes_after);
        out_stream.socket().shutdown(tcp::socket::shutdown_send);
      },
      net::detached);
  io.run();
  boost::system::error_code ec;
  std::array<char, 4096> buf;
  while (const auto n = client.read_some(net::buffer(buf), ec)) run.received.append(buf.data(), n);
  return run;
}

}  // namespace

TEST_CASE("a small response's header waits for its body's first bytes", "[http_relay]") {
  using portcullis::proxy::SmallBody;
  const std::string head = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
  SECTION("with_the_header: one write, nothing sent before the body came") {
    const auto run = relay_response(head, "hello", SmallBody::with_the_header);
    CHECK(run.result);
    CHECK(run.held_before_body == 0);
    CHECK(run.writes == std::vector<std::size_t>{head.size() + 5});
    CHECK(run.received == head + "hello");
  }
  SECTION("header_first: the header goes at once, the body after it") {
    const auto run = relay_response(head, "hello", SmallBody::header_first);
    CHECK(run.result);
    CHECK(run.held_before_body == head.size());
    CHECK(run.writes == std::vector<std::size_t>{head.size(), 5});
    CHECK(run.received == head + "hello");
  }
  SECTION("a body larger than one piece: the header goes first whatever the setting") {
    const std::string big_head = "HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n";
    const auto run =
        relay_response(big_head, std::string(2000, 'x'), SmallBody::with_the_header, 1024);
    CHECK(run.result);
    CHECK(run.held_before_body == big_head.size());
    REQUIRE_FALSE(run.writes.empty());
    CHECK(run.writes.front() == big_head.size());
    CHECK(run.received == big_head + std::string(2000, 'x'));
  }
  SECTION("closing after it: only the last write is held for the close_notify") {
    const auto small = relay_response(head, "hello", SmallBody::with_the_header, 1024, true);
    CHECK(small.holds == std::vector<std::size_t>{0});
    CHECK(small.received == head + "hello");
    const std::string big_head = "HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n";
    const auto big =
        relay_response(big_head, std::string(2000, 'x'), SmallBody::with_the_header, 1024, true);
    REQUIRE(big.writes.size() >= 2);
    CHECK(big.holds == std::vector<std::size_t>{big.writes.size() - 1});
    CHECK(big.received == big_head + std::string(2000, 'x'));
    CHECK(relay_response(head, "hello", SmallBody::with_the_header).holds.empty());
  }
  SECTION("an upstream that closes before the body: nothing went out, so the caller can answer") {
    const auto run = relay_response(head, "", SmallBody::with_the_header);
    CHECK(run.result.read_error);
    CHECK_FALSE(run.result.header_written);
    CHECK(run.writes.empty());
    CHECK(run.received.empty());
  }
}
