#include "portcullis/tls/library_context.hpp"

#include "portcullis/tls/openssl.hpp"
#include "portcullis/tls/tls13_kdf.hpp"

#include <openssl/core_dispatch.h>
#include <openssl/evp.h>
#include <openssl/provider.h>

#include <string_view>
#include <vector>

namespace portcullis::tls {
namespace {

// The provider the trimmed context loads: the default provider, loaded into a private context
// of its own, passed through operation by operation. Its algorithms run with the default
// provider's own provider context, so they are the default provider's in every respect; only
// the decoder and key manager tables are cut down, and TLS13-KDF is ours (tls13_kdf.hpp).
struct Passthrough {
  OSSL_LIB_CTX* inner = nullptr;
  OSSL_PROVIDER* provider = nullptr;
  std::vector<OSSL_ALGORITHM> decoders;
  std::vector<OSSL_ALGORITHM> key_managers;
  std::vector<OSSL_ALGORITHM> kdfs;
};

// Key types a TLS peer of OpenSSL 3.0 cannot authenticate with. DH, DHX, X25519 and X448 only
// agree keys: a certificate holding one can neither sign a CertificateVerify nor issue a
// certificate. SM2 is not a TLS signature algorithm in 3.0; without its decoder a certificate
// with an SM2 key parses with no key (so an SM2 signature by an intermediate the client sends
// does not verify), and that decoder no longer runs, in full, on every EC key only to turn it
// down.
constexpr std::string_view unused_decoders[] = {"DH", "DHX", "X25519", "X448", "SM2"};

// Key managers of KDFs and MACs wrapped as EVP_PKEYs, which libssl 3.0 does not use (it uses
// EVP_KDF and EVP_MAC; HMAC stays, for PSK binders and TLS 1.2 CBC record MACs), and DHX and
// SM2, whose only use here would be their decoders.
constexpr std::string_view unused_key_managers[] = {"DHX",    "SM2",     "TLS1-PRF", "HKDF",
                                                    "SCRYPT", "SIPHASH", "POLY1305", "CMAC"};

// "DH:dhKeyAgreement:1.2.840.113549.1.3.1" → "DH".
std::string_view first_name(const char* names) {
  const std::string_view all = names;
  return all.substr(0, all.find(':'));
}

template <std::size_t N>
bool listed(const std::string_view (&list)[N], std::string_view name) {
  for (const auto item : list) {
    if (item == name) return true;
  }
  return false;
}

Passthrough& passthrough() {
  static Passthrough state;
  return state;
}

// "provider=default,fips=yes,input=der,structure=SubjectPublicKeyInfo" → kept.
bool decodes_der_spki(std::string_view properties) {
  bool der = false;
  bool spki = false;
  while (!properties.empty()) {
    const auto comma = properties.find(',');
    const auto item = properties.substr(0, comma);
    der = der || item == "input=der";
    spki = spki || item == "structure=SubjectPublicKeyInfo";
    properties =
        comma == std::string_view::npos ? std::string_view{} : properties.substr(comma + 1);
  }
  return der && spki;
}

const OSSL_PARAM* passthrough_gettable_params(void*) {
  return OSSL_PROVIDER_gettable_params(passthrough().provider);
}

int passthrough_get_params(void*, OSSL_PARAM params[]) {
  return OSSL_PROVIDER_get_params(passthrough().provider, params);
}

const OSSL_ALGORITHM* passthrough_query(void*, int operation, int* no_cache) {
  auto& state = passthrough();
  if (operation == OSSL_OP_DECODER) {
    *no_cache = 0;
    return state.decoders.data();
  }
  if (operation == OSSL_OP_KEYMGMT) {
    *no_cache = 0;
    return state.key_managers.data();
  }
  if (operation == OSSL_OP_KDF) {
    *no_cache = 0;
    return state.kdfs.data();
  }
  return OSSL_PROVIDER_query_operation(state.provider, operation, no_cache);
}

void passthrough_unquery(void*, int operation, const OSSL_ALGORITHM* algorithms) {
  if (operation != OSSL_OP_DECODER && operation != OSSL_OP_KEYMGMT && operation != OSSL_OP_KDF) {
    OSSL_PROVIDER_unquery_operation(passthrough().provider, operation, algorithms);
  }
}

int passthrough_get_capabilities(void*, const char* capability, OSSL_CALLBACK* callback,
                                 void* arg) {
  return OSSL_PROVIDER_get_capabilities(passthrough().provider, capability, callback, arg);
}

const OSSL_DISPATCH passthrough_dispatch[] = {
    {OSSL_FUNC_PROVIDER_GETTABLE_PARAMS, dispatch_function(passthrough_gettable_params)},
    {OSSL_FUNC_PROVIDER_GET_PARAMS, dispatch_function(passthrough_get_params)},
    {OSSL_FUNC_PROVIDER_QUERY_OPERATION, dispatch_function(passthrough_query)},
    {OSSL_FUNC_PROVIDER_UNQUERY_OPERATION, dispatch_function(passthrough_unquery)},
    {OSSL_FUNC_PROVIDER_GET_CAPABILITIES, dispatch_function(passthrough_get_capabilities)},
    {0, nullptr}};

int passthrough_init(const OSSL_CORE_HANDLE*, const OSSL_DISPATCH*, const OSSL_DISPATCH** out,
                     void** provider_context) {
  auto& state = passthrough();
  if (!state.provider) {
    state.inner = OSSL_LIB_CTX_new();
    state.provider = state.inner ? OSSL_PROVIDER_load(state.inner, "default") : nullptr;
    if (!state.provider) return 0;
    // Both tables point into the default provider's own, which live as long as the process.
    int no_cache = 0;
    const auto* all = OSSL_PROVIDER_query_operation(state.provider, OSSL_OP_DECODER, &no_cache);
    for (; all && all->algorithm_names; ++all) {
      if (all->property_definition && decodes_der_spki(all->property_definition) &&
          !listed(unused_decoders, first_name(all->algorithm_names))) {
        state.decoders.push_back(*all);
      }
    }
    state.decoders.push_back(OSSL_ALGORITHM{nullptr, nullptr, nullptr, nullptr});
    all = OSSL_PROVIDER_query_operation(state.provider, OSSL_OP_KEYMGMT, &no_cache);
    for (; all && all->algorithm_names; ++all) {
      if (!listed(unused_key_managers, first_name(all->algorithm_names))) {
        state.key_managers.push_back(*all);
      }
    }
    state.key_managers.push_back(OSSL_ALGORITHM{nullptr, nullptr, nullptr, nullptr});
    all = OSSL_PROVIDER_query_operation(state.provider, OSSL_OP_KDF, &no_cache);
    for (; all && all->algorithm_names; ++all) {
      state.kdfs.push_back(*all);
      if (first_name(all->algorithm_names) == "TLS13-KDF") {
        state.kdfs.back().implementation = tls13_kdf_functions(state.inner);
      }
    }
    state.kdfs.push_back(OSSL_ALGORITHM{nullptr, nullptr, nullptr, nullptr});
  }
  *provider_context = OSSL_PROVIDER_get0_provider_ctx(state.provider);
  *out = passthrough_dispatch;
  return 1;
}

OSSL_LIB_CTX* make_trimmed_context() {
  if (!runs_default_provider_only(nullptr)) return nullptr;
  OSSL_LIB_CTX* ctx = OSSL_LIB_CTX_new();
  if (!ctx) return nullptr;
  if (OSSL_PROVIDER_add_builtin(ctx, "portcullis-default", passthrough_init) != 1 ||
      !OSSL_PROVIDER_load(ctx, "portcullis-default")) {
    OSSL_LIB_CTX_free(ctx);
    return nullptr;
  }
  return ctx;
}

}  // namespace

bool runs_default_provider_only(OSSL_LIB_CTX* libctx) {
  if (EVP_default_properties_is_fips_enabled(libctx)) return false;
  struct Seen {
    bool default_provider = false;
    bool other = false;
  } seen;
  // Activates the configured (or fallback) providers first, as the first fetch would.
  OSSL_PROVIDER_do_all(
      libctx,
      [](OSSL_PROVIDER* provider, void* arg) {
        auto& s = *static_cast<Seen*>(arg);
        const std::string_view name = OSSL_PROVIDER_get0_name(provider);
        if (name == "default") {
          s.default_provider = true;
        } else if (name != "base") {
          s.other = true;
        }
        return 1;
      },
      &seen);
  return seen.default_provider && !seen.other;
}

OSSL_LIB_CTX* handshake_library_context() {
  static OSSL_LIB_CTX* const ctx = make_trimmed_context();
  return ctx;
}

}  // namespace portcullis::tls
