#pragma once
// A TLS stream that runs OpenSSL on the socket itself, as NGINX and HAProxy do: a small BIO
// hands OpenSSL the non-blocking descriptor, and the stream waits for readiness through Asio
// only when OpenSSL asks for it. Against Asio's ssl::stream it keeps no record buffers of its own
// and no BIO pair (two 17 KiB buffers and a 2 x 17 KiB pair per connection), and no record is
// copied between buffers on its way: with SSL_MODE_RELEASE_BUFFERS an idle connection holds only
// OpenSSL's connection state.
//
// Timeouts work as with Beast's tcp_stream: expires_after() sets a deadline for the waits of
// every operation until it is changed; when it passes during one, the socket is closed and the
// operation ends with beast::error::timeout. Changing it while an operation waits takes effect
// at once (Worker::drain_idle ends idle connections that way). socket().cancel() ends waiting
// operations with operation_aborted and leaves the connection usable.
//
// Errors are those Asio's ssl::stream reports: net::error::eof after the peer's close_notify,
// ssl::error::stream_truncated for a transport closed without one, OpenSSL's error codes in
// net::error::get_ssl_category(), and the socket's errors (connection_reset, broken_pipe).
// Thread-safety: as a socket; one read and one write may be outstanding at once, from the
// thread that runs the socket's executor.

#include "portcullis/tls/edge_wait.hpp"

#include <openssl/ssl.h>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/bind_allocator.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/compose.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/stream_base.hpp>
#include <boost/asio/steady_timer.hpp>

#include <array>
#include <chrono>
#include <cstddef>
#include <memory>
#include <type_traits>

namespace portcullis::tls {

// For the operations a connection keeps pending while idle. Asio gives a handler that has no
// allocator of its own a block recycled from earlier operations, which may be twice the size of
// the operation; this one allocates exactly what the operation needs.
template <class T>
struct ExactAllocator {
  using value_type = T;
  ExactAllocator() = default;
  template <class U>
  ExactAllocator(const ExactAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) { return std::allocator<T>().allocate(n); }
  void deallocate(T* p, std::size_t n) noexcept { std::allocator<T>().deallocate(p, n); }
  friend bool operator==(const ExactAllocator&, const ExactAllocator&) noexcept { return true; }
};

// A TCP socket with a Beast-style deadline for the waits of the TLS stream above it.
class TimedSocket {
 public:
  using executor_type = boost::asio::any_io_executor;
  using clock = std::chrono::steady_clock;

  explicit TimedSocket(boost::asio::ip::tcp::socket socket);
  ~TimedSocket();
  TimedSocket(const TimedSocket&) = delete;
  TimedSocket& operator=(const TimedSocket&) = delete;

  executor_type get_executor() noexcept;
  boost::asio::ip::tcp::socket& socket() noexcept;
  void expires_after(clock::duration after);
  void expires_never();
  void close();

  // Used by the stream's operations around each readiness wait: begin_wait makes the deadline
  // apply, end_wait turns an abort the deadline caused into beast::error::timeout.
  void begin_wait(boost::asio::socket_base::wait_type direction);
  void end_wait(boost::asio::socket_base::wait_type direction, boost::system::error_code& ec);

  // Set by the stream's BIO after each read from the socket: whether it found the socket empty
  // (the read would have blocked, or returned less than asked).
  void note_read(bool found_empty) noexcept { found_empty_ = found_empty; }

  // While set, the stream's BIO sends with MSG_MORE: the kernel holds a partial segment until
  // a send without it (see SocketStream::close_after_this).
  void hold_partial_segments(bool hold) noexcept { hold_partial_ = hold; }
  bool holds_partial_segments() const noexcept { return hold_partial_; }

  // As socket().async_wait, but a read wait that follows a read which found the socket empty
  // (and none since the last such wait) does not re-arm the descriptor (edge_wait.hpp).
  template <class Handler>
  void async_wait(boost::asio::socket_base::wait_type direction, Handler&& handler) {
#if PORTCULLIS_EDGE_READ_WAIT
    if (direction == boost::asio::socket_base::wait_read && found_empty_) {
      found_empty_ = false;
      edge_read_wait(socket(), *reactor_, std::forward<Handler>(handler));
      return;
    }
#endif
    socket().async_wait(direction, std::forward<Handler>(handler));
  }

 private:
  struct State;
  // Makes sure the timer fires no later than the deadline while a wait is outstanding.
  static void arm(const std::shared_ptr<State>& state);
  // Shared with the deadline's timer handlers, which may run after the socket is gone.
  std::shared_ptr<State> state_;
#if PORTCULLIS_EDGE_READ_WAIT
  boost::asio::detail::epoll_reactor* reactor_;
#endif
  bool found_empty_ = false;
  bool hold_partial_ = false;
};

class SocketStream {
 public:
  using executor_type = boost::asio::any_io_executor;
  using next_layer_type = TimedSocket;
  using lowest_layer_type = TimedSocket;
  enum class Want { nothing, read, write };

  // The socket is made non-blocking and handed to a new SSL object of `context`.
  SocketStream(boost::asio::ip::tcp::socket socket, boost::asio::ssl::context& context);
  ~SocketStream();
  SocketStream(const SocketStream&) = delete;
  SocketStream& operator=(const SocketStream&) = delete;

  executor_type get_executor() noexcept { return next_.get_executor(); }
  TimedSocket& next_layer() noexcept { return next_; }
  TimedSocket& lowest_layer() noexcept { return next_; }
  SSL* native_handle() noexcept { return ssl_; }

  template <class Token>
  auto async_handshake(boost::asio::ssl::stream_base::handshake_type type, Token&& token) {
    return run<false>([type](SocketStream& s, boost::system::error_code& ec,
                             std::size_t&) { return s.handshake_step(type, ec); },
                      std::forward<Token>(token));
  }

  // Sends close_notify and waits for the peer's (as Asio's ssl::stream does), so that the
  // socket is not closed on unread bytes, which would reset the connection under the response.
  template <class Token>
  auto async_shutdown(Token&& token) {
    return run<false>([](SocketStream& s, boost::system::error_code& ec,
                         std::size_t&) { return s.shutdown_step(ec, true); },
                      std::forward<Token>(token));
  }

  // The writes from here on end with our close_notify (async_shutdown or async_close_notify,
  // which must follow at once): their last partial segment waits in the kernel and leaves with
  // the close_notify, one segment where there were two. Only for writes that complete without
  // waiting on anything else, such as a whole small response: a held tail waits for the next
  // send.
  void close_after_this() noexcept { next_.hold_partial_segments(true); }

  // Sends close_notify without waiting for the peer's (RFC 8446 6.1 allows closing then).
  template <class Token>
  auto async_close_notify(Token&& token) {
    return run<false>([](SocketStream& s, boost::system::error_code& ec,
                         std::size_t&) { return s.shutdown_step(ec, false); },
                      std::forward<Token>(token));
  }

  // Completes when a read would find something: bytes already inside OpenSSL, or the socket
  // readable. Lets an idle connection wait without holding a read buffer.
  template <class Token>
  auto async_wait_readable(Token&& token) {
    return run<false>(
        [waited = false](SocketStream& s, boost::system::error_code&, std::size_t&) mutable {
          if (waited || SSL_has_pending(s.ssl_) == 1) return Want::nothing;
          waited = true;
          return Want::read;
        },
        std::forward<Token>(token));
  }

  // As async_wait_readable, for a plain callback `void(error_code)`: no composed operation
  // or work guard around it, the smallest wait an idle connection can be left in. The
  // callback may own this stream.
  template <class Handler>
  void wait_readable(Handler handler) {
    if (SSL_has_pending(ssl_) == 1) {
      boost::asio::post(get_executor(), [handler = std::move(handler)]() mutable {
        std::move(handler)(boost::system::error_code{});
      });
      return;
    }
    next_.begin_wait(boost::asio::socket_base::wait_read);
    next_.async_wait(boost::asio::socket_base::wait_read,
                     boost::asio::bind_allocator(
                         ExactAllocator<void>(), [this, handler = std::move(handler)](
                                                     boost::system::error_code ec) mutable {
                           next_.end_wait(boost::asio::socket_base::wait_read, ec);
                           std::move(handler)(ec);
                         }));
  }

  template <class MutableBuffers, class Token>
  auto async_read_some(const MutableBuffers& buffers, Token&& token) {
    return run<true>(
        [buffers](SocketStream& s, boost::system::error_code& ec, std::size_t& n) {
          for (auto it = boost::asio::buffer_sequence_begin(buffers);
               it != boost::asio::buffer_sequence_end(buffers); ++it) {
            const boost::asio::mutable_buffer b = *it;
            if (b.size() != 0) return s.read_step(b.data(), b.size(), n, ec);
          }
          n = 0;
          return Want::nothing;
        },
        std::forward<Token>(token));
  }

  // Several small buffers (a header and a body piece) go out as one record.
  template <class ConstBuffers, class Token>
  auto async_write_some(const ConstBuffers& buffers, Token&& token) {
    return run<true>([buffers](SocketStream& s, boost::system::error_code& ec,
                               std::size_t& n) { return s.write_buffers_step(buffers, n, ec); },
                     std::forward<Token>(token));
  }

  // The same read and write attempted at once, without waiting and without the trip through
  // the executor that an asynchronous operation takes even when it needs no wait.
  // read_some_now is false when the read would have to wait (nothing was read; use
  // async_read_some), else true with the bytes in `n` or the error in `ec`.
  bool read_some_now(boost::asio::mutable_buffer buffer, std::size_t& n,
                     boost::system::error_code& ec) {
    n = 0;
    if (buffer.size() == 0) return true;
    return read_step(buffer.data(), buffer.size(), n, ec) == Want::nothing;
  }
  // The bytes written at once (at most a record's worth), or 0 with `ec` set. Whatever is left,
  // starting from there, goes with async_write_some.
  template <class ConstBuffers>
  std::size_t write_some_now(const ConstBuffers& buffers, boost::system::error_code& ec) {
    std::size_t n = 0;
    if (write_buffers_step(buffers, n, ec) != Want::nothing) n = 0;
    return n;
  }

  // One step of OpenSSL on the socket, and what it needs before it can go on. Public for the
  // operations above; not for callers.
  Want handshake_step(boost::asio::ssl::stream_base::handshake_type type,
                      boost::system::error_code& ec);
  Want shutdown_step(boost::system::error_code& ec, bool await_peer);
  Want read_step(void* data, std::size_t size, std::size_t& n, boost::system::error_code& ec);
  Want write_step(const void* data, std::size_t size, std::size_t& n,
                  boost::system::error_code& ec);

 private:
  // One TLS record's worth of plaintext.
  static constexpr std::size_t coalesce_limit = 16 * 1024;

  template <class ConstBuffers>
  Want write_buffers_step(const ConstBuffers& buffers, std::size_t& n,
                          boost::system::error_code& ec) {
    auto it = boost::asio::buffer_sequence_begin(buffers);
    const auto end = boost::asio::buffer_sequence_end(buffers);
    while (it != end && boost::asio::const_buffer(*it).size() == 0) ++it;
    if (it == end) {
      n = 0;
      return Want::nothing;
    }
    const boost::asio::const_buffer first = *it;
    auto next = it;
    ++next;
    while (next != end && boost::asio::const_buffer(*next).size() == 0) ++next;
    if (next == end || first.size() >= coalesce_limit)
      return write_step(first.data(), first.size(), n, ec);
    // Copied again at every retry from the caller's buffers, which stay valid until the
    // operation completes, so the scratch may serve other connections in between.
    auto& scratch = write_scratch();
    const auto size = boost::asio::buffer_copy(boost::asio::buffer(scratch), buffers);
    return write_step(scratch.data(), size, n, ec);
  }
  static std::array<char, coalesce_limit>& write_scratch();

  Want outcome(int result, boost::system::error_code& ec);

  // Runs `step` until it needs nothing more, waiting for the socket in between. A step that
  // finishes at once still completes through the executor, never inside the initiating call.
  template <bool WithSize, class Step>
  struct Op {
    Op(SocketStream& s, Step st) : stream(s), step(std::move(st)) {}

    SocketStream& stream;
    Step step;
    enum class Phase { start, waiting, posted } phase = Phase::start;
    boost::asio::socket_base::wait_type direction = boost::asio::socket_base::wait_read;
    boost::system::error_code result;
    std::size_t transferred = 0;

    template <class Self>
    void operator()(Self& self, boost::system::error_code ec = {}) {
      if (phase == Phase::posted) return finish(self);
      if (phase == Phase::waiting) {
        stream.next_.end_wait(direction, ec);
        if (ec) {
          result = ec;
          transferred = 0;
          return finish(self);
        }
      }
      result = {};
      transferred = 0;
      const auto want = step(stream, result, transferred);
      if (want == Want::nothing) {
        if (phase == Phase::waiting) return finish(self);
        phase = Phase::posted;
        return boost::asio::post(stream.get_executor(), std::move(self));
      }
      phase = Phase::waiting;
      direction = want == Want::read ? boost::asio::socket_base::wait_read
                                     : boost::asio::socket_base::wait_write;
      stream.next_.begin_wait(direction);
      stream.next_.async_wait(direction, std::move(self));
    }

    template <class Self>
    void finish(Self& self) {
      if constexpr (WithSize) {
        self.complete(result, transferred);
      } else {
        self.complete(result);
      }
    }
  };

  template <bool WithSize, class Step, class Token>
  auto run(Step&& step, Token&& token) {
    using Signature = std::conditional_t<WithSize, void(boost::system::error_code, std::size_t),
                                         void(boost::system::error_code)>;
    return boost::asio::async_compose<Token, Signature>(
        Op<WithSize, std::decay_t<Step>>(*this, std::forward<Step>(step)), token, next_.socket());
  }

  TimedSocket next_;
  SSL* ssl_ = nullptr;
};

}  // namespace portcullis::tls
