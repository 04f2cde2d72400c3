// The ENGINE interface is deprecated in OpenSSL 3.0; see builtin_ec_keys.hpp for why it is used.
#define OPENSSL_SUPPRESS_DEPRECATED 1

#include "portcullis/tls/builtin_ec_keys.hpp"

#include "portcullis/tls/library_context.hpp"

#include <openssl/engine.h>
#include <openssl/evp.h>

namespace portcullis::tls {
namespace {

int ec_only[] = {EVP_PKEY_EC};

// A copy of libcrypto's own EC method, made once and kept for the life of the process.
EVP_PKEY_METHOD* builtin_ec_method() {
  static EVP_PKEY_METHOD* const method = [] {
    const EVP_PKEY_METHOD* builtin = EVP_PKEY_meth_find(EVP_PKEY_EC);
    EVP_PKEY_METHOD* copy = builtin ? EVP_PKEY_meth_new(EVP_PKEY_EC, 0) : nullptr;
    if (copy) EVP_PKEY_meth_copy(copy, builtin);
    return copy;
  }();
  return method;
}

// The engine's one table: asked for its list (method == nullptr), or for one key type's method.
int pkey_methods(ENGINE*, EVP_PKEY_METHOD** method, const int** nids, int nid) {
  if (!method) {
    *nids = ec_only;
    return 1;
  }
  *method = nid == EVP_PKEY_EC ? builtin_ec_method() : nullptr;
  return *method != nullptr;
}

bool install() {
  if (!runs_default_provider_only(nullptr) || !builtin_ec_method()) return false;
  // An OpenSSL configuration that loads engines keeps them in charge.
  if (ENGINE* loaded = ENGINE_get_first()) {
    ENGINE_free(loaded);
    return false;
  }
  ENGINE* engine = ENGINE_new();
  if (!engine) return false;
  // The engine list keeps its own reference; the pkey-method table points to it.
  const bool added = ENGINE_set_id(engine, "portcullis-builtin-ec") == 1 &&
                     ENGINE_set_name(engine, "libcrypto's built-in EC keys") == 1 &&
                     ENGINE_set_pkey_meths(engine, pkey_methods) == 1 && ENGINE_add(engine) == 1;
  const bool registered = added && ENGINE_register_pkey_meths(engine) == 1;
  ENGINE_free(engine);
  if (!registered) return false;
  ENGINE* selected = ENGINE_get_pkey_meth_engine(EVP_PKEY_EC);
  if (!selected) return false;
  ENGINE_finish(selected);
  return true;
}

}  // namespace

bool use_builtin_ec_keys() {
  static const bool on = install();
  return on;
}

}  // namespace portcullis::tls
