#include "portcullis/upstream/tls_client_context.hpp"

#include <fmt/format.h>

#include <stdexcept>

namespace portcullis::upstream {

namespace ssl = boost::asio::ssl;

std::unique_ptr<TlsClientContext> build_tls_client_context(const config::UpstreamTls& tls) {
  auto context = std::make_unique<TlsClientContext>();
  context->server_name = tls.server_name;
  auto& ctx = context->ssl;
  ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                  ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
  const auto load = [](std::string_view key, const std::filesystem::path& file, auto&& step) {
    boost::system::error_code ec;
    step(ec);
    if (ec) {
      throw std::runtime_error(
          fmt::format("{}: cannot load {}: {}", key, file.string(), ec.message()));
    }
  };
  load("ca", tls.ca, [&](auto& ec) { ctx.load_verify_file(tls.ca.string(), ec); });
  ctx.set_verify_mode(ssl::verify_peer);
  if (!tls.certificate.empty()) {
    load("certificate", tls.certificate,
         [&](auto& ec) { ctx.use_certificate_chain_file(tls.certificate.string(), ec); });
    load("private_key", tls.private_key, [&](auto& ec) {
      ctx.use_private_key_file(tls.private_key.string(), ssl::context::pem, ec);
    });
  }
  return context;
}

}  // namespace portcullis::upstream
