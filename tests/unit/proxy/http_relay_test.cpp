#include "../../../src/proxy/http_relay.hpp"

#include <boost/beast/core/buffers_to_string.hpp>
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
