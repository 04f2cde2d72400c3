#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <catch2/catch.hpp>

namespace net = boost::asio;
using tcp = net::ip::tcp;

// proxy::Listener sets TCP_NODELAY on the listening socket and not on each accepted one: Linux
// copies it to the sockets accept() returns.
TEST_CASE("accepted sockets keep the listening socket's TCP_NODELAY", "[listener]") {
  net::io_context io;
  for (const bool on : {true, false}) {
    INFO("TCP_NODELAY on the listener: " << on);
    tcp::acceptor acceptor(io);
    acceptor.open(tcp::v4());
    acceptor.set_option(tcp::no_delay(on));
    acceptor.bind(tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
    acceptor.listen();
    tcp::socket client(io);
    client.connect(acceptor.local_endpoint());
    tcp::endpoint peer;
    tcp::socket accepted = acceptor.accept(peer);
    tcp::no_delay option;
    accepted.get_option(option);
    CHECK(option.value() == on);
    // accept() also gives the peer's address, which the session logs.
    CHECK(peer == client.local_endpoint());
  }
}
