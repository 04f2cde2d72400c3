#pragma once
// Streams one HTTP message from a parser whose header has been read to a serializer, piece by
// piece through a fixed buffer (Beast's "relay" pattern), so bodies of any size pass in constant
// memory. Private to the proxy module.

#include "portcullis/proxy/request_rules.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/buffers_suffix.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/stream_traits.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/beast/http/write.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

namespace portcullis::proxy {

struct RelayResult {
  boost::system::error_code read_error;   // from the side being read
  boost::system::error_code write_error;  // from the side being written
  std::uint64_t body_bytes = 0;
  bool header_written = false;
  explicit operator bool() const noexcept { return !read_error && !write_error; }
};

// The header as Beast's serializer writes it (start line, fields, blank line), in one piece:
// iterating the serializer's buffer sequence of one buffer per field cost more than the copy.
// `added_lines` (serialized fields, see header_lines) go after the header's own fields.
template <bool isRequest, class Fields>
std::string serialize_header(const boost::beast::http::header<isRequest, Fields>& h,
                             std::string_view added_lines = {}) {
  std::string out;
  out.reserve(512 + added_lines.size());
  const auto version = h.version();
  const char v[] = {static_cast<char>('0' + version / 10), '.',
                    static_cast<char>('0' + version % 10)};
  if constexpr (isRequest) {
    out.append(h.method_string()).append(" ").append(h.target()).append(" HTTP/");
    out.append(v, sizeof(v)).append("\r\n");
  } else {
    const auto code = h.result_int();
    const char status[] = {' ', static_cast<char>('0' + code / 100),
                           static_cast<char>('0' + (code / 10) % 10),
                           static_cast<char>('0' + code % 10), ' '};
    out.append("HTTP/").append(v, sizeof(v)).append(status, sizeof(status));
    const auto reason = h.reason();
    out.append(reason.empty() ? boost::beast::http::obsolete_reason(h.result()) : reason);
    out.append("\r\n");
  }
  for (const auto& field : h) {
    out.append(field.name_string()).append(": ").append(field.value()).append("\r\n");
  }
  out.append(added_lines).append("\r\n");
  return out;
}

// Writes to `out` what it takes at once, when the stream can say (a completed asynchronous
// write still takes a trip through the executor): the bytes written, or 0 with `ec` set. The
// rest goes with an asynchronous write.
template <class Out, class ConstBuffers>
std::size_t write_now(Out& out, const ConstBuffers& buffers, boost::system::error_code& ec) {
  if constexpr (requires { out.write_some_now(buffers, ec); }) {
    return out.write_some_now(buffers, ec);
  } else {
    return 0;
  }
}

// Reads the next piece of the body into `chunk`: the error, and how many bytes it holds.
template <class In, bool isRequest>
boost::asio::awaitable<std::pair<boost::system::error_code, std::size_t>> read_body_piece(
    In& in, boost::beast::flat_buffer& in_buffer,
    boost::beast::http::parser<isRequest, boost::beast::http::buffer_body>& parser,
    std::vector<char>& chunk, std::chrono::milliseconds read_timeout) {
  namespace http = boost::beast::http;
  auto& body = parser.get().body();
  body.data = chunk.data();
  body.size = chunk.size();
  boost::beast::get_lowest_layer(in).expires_after(read_timeout);
  auto [ec, n] = co_await http::async_read(in, in_buffer, parser,
                                           boost::asio::as_tuple(boost::asio::use_awaitable));
  if (ec == http::error::need_buffer) ec = {};
  co_return std::pair{ec, ec ? 0 : chunk.size() - body.size};
}

// How the header of a message with a Content-Length body that fits in one piece goes out when
// none of the body has arrived with it.
enum class SmallBody {
  header_first,    // at once, and the body after it
  with_the_header  // with the body's first bytes, once they are read: one TLS record, not two
};

// Writes the (already transformed) header, then the body if `with_body`. `preread` is the
// number of body bytes already read into `chunk` (the first piece, read before forwarding).
// The first piece of the body, when it is at hand, goes out in the same write as the header.
// `added_lines` (serialized fields, see header_lines) go out after the header's own fields.
// `closes_after`: the connection closes once this message is out; its last write (of a message
// not chunked on the way out) is held to leave with the close_notify (close_after_this, for an
// `out` that has it).
template <class In, class Out, bool isRequest>
boost::asio::awaitable<RelayResult> relay_message(
    In& in, boost::beast::flat_buffer& in_buffer,
    boost::beast::http::parser<isRequest, boost::beast::http::buffer_body>& parser, Out& out,
    bool with_body, std::chrono::milliseconds read_timeout, std::chrono::milliseconds write_timeout,
    std::vector<char>& chunk, std::optional<std::size_t> preread = std::nullopt,
    std::string_view added_lines = {}, SmallBody small_body = SmallBody::header_first,
    bool closes_after = false) {
  namespace http = boost::beast::http;
  using boost::asio::as_tuple;
  using boost::asio::use_awaitable;

  RelayResult result;
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
  if (!parser.get().chunked()) {
    // Not chunked on the way out (so not on the way in either): the body goes as it came.
    const auto head = serialize_header(parser.get(), added_lines);
    std::size_t piece = with_body && preread ? *preread : 0;
    preread.reset();
    const auto length = parser.content_length();
    if (small_body == SmallBody::with_the_header && with_body && piece == 0 && !parser.is_done() &&
        length && *length <= chunk.size()) {
      // An upstream that writes its header and its body apart would otherwise cost the client
      // two records, two segments and an extra ACK for a small response.
      while (piece == 0 && !parser.is_done()) {
        std::tie(result.read_error, piece) =
            co_await read_body_piece(in, in_buffer, parser, chunk, read_timeout);
        if (result.read_error) co_return result;
      }
    }
    for (bool first = true; first || (with_body && !parser.is_done()); first = false) {
      if (!first) {
        std::tie(result.read_error, piece) =
            co_await read_body_piece(in, in_buffer, parser, chunk, read_timeout);
        if (result.read_error) co_return result;
        if (piece == 0) continue;
      }
      // The header goes with the first piece of the body at hand: one write, one TLS record.
      const std::array<boost::asio::const_buffer, 2> pieces{
          first ? boost::asio::buffer(head) : boost::asio::const_buffer(),
          boost::asio::buffer(chunk.data(), piece)};
      if constexpr (requires { out.close_after_this(); }) {
        if (closes_after && (!with_body || parser.is_done())) out.close_after_this();
      }
      boost::beast::get_lowest_layer(out).expires_after(write_timeout);
      boost::system::error_code write_ec;
      const auto now = write_now(out, pieces, write_ec);
      if (!write_ec && now < boost::asio::buffer_size(pieces)) {
        boost::beast::buffers_suffix<std::array<boost::asio::const_buffer, 2>> rest(pieces);
        rest.consume(now);
        std::tie(write_ec, std::ignore) =
            co_await boost::asio::async_write(out, rest, as_tuple(use_awaitable));
      }
      if (write_ec) {
        result.write_error = write_ec;
        co_return result;
      }
      result.header_written = true;
      result.body_bytes += piece;
    }
    co_return result;
  }

  // Beast's serializer frames the chunks, and writes the header from the fields.
  insert_header_lines(parser.get(), added_lines);
  http::serializer<isRequest, http::buffer_body> serializer{parser.get()};
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
      std::tie(result.read_error, body.size) =
          co_await read_body_piece(in, in_buffer, parser, chunk, read_timeout);
      if (result.read_error) co_return result;
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
