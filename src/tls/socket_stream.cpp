#include "portcullis/tls/socket_stream.hpp"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <boost/asio/ssl/error.hpp>
#include <boost/beast/core/error.hpp>

#include <sys/socket.h>
#include <cerrno>
#include <stdexcept>

namespace portcullis::tls {

namespace net = boost::asio;
using tcp = net::ip::tcp;

namespace {

// The errno of the socket call that made the last step fail, for SSL_ERROR_SYSCALL. Steps run
// on one thread, and each resets it before calling into OpenSSL.
thread_local int last_socket_errno = 0;

// The descriptor is looked up at every call: after a timeout has closed the socket its number
// may already belong to another connection, and OpenSSL must not write there.
int descriptor_of(BIO* bio) {
  BIO_clear_retry_flags(bio);
  auto* timed = static_cast<TimedSocket*>(BIO_get_data(bio));
  if (timed == nullptr || !timed->socket().is_open()) {
    last_socket_errno = EBADF;
    return -1;
  }
  return timed->socket().native_handle();
}

// After a failed send or recv: an empty (or full) socket is a retry, anything else an error.
void note_failure(BIO* bio, bool reading) {
  if (errno != EAGAIN && errno != EWOULDBLOCK) {
    last_socket_errno = errno;
  } else if (reading) {
    BIO_set_retry_read(bio);
  } else {
    BIO_set_retry_write(bio);
  }
}

int socket_bio_write(BIO* bio, const char* data, std::size_t size, std::size_t* written) {
  const int fd = descriptor_of(bio);
  if (fd < 0) return 0;
  const auto* timed = static_cast<const TimedSocket*>(BIO_get_data(bio));
  // MSG_NOSIGNAL: a peer that has gone away is an EPIPE for this connection, not a SIGPIPE for
  // the process.
  const int flags = MSG_NOSIGNAL | (timed->holds_partial_segments() ? MSG_MORE : 0);
  ssize_t n;
  do {
    n = ::send(fd, data, size, flags);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    note_failure(bio, false);
    return 0;
  }
  *written = static_cast<std::size_t>(n);
  return 1;
}

int socket_bio_read(BIO* bio, char* data, std::size_t size, std::size_t* read) {
  const int fd = descriptor_of(bio);
  if (fd < 0) return 0;
  ssize_t n;
  do {
    n = ::recv(fd, data, size, 0);
  } while (n < 0 && errno == EINTR);
  auto* timed = static_cast<TimedSocket*>(BIO_get_data(bio));
  if (n < 0) {
    timed->note_read(errno == EAGAIN || errno == EWOULDBLOCK);
    note_failure(bio, true);
    return 0;
  }
  // Less than asked: the socket's receive queue was emptied, as Asio's reactor reads it.
  timed->note_read(static_cast<std::size_t>(n) < size);
  if (n == 0) {
    // OpenSSL asks BIO_eof() whether the transport ended, to tell a truncation from an error.
    BIO_set_flags(bio, BIO_FLAGS_IN_EOF);
    return 0;
  }
  *read = static_cast<std::size_t>(n);
  return 1;
}

long socket_bio_ctrl(BIO* bio, int command, long, void*) {
  switch (command) {
    case BIO_CTRL_FLUSH:
      return 1;  // nothing is buffered here
    case BIO_CTRL_EOF:
      return BIO_test_flags(bio, BIO_FLAGS_IN_EOF) != 0 ? 1 : 0;
    default:
      return 0;
  }
}

BIO_METHOD* socket_bio_method() {
  static BIO_METHOD* const method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR,
                                 "portcullis socket");
    if (m == nullptr || BIO_meth_set_write_ex(m, socket_bio_write) != 1 ||
        BIO_meth_set_read_ex(m, socket_bio_read) != 1 ||
        BIO_meth_set_ctrl(m, socket_bio_ctrl) != 1) {
      throw std::runtime_error("cannot create the socket BIO method");
    }
    return m;
  }();
  return method;
}

// Before each call into OpenSSL: errors left from another connection must not be read as ours.
// The queue is nearly always empty, and looking costs far less than OpenSSL 3.0's clearing,
// which frees each of its sixteen slots' file and function names (32 frees).
void begin_step() {
  if (ERR_peek_error() != 0) ERR_clear_error();
  last_socket_errno = 0;
}

int index_of(net::socket_base::wait_type direction) {
  return direction == net::socket_base::wait_write ? 1 : 0;
}

}  // namespace

struct TimedSocket::State {
  explicit State(tcp::socket s) : socket(std::move(s)), timer(socket.get_executor()) {}

  tcp::socket socket;
  // One timer for both directions, which share the deadline. It is set lazily: a deadline
  // moved later leaves it as it is, and when it fires early it is set again for the deadline
  // then in force, so most requests set no timer at all.
  net::steady_timer timer;
  clock::time_point deadline = clock::time_point::max();
  clock::time_point armed_for = clock::time_point::max();  // the timer's expiry while armed
  unsigned tick = 0;  // tells a stale timer handler from the current one
  bool armed = false;
  std::array<bool, 2> waiting{};  // read, write: one of each may wait at once
  std::array<bool, 2> timed_out{};
};

TimedSocket::TimedSocket(tcp::socket socket)
    : state_(std::make_shared<State>(std::move(socket)))
#if PORTCULLIS_EDGE_READ_WAIT
      ,
      reactor_(&reactor_of(state_->socket))
#endif
{
}

TimedSocket::executor_type TimedSocket::get_executor() noexcept {
  return state_->socket.get_executor();
}

tcp::socket& TimedSocket::socket() noexcept {
  return state_->socket;
}

TimedSocket::~TimedSocket() {
  state_->timer.cancel();
}

void TimedSocket::arm(const std::shared_ptr<State>& state) {
  if (state->deadline == clock::time_point::max()) return;
  if (state->armed && state->armed_for <= state->deadline) return;
  const auto tick = ++state->tick;
  state->armed = true;
  state->armed_for = state->deadline;
  state->timer.expires_at(state->deadline);  // a wait already set ends, with a stale tick
  state->timer.async_wait(boost::asio::bind_allocator(
      ExactAllocator<void>(), [state, tick](boost::system::error_code ec) {
        if (state->tick != tick) return;
        state->armed = false;
        if (ec) return;
        if (!state->waiting[0] && !state->waiting[1]) return;   // the next wait arms it again
        if (clock::now() < state->deadline) return arm(state);  // moved later meanwhile
        // As Beast's tcp_stream: a connection past its deadline is closed, and the waiting
        // operations end with a timeout.
        state->timed_out = state->waiting;
        boost::system::error_code ignored;
        state->socket.close(ignored);
      }));
}

void TimedSocket::expires_after(clock::duration after) {
  state_->deadline = clock::now() + after;
  if (state_->waiting[0] || state_->waiting[1]) arm(state_);
}

void TimedSocket::expires_never() {
  // A timer still set fires once more, and finds nothing to do.
  state_->deadline = clock::time_point::max();
}

void TimedSocket::close() {
  boost::system::error_code ignored;
  state_->socket.close(ignored);
}

void TimedSocket::begin_wait(net::socket_base::wait_type direction) {
  const int i = index_of(direction);
  state_->waiting[i] = true;
  state_->timed_out[i] = false;
  arm(state_);
}

void TimedSocket::end_wait(net::socket_base::wait_type direction, boost::system::error_code& ec) {
  const int i = index_of(direction);
  state_->waiting[i] = false;
  if (state_->timed_out[i]) {
    state_->timed_out[i] = false;
    ec = boost::beast::error::timeout;
  }
}

SocketStream::SocketStream(tcp::socket socket, net::ssl::context& context)
    : next_(std::move(socket)) {
  next_.socket().non_blocking(true);
  ssl_ = SSL_new(context.native_handle());
  if (ssl_ == nullptr) {
    throw boost::system::system_error(static_cast<int>(ERR_get_error()),
                                      net::error::get_ssl_category(), "SSL_new");
  }
  // As Asio's ssl::stream: a write may end after a whole record, a retried write may come from
  // another address (the coalescing scratch), and idle connections give their buffers back.
  SSL_set_mode(ssl_, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                         SSL_MODE_RELEASE_BUFFERS);
  // One recv for as much as has arrived, not one for each record header and another for its body.
  SSL_set_read_ahead(ssl_, 1);
  BIO* bio = BIO_new(socket_bio_method());
  if (bio == nullptr) {
    SSL_free(ssl_);
    throw boost::system::system_error(static_cast<int>(ERR_get_error()),
                                      net::error::get_ssl_category(), "BIO_new");
  }
  BIO_set_data(bio, &next_);
  BIO_set_init(bio, 1);
  SSL_set_bio(ssl_, bio, bio);  // the SSL object owns the BIO
}

SocketStream::~SocketStream() {
  SSL_free(ssl_);
}

std::array<char, SocketStream::coalesce_limit>& SocketStream::write_scratch() {
  thread_local std::array<char, coalesce_limit> scratch;
  return scratch;
}

SocketStream::Want SocketStream::handshake_step(net::ssl::stream_base::handshake_type type,
                                                boost::system::error_code& ec) {
  begin_step();
  const int result = type == net::ssl::stream_base::client ? SSL_connect(ssl_) : SSL_accept(ssl_);
  if (result == 1) return Want::nothing;
  return outcome(result, ec);
}

SocketStream::Want SocketStream::shutdown_step(boost::system::error_code& ec, bool await_peer) {
  begin_step();
  next_.hold_partial_segments(false);  // the close_notify takes what is held with it
  int result = SSL_shutdown(ssl_);
  // 0: our close_notify is out; the second call reads the peer's.
  if (result == 0 && !await_peer) return Want::nothing;
  if (result == 0) result = SSL_shutdown(ssl_);
  if (result == 1) return Want::nothing;
  return outcome(result, ec);
}

SocketStream::Want SocketStream::read_step(void* data, std::size_t size, std::size_t& n,
                                           boost::system::error_code& ec) {
  begin_step();
  const int result = SSL_read_ex(ssl_, data, size, &n);
  if (result == 1) return Want::nothing;
  n = 0;
  return outcome(result, ec);
}

SocketStream::Want SocketStream::write_step(const void* data, std::size_t size, std::size_t& n,
                                            boost::system::error_code& ec) {
  begin_step();
  const int result = SSL_write_ex(ssl_, data, size, &n);
  if (result == 1) return Want::nothing;
  n = 0;
  return outcome(result, ec);
}

SocketStream::Want SocketStream::outcome(int result, boost::system::error_code& ec) {
  switch (SSL_get_error(ssl_, result)) {
    case SSL_ERROR_NONE:
      return Want::nothing;
    case SSL_ERROR_WANT_READ:
      return Want::read;
    case SSL_ERROR_WANT_WRITE:
      return Want::write;
    case SSL_ERROR_ZERO_RETURN:
      ec = net::error::eof;  // the peer's close_notify
      return Want::nothing;
    case SSL_ERROR_SSL: {
      const auto error = ERR_get_error();
      if (ERR_GET_LIB(error) == ERR_LIB_SSL &&
          ERR_GET_REASON(error) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
        ec = net::ssl::error::stream_truncated;
      } else {
        ec = boost::system::error_code(static_cast<int>(error), net::error::get_ssl_category());
      }
      return Want::nothing;
    }
    case SSL_ERROR_SYSCALL: {
      const auto error = ERR_get_error();
      if (error != 0) {
        ec = boost::system::error_code(static_cast<int>(error), net::error::get_ssl_category());
      } else if (last_socket_errno != 0) {
        ec = boost::system::error_code(last_socket_errno, boost::system::system_category());
      } else {
        ec = net::ssl::error::stream_truncated;
      }
      return Want::nothing;
    }
    default:
      ec = net::ssl::error::unexpected_result;
      return Want::nothing;
  }
}

}  // namespace portcullis::tls
