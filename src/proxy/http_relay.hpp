#pragma once
// Streams one HTTP message from a parser whose header has been read to a serializer, piece by
// piece through a fixed buffer (Beast's "relay" pattern), so bodies of any size pass in constant
// memory. Private to the proxy module.

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/stream_traits.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/beast/http/write.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <vector>

namespace portcullis::proxy {

struct RelayResult {
  boost::system::error_code read_error;   // from the side being read
  boost::system::error_code write_error;  // from the side being written
  std::uint64_t body_bytes = 0;
  bool header_written = false;
  explicit operator bool() const noexcept { return !read_error && !write_error; }
};

// Writes the (already transformed) header, then the body if `with_body`. `preread` is the
// number of body bytes already read into `chunk` (the first piece, read before forwarding).
// The first piece of the body, when it is at hand, goes out in the same write as the header.
template <class In, class Out, bool isRequest>
boost::asio::awaitable<RelayResult> relay_message(
    In& in, boost::beast::flat_buffer& in_buffer,
    boost::beast::http::parser<isRequest, boost::beast::http::buffer_body>& parser, Out& out,
    bool with_body, std::chrono::milliseconds read_timeout, std::chrono::milliseconds write_timeout,
    std::vector<char>& chunk, std::optional<std::size_t> preread = std::nullopt) {
  namespace http = boost::beast::http;
  using boost::asio::as_tuple;
  using boost::asio::use_awaitable;

  RelayResult result;
  http::serializer<isRequest, http::buffer_body> serializer{parser.get()};
  auto& body = parser.get().body();
  if (with_body && !preread && !parser.is_done() && in_buffer.size() != 0) {
    // Body bytes that arrived with the header go out with it: one write, one TLS record, one
    // send, instead of one for the header and one for the body.
    body.data = chunk.data();
    body.size = chunk.size();
    boost::system::error_code ec;
    while (in_buffer.size() != 0 && body.size != 0 && !parser.is_done()) {
      const auto used = parser.put(in_buffer.data(), ec);
      in_buffer.consume(used);
      if (ec == http::error::need_buffer || ec == http::error::need_more) {
        ec = {};
        break;
      }
      if (ec || used == 0) break;
    }
    if (ec) {
      result.read_error = ec;
      co_return result;
    }
    preread = chunk.size() - body.size;
  }
  if (!with_body || (!preread && !parser.is_done())) {
    // Nothing of the body is here yet: the header goes first, so that the other side sees it
    // before a slow body.
    boost::beast::get_lowest_layer(out).expires_after(write_timeout);
    auto [header_ec, header_n] =
        co_await http::async_write_header(out, serializer, as_tuple(use_awaitable));
    if (header_ec) {
      result.write_error = header_ec;
      co_return result;
    }
    result.header_written = true;
    if (!with_body) co_return result;
  }

  do {
    if (preread) {
      body.data = *preread ? chunk.data() : nullptr;
      body.size = *preread;
      body.more = !parser.is_done();
      preread.reset();
    } else if (!parser.is_done()) {
      body.data = chunk.data();
      body.size = chunk.size();
      boost::beast::get_lowest_layer(in).expires_after(read_timeout);
      auto [read_ec, read_n] =
          co_await http::async_read(in, in_buffer, parser, as_tuple(use_awaitable));
      if (read_ec == http::error::need_buffer) read_ec = {};
      if (read_ec) {
        result.read_error = read_ec;
        co_return result;
      }
      body.size = chunk.size() - body.size;
      body.data = chunk.data();
      body.more = !parser.is_done();
    } else {
      body.data = nullptr;
      body.size = 0;
      body.more = false;
    }
    result.body_bytes += body.size;
    boost::beast::get_lowest_layer(out).expires_after(write_timeout);
    auto [write_ec, write_n] = co_await http::async_write(out, serializer, as_tuple(use_awaitable));
    if (write_ec == http::error::need_buffer) write_ec = {};
    if (write_ec) {
      result.write_error = write_ec;
      co_return result;
    }
    result.header_written = true;
  } while (!parser.is_done() || !serializer.is_done());
  co_return result;
}

}  // namespace portcullis::proxy
