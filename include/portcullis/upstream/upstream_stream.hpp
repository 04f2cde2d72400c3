#pragma once
// A connection to an upstream endpoint, plain TCP or TLS, usable wherever Beast wants an
// AsyncReadStream / AsyncWriteStream (http::async_read, relay_message, net::async_write).
// beast::get_lowest_layer reaches the tcp_stream underneath either kind, for deadlines and
// socket options.
// Thread-safety: none, like the streams it holds.

#include <boost/asio/async_result.hpp>
#include <boost/asio/error.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

#include <utility>
#include <variant>

namespace portcullis::upstream {

class UpstreamStream {
 public:
  using TlsStream = boost::beast::ssl_stream<boost::beast::tcp_stream>;
  using executor_type = boost::beast::tcp_stream::executor_type;

  explicit UpstreamStream(boost::beast::tcp_stream plain) : stream_(std::move(plain)) {}
  explicit UpstreamStream(TlsStream tls) : stream_(std::move(tls)) {}

  executor_type get_executor() noexcept { return next_layer().get_executor(); }

  // The TCP stream, under TLS or not (this is what beast::get_lowest_layer follows).
  boost::beast::tcp_stream& next_layer() noexcept {
    if (auto* plain = std::get_if<boost::beast::tcp_stream>(&stream_)) return *plain;
    return std::get<TlsStream>(stream_).next_layer();
  }

  bool is_tls() const noexcept { return std::holds_alternative<TlsStream>(stream_); }

  template <class MutableBufferSequence, class ReadToken>
  auto async_read_some(const MutableBufferSequence& buffers, ReadToken&& token) {
    return boost::asio::async_initiate<ReadToken, void(boost::system::error_code, std::size_t)>(
        [this](auto handler, const MutableBufferSequence& b) {
          if (auto* plain = std::get_if<boost::beast::tcp_stream>(&stream_)) {
            plain->async_read_some(b, std::move(handler));
          } else {
            std::get<TlsStream>(stream_).async_read_some(b, std::move(handler));
          }
        },
        token, buffers);
  }

  template <class ConstBufferSequence, class WriteToken>
  auto async_write_some(const ConstBufferSequence& buffers, WriteToken&& token) {
    return boost::asio::async_initiate<WriteToken, void(boost::system::error_code, std::size_t)>(
        [this](auto handler, const ConstBufferSequence& b) {
          if (auto* plain = std::get_if<boost::beast::tcp_stream>(&stream_)) {
            plain->async_write_some(b, std::move(handler));
          } else {
            std::get<TlsStream>(stream_).async_write_some(b, std::move(handler));
          }
        },
        token, buffers);
  }

  // Sends what the socket takes at once, without waiting (plain TCP only; over TLS nothing is
  // sent here): the bytes sent, or 0 with `ec` set. The rest goes with async_write_some.
  template <class ConstBufferSequence>
  std::size_t write_some_now(const ConstBufferSequence& buffers, boost::system::error_code& ec) {
    auto* plain = std::get_if<boost::beast::tcp_stream>(&stream_);
    if (!plain) return 0;
    auto& socket = plain->socket();
    if (!socket.non_blocking()) {
      socket.non_blocking(true, ec);
      if (ec) return 0;
    }
    const auto n = socket.write_some(buffers, ec);
    if (ec == boost::asio::error::would_block || ec == boost::asio::error::try_again) ec = {};
    return n;
  }

 private:
  std::variant<boost::beast::tcp_stream, TlsStream> stream_;
};

}  // namespace portcullis::upstream
