#include "portcullis/tls/session_tickets.hpp"

#include "test_support.hpp"

#include <catch2/catch.hpp>

#include <fstream>

using namespace portcullis::tls;
using Catch::Matchers::Contains;
using portcullis::tls::testing::TempDir;

namespace {

// 80 bytes: name 0x00.., HMAC key 0x10.., AES key 0x30.. (base64 of bytes 0..79).
const std::string key_a =
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+P0BBQkNERU"
    "ZHSElKS0xNTk8=";
// 80 bytes of 0xff.
const std::string key_b = std::string(106, '/') + "8=";

std::string load_error(const std::filesystem::path& file) {
  try {
    TicketKeys::load(file);
  } catch (const TlsError& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST_CASE("ticket key files: the first key encrypts, the layout is name, HMAC key, AES key",
          "[tickets]") {
  TempDir dir;
  const auto file = dir / "tickets.keys";
  std::ofstream(file) << "# rotated 2026-11-24\n" << key_a << "\n\n  " << key_b << "  \n";
  const auto keys = TicketKeys::load(file);
  REQUIRE(keys->keys().size() == 2);
  const auto& first = keys->keys().front();
  CHECK(first.name[0] == 0x00);
  CHECK(first.name[15] == 0x0f);
  CHECK(first.hmac_key[0] == 0x10);
  CHECK(first.hmac_key[31] == 0x2f);
  CHECK(first.aes_key[0] == 0x30);
  CHECK(first.aes_key[31] == 0x4f);
  CHECK(keys->keys()[1].name[0] == 0xff);
}

TEST_CASE("ticket key files: errors name the file and line", "[tickets]") {
  TempDir dir;
  const auto file = dir / "tickets.keys";

  std::ofstream(file) << key_a << "\nnot base64!\n";
  CHECK_THAT(load_error(file), Contains(file.string() + ":2") && Contains("not base64"));

  std::ofstream(file) << "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g\n";  // 33 bytes
  CHECK_THAT(load_error(file), Contains(file.string() + ":1") && Contains("must be 80 bytes"));

  std::ofstream(file) << key_a << "\n" << key_a << "\n";
  CHECK_THAT(load_error(file), Contains(":2") && Contains("same key name"));

  std::ofstream(file) << "# nothing yet\n";
  CHECK_THAT(load_error(file), Contains("no session ticket key"));

  CHECK_THAT(load_error(dir / "missing.keys"), Contains("cannot read"));
}
