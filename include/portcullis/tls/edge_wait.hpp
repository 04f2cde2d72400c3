#pragma once
// A wait for a socket to become readable that costs no system call when the last read left the
// socket empty.
//
// Asio's async_wait re-arms the descriptor with epoll_ctl at every wait, so that under edge
// triggering readiness which came before the wait is not lost: one system call per wait, one per
// keep-alive request. NGINX and HAProxy re-arm nothing: they wait only after a read that found
// the socket empty, and any bytes that come after it raise a new edge. edge_read_wait does the
// same through Asio's own reactor queue, so cancel(), close() and per-operation cancellation
// end it as they end async_wait:
//  - the operation reports itself done and the descriptor exhausted whenever the reactor runs
//    it, so the reactor marks the descriptor as not worth trying until its next edge;
//  - started while no edge came since (the mark stands), it is queued with no system call, and
//    the next edge completes it;
//  - started after an edge came (the mark was lifted, perhaps for bytes already read), it
//    looks with a one-byte MSG_PEEK: bytes, the peer's close or an error complete it at once;
//    an empty socket queues it for the next edge.
// The caller must have found the socket empty since its previous wait completed (a read that
// would have blocked or returned less than asked); otherwise it uses async_wait. An edge
// raised by bytes that were read before the wait began, but that the reactor had not yet
// collected, may still complete it with nothing to read: callers read, and wait again.
//
// This reaches into Asio's epoll reactor (boost/asio/detail), so it is built only for the Asio
// it was written against; elsewhere edge_read_wait is async_wait.
// Thread-safety: as a socket's operations.

#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/version.hpp>

#include <memory>
#include <utility>

#if BOOST_ASIO_VERSION == 102600 && defined(BOOST_ASIO_HAS_EPOLL) && \
    !defined(BOOST_ASIO_HAS_IO_URING_AS_DEFAULT) && !defined(BOOST_ASIO_HAS_IOCP)
#define PORTCULLIS_EDGE_READ_WAIT 1
#include <boost/asio/detail/bind_handler.hpp>
#include <boost/asio/detail/epoll_reactor.hpp>
#include <boost/asio/detail/fenced_block.hpp>
#include <boost/asio/detail/handler_alloc_helpers.hpp>
#include <boost/asio/detail/handler_cont_helpers.hpp>
#include <boost/asio/detail/handler_work.hpp>
#include <boost/asio/detail/reactor_op.hpp>
#include <boost/asio/execution/context.hpp>
#include <boost/asio/query.hpp>

#include <sys/socket.h>
#include <cerrno>
#else
#define PORTCULLIS_EDGE_READ_WAIT 0
#endif

namespace portcullis::tls {

#if PORTCULLIS_EDGE_READ_WAIT

namespace edge_wait_detail {

namespace ad = boost::asio::detail;

// As Asio's reactive_wait_op, but done and exhausted when the reactor runs it for an edge, and
// when started speculatively, only if the socket is not empty.
template <class Handler, class IoExecutor>
class ReadWaitOp : public ad::reactor_op {
 public:
  BOOST_ASIO_DEFINE_HANDLER_PTR(ReadWaitOp);

  ReadWaitOp(int descriptor, Handler& handler, const IoExecutor& io_ex)
      : ad::reactor_op(boost::system::error_code(), &ReadWaitOp::do_perform,
                       &ReadWaitOp::do_complete),
        descriptor_(descriptor),
        handler_(std::move(handler)),
        work_(handler_, io_ex) {}

  // Set while the operation is being started: a perform then is the reactor's speculative one.
  static inline thread_local bool starting = false;

  static status do_perform(ad::reactor_op* base) {
    if (starting && empty(static_cast<ReadWaitOp*>(base)->descriptor_)) return not_done;
    return done_and_exhausted;
  }

  static void do_complete(void* owner, ad::operation* base, const boost::system::error_code&,
                          std::size_t) {
    auto* o = static_cast<ReadWaitOp*>(base);
    ptr p = {std::addressof(o->handler_), o, o};
    ad::handler_work<Handler, IoExecutor> w(std::move(o->work_));
    // The handler may own the memory of the operation: moved out before it is freed.
    ad::binder1<Handler, boost::system::error_code> handler(o->handler_, o->ec_);
    p.h = std::addressof(handler.handler_);
    p.reset();
    if (owner) {
      ad::fenced_block b(ad::fenced_block::half);
      w.complete(handler, handler.handler_);
    }
  }

 private:
  static bool empty(int descriptor) {
    char byte;
    ssize_t n;
    do {
      n = ::recv(descriptor, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }

  int descriptor_;
  Handler handler_;
  ad::handler_work<Handler, IoExecutor> work_;
};

// Per-operation cancellation, as Asio's own socket operations have it.
class Cancellation {
 public:
  Cancellation(ad::epoll_reactor* reactor, ad::epoll_reactor::per_descriptor_data* data,
               int descriptor)
      : reactor_(reactor), data_(data), descriptor_(descriptor) {}
  void operator()(boost::asio::cancellation_type_t type) {
    if (!!(type &
           (boost::asio::cancellation_type::terminal | boost::asio::cancellation_type::partial |
            boost::asio::cancellation_type::total))) {
      reactor_->cancel_ops_by_key(descriptor_, *data_, ad::epoll_reactor::read_op, this);
    }
  }

 private:
  ad::epoll_reactor* reactor_;
  ad::epoll_reactor::per_descriptor_data* data_;
  int descriptor_;
};

// The socket's implementation (descriptor and reactor registration), which basic_socket keeps
// protected: a pointer to the member, formed through a derived class, reads it.
struct SocketAccess : boost::asio::ip::tcp::socket {
  static auto& implementation(boost::asio::ip::tcp::socket& socket) {
    constexpr auto member = &SocketAccess::impl_;
    return (socket.*member).get_implementation();
  }
};

}  // namespace edge_wait_detail

// The reactor of the socket's execution context (looked up once, kept by the caller).
inline boost::asio::detail::epoll_reactor& reactor_of(boost::asio::ip::tcp::socket& socket) {
  return boost::asio::use_service<boost::asio::detail::epoll_reactor>(
      boost::asio::query(socket.get_executor(), boost::asio::execution::context));
}

template <class Handler>
void edge_read_wait(boost::asio::ip::tcp::socket& socket,
                    boost::asio::detail::epoll_reactor& reactor, Handler handler) {
  namespace d = edge_wait_detail;
  using IoExecutor = boost::asio::ip::tcp::socket::executor_type;
  using Op = d::ReadWaitOp<Handler, IoExecutor>;
  auto& impl = d::SocketAccess::implementation(socket);
  const bool is_continuation = boost_asio_handler_cont_helpers::is_continuation(handler);
  auto slot = boost::asio::get_associated_cancellation_slot(handler);
  typename Op::ptr p = {std::addressof(handler), Op::ptr::allocate(handler), nullptr};
  p.p = new (p.v) Op(impl.socket_, handler, socket.get_executor());
  if (slot.is_connected()) {
    p.p->cancellation_key_ =
        &slot.template emplace<d::Cancellation>(&reactor, &impl.reactor_data_, impl.socket_);
  }
  Op::starting = true;
  reactor.start_op(boost::asio::detail::epoll_reactor::read_op, impl.socket_, impl.reactor_data_,
                   p.p, is_continuation, true);
  Op::starting = false;
  p.v = p.p = nullptr;
}

#endif  // PORTCULLIS_EDGE_READ_WAIT

}  // namespace portcullis::tls
