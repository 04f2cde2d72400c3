#include "portcullis/proxy/request_rules.hpp"

#include <catch2/catch.hpp>

#include <algorithm>

namespace http = boost::beast::http;
using portcullis::proxy::header_lines;
using portcullis::proxy::host_of;
using portcullis::proxy::insert_header_lines;
using portcullis::proxy::prepare_client_response;
using portcullis::proxy::prepare_upstream_request;
using portcullis::proxy::select_route;
using portcullis::proxy::validate_request;

namespace {

http::request_header<> request(std::initializer_list<std::pair<const char*, const char*>> fields,
                               unsigned version = 11) {
  http::request_header<> req;
  req.method(http::verb::post);
  req.target("/x");
  req.version(version);
  for (const auto& [name, value] : fields) req.insert(name, value);
  return req;
}

std::string reason_of(const http::request_header<>& req, std::string_view sni = "") {
  const auto rejection = validate_request(req, sni);
  return rejection ? rejection->reason : "ok";
}

int count_named(const http::request_header<>& req, std::string_view name) {
  return static_cast<int>(std::count_if(req.begin(), req.end(), [&](const auto& f) {
    return boost::beast::iequals(f.name_string(), name);
  }));
}

}  // namespace

TEST_CASE("framing ambiguities are refused before forwarding", "[proxy][rules]") {
  CHECK(reason_of(request({{"Host", "a"}})) == "ok");
  CHECK(reason_of(request({{"Host", "a"}, {"Content-Length", "5"}})) == "ok");
  CHECK(reason_of(request({{"Host", "a"}, {"Transfer-Encoding", "chunked"}})) == "ok");
  CHECK(reason_of(request({})) == "missing_host");
  CHECK(reason_of(request({}, 10)) == "ok");
  CHECK(reason_of(request({{"Host", "a"}, {"Host", "b"}})) == "multiple_host");
  CHECK(reason_of(request({{"Host", "a"}, {"Content-Length", "5"}, {"Content-Length", "5"}})) ==
        "multiple_content_length");
  CHECK(reason_of(
            request({{"Host", "a"}, {"Content-Length", "5"}, {"Transfer-Encoding", "chunked"}})) ==
        "content_length_with_transfer_encoding");
  CHECK(reason_of(request({{"Host", "a"}, {"Transfer-Encoding", "chunked"}}, 10)) ==
        "transfer_encoding_on_http10");
  for (const char* te : {"chunked, identity", "identity", "xchunked", "gzip, chunked"}) {
    CAPTURE(te);
    CHECK(reason_of(request({{"Host", "a"}, {"Transfer-Encoding", te}})) ==
          "unsupported_transfer_encoding");
  }
  CHECK(reason_of(request({{"Host", "a"}, {"Content-Length", "5, 5"}})) == "bad_content_length");
  CHECK(reason_of(request({{"Host", "a"}, {"Content-Length", "-1"}})) == "bad_content_length");
}

TEST_CASE("Host must agree with SNI when SNI was sent", "[proxy][rules]") {
  CHECK(reason_of(request({{"Host", "api.example.org:8443"}}), "api.example.org") == "ok");
  CHECK(reason_of(request({{"Host", "API.Example.org"}}), "api.example.org") == "ok");
  CHECK(reason_of(request({{"Host", "other.example.org"}}), "api.example.org") ==
        "sni_host_mismatch");
  CHECK(validate_request(request({{"Host", "other"}}), "api")->status ==
        http::status::misdirected_request);
  CHECK(reason_of(request({{"Host", "anything"}}), "") == "ok");
}

TEST_CASE("host_of strips ports and brackets", "[proxy][rules]") {
  CHECK(host_of("Example.org:443") == "example.org");
  CHECK(host_of("example.org") == "example.org");
  CHECK(host_of("[::1]:8443") == "::1");
  CHECK(host_of("127.0.0.1:80") == "127.0.0.1");
}

TEST_CASE("the most specific route wins", "[proxy][rules]") {
  portcullis::config::Listener listener;
  auto add = [&](const char* host, const char* prefix, const char* upstream) {
    portcullis::config::Route r;
    r.match.host = host;
    r.match.path_prefix = prefix;
    r.upstream = upstream;
    listener.routes.push_back(r);
  };
  add("*", "/", "default");
  add("*", "/api/", "api");
  add("*.example.org", "/", "wildcard");
  add("exact.example.org", "/", "exact");
  CHECK(select_route(listener, "x.test", "/")->upstream == "default");
  CHECK(select_route(listener, "x.test", "/api/v1")->upstream == "api");
  CHECK(select_route(listener, "a.example.org", "/api/v1")->upstream == "wildcard");
  CHECK(select_route(listener, "exact.example.org", "/")->upstream == "exact");
  CHECK(select_route(listener, "example.org", "/")->upstream == "default");

  portcullis::config::Listener narrow;
  portcullis::config::Route only;
  only.match.host = "a.test";
  only.match.path_prefix = "/a";
  narrow.routes.push_back(only);
  CHECK(select_route(narrow, "b.test", "/a") == nullptr);
  CHECK(select_route(narrow, "a.test", "/b") == nullptr);
}

TEST_CASE("hop-by-hop and forged identity headers never reach the upstream", "[proxy][rules]") {
  auto req = request({{"Host", "a"},
                      {"Connection", "keep-alive, X-Client-Cert-Subject, X-Secret"},
                      {"Keep-Alive", "timeout=5"},
                      {"TE", "trailers"},
                      {"Upgrade", "h2c"},
                      {"Proxy-Connection", "keep-alive"},
                      {"Expect", "100-continue"},
                      {"X-Secret", "drop me"},
                      {"X-Client-Cert-Subject", "CN=forged"},
                      {"x_client_cert_subject", "CN=forged"},
                      {"X-CLIENT-CERT-SERIAL", "00"},
                      {"Client-Cert", ":Zm9v:"},
                      {"X-Forwarded-For", "10.9.9.9"},
                      {"X-Forwarded-Proto", "http"},
                      {"X-Keep", "yes"}});
  const portcullis::tls::HeaderList identity = {{"X-Client-Cert-Subject", "CN=real"}};
  const auto added = prepare_upstream_request(req, "127.0.0.1", header_lines(identity));
  CHECK(added ==
        "X-Forwarded-For: 10.9.9.9, 127.0.0.1\r\nX-Forwarded-Proto: https\r\n"
        "X-Client-Cert-Subject: CN=real\r\n");
  // The client's own copies are gone from the request itself.
  CHECK(count_named(req, "X-Forwarded-For") == 0);
  CHECK(count_named(req, "X-Forwarded-Proto") == 0);
  insert_header_lines(req, added);

  for (const char* gone :
       {"Connection", "Keep-Alive", "TE", "Upgrade", "Proxy-Connection", "Expect", "X-Secret",
        "x_client_cert_subject", "X-Client-Cert-Serial", "Client-Cert"}) {
    CAPTURE(gone);
    CHECK(count_named(req, gone) == 0);
  }
  CHECK(count_named(req, "X-Client-Cert-Subject") == 1);
  CHECK(req["X-Client-Cert-Subject"] == "CN=real");
  CHECK(req["X-Forwarded-For"] == "10.9.9.9, 127.0.0.1");
  CHECK(req["X-Forwarded-Proto"] == "https");
  CHECK(req["X-Keep"] == "yes");
  CHECK(req.version() == 11);
}

TEST_CASE("responses lose their hop-by-hop headers", "[proxy][rules]") {
  http::response_header<> res;
  res.result(http::status::ok);
  res.insert("Connection", "close, X-Internal");
  res.insert("X-Internal", "1");
  res.insert("Keep-Alive", "timeout=5");
  res.insert("Content-Type", "text/plain");
  prepare_client_response(res);
  CHECK(res.count(http::field::connection) == 0);
  CHECK(res.count("X-Internal") == 0);
  CHECK(res.count(http::field::keep_alive) == 0);
  CHECK(res[http::field::content_type] == "text/plain");
}

TEST_CASE("a WebSocket upgrade is recognised and keeps only its own hop-by-hop fields",
          "[proxy][rules][websocket]") {
  using portcullis::proxy::is_websocket_upgrade;
  using portcullis::proxy::set_websocket_upgrade;
  auto get = [](std::initializer_list<std::pair<const char*, const char*>> fields) {
    auto req = request(fields);
    req.method(http::verb::get);
    return req;
  };
  CHECK(
      is_websocket_upgrade(get({{"Upgrade", "WebSocket"}, {"Connection", "keep-alive, Upgrade"}})));
  CHECK_FALSE(is_websocket_upgrade(get({{"Upgrade", "websocket"}})));
  CHECK_FALSE(is_websocket_upgrade(get({{"Upgrade", "h2c"}, {"Connection", "Upgrade"}})));
  CHECK_FALSE(is_websocket_upgrade(request({{"Upgrade", "websocket"}, {"Connection", "Upgrade"}})));

  // Hop-by-hop removal still runs first: a field the client named in Connection is gone, and
  // the identity headers cannot be removed by naming them.
  auto req = get({{"Upgrade", "websocket"},
                  {"Connection", "Upgrade, X-Secret, X-Client-Cert-Subject"},
                  {"X-Secret", "1"}});
  insert_header_lines(req,
                      prepare_upstream_request(req, "127.0.0.1",
                                               header_lines({{"X-Client-Cert-Subject", "CN=a"}})));
  set_websocket_upgrade(req);
  CHECK(req[http::field::upgrade] == "websocket");
  CHECK(req[http::field::connection] == "Upgrade");
  CHECK(req.count("X-Secret") == 0);
  CHECK(count_named(req, "X-Client-Cert-Subject") == 1);
}

TEST_CASE("a request without X-Forwarded-For gets one naming the client", "[proxy][rules]") {
  auto req = request({{"Host", "a"}});
  CHECK(prepare_upstream_request(req, "192.0.2.7", "") ==
        "X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\n");
}

TEST_CASE("header lines go into fields one for one, in order", "[proxy][rules]") {
  const portcullis::tls::HeaderList headers = {{"X-Client-Cert-Subject", "CN=a: b,O=c"},
                                               {"X-Client-Cert-SAN", ""},
                                               {"X-Client-Cert-Serial", "0A"}};
  const auto lines = header_lines(headers);
  CHECK(lines ==
        "X-Client-Cert-Subject: CN=a: b,O=c\r\nX-Client-Cert-SAN: \r\n"
        "X-Client-Cert-Serial: 0A\r\n");
  http::fields fields;
  insert_header_lines(fields, lines);
  portcullis::tls::HeaderList back;
  for (const auto& f : fields) back.emplace_back(f.name_string(), f.value());
  CHECK(back == headers);
  insert_header_lines(fields, "");
  CHECK(std::distance(fields.begin(), fields.end()) == 3);
}
