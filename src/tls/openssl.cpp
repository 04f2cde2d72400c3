#include "portcullis/tls/openssl.hpp"

#include <openssl/err.h>

namespace portcullis::tls {

std::string openssl_errors() {
  std::string out;
  char buf[256];
  while (unsigned long code = ERR_get_error()) {
    ERR_error_string_n(code, buf, sizeof(buf));
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "no OpenSSL error recorded" : out;
}

void throw_openssl_error(const std::string& what) {
  throw TlsError(what + ": " + openssl_errors());
}

}  // namespace portcullis::tls
