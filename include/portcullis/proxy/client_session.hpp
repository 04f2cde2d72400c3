#pragma once
// One client connection, from the TLS handshake to the last forwarded response.
// Thread-safety: the coroutine runs on its worker's single thread; nothing it owns is shared.

#include "portcullis/proxy/services.hpp"
#include "portcullis/proxy/snapshot.hpp"
#include "portcullis/proxy/worker.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <atomic>
#include <memory>

namespace portcullis::proxy {

struct SessionParams {
  std::shared_ptr<const Snapshot> snapshot;   // the generation this connection was accepted under
  const ListenerContext* listener = nullptr;  // points into *snapshot
  Worker* worker = nullptr;
  Services* services = nullptr;
  std::shared_ptr<std::atomic<int>> listener_connections;  // decremented when the session ends
};

// `socket` is the accepted connection from `remote` (TCP_NODELAY on, as its listener's).
// Handshake (the verify callback checks chain, purpose and revocation), then a keep-alive loop:
// read a request header, validate, route, authorize, forward, stream the response back.
// Never throws; every failure ends as a logged, counted outcome.
boost::asio::awaitable<void> run_client_session(boost::asio::ip::tcp::socket socket,
                                                boost::asio::ip::tcp::endpoint remote,
                                                SessionParams params);

}  // namespace portcullis::proxy
