#include "portcullis/tls/tls13_kdf.hpp"

#include "portcullis/tls/openssl.hpp"

#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/proverr.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace portcullis::tls {
namespace {

OSSL_LIB_CTX* digest_context = nullptr;

// Digests fetched by name without properties, for the life of the process: an append-only list
// read without a lock.
struct CachedDigest {
  std::string name;
  EVP_MD* md;
  CachedDigest* next;
};
std::atomic<CachedDigest*> cached_digests{nullptr};

EVP_MD* cached_digest(std::string_view name) {
  for (auto* d = cached_digests.load(std::memory_order_acquire); d; d = d->next) {
    if (d->name == name) return d->md;
  }
  static std::mutex adding;
  std::lock_guard lock(adding);
  for (auto* d = cached_digests.load(std::memory_order_acquire); d; d = d->next) {
    if (d->name == name) return d->md;
  }
  EVP_MD* md = EVP_MD_fetch(digest_context, std::string(name).c_str(), nullptr);
  if (!md) return nullptr;
  cached_digests.store(new CachedDigest{std::string(name), md, cached_digests.load()},
                       std::memory_order_release);
  return md;
}

// Bytes that may be secret: wiped before they are replaced or freed.
struct Bytes {
  std::vector<unsigned char> bytes;
  bool set = false;

  void wipe() {
    if (!bytes.empty()) OPENSSL_cleanse(bytes.data(), bytes.size());
    bytes.clear();
    set = false;
  }
  void assign(const void* data, std::size_t size) {
    wipe();
    const auto* p = static_cast<const unsigned char*>(data);
    bytes.assign(p, p + size);
    set = true;
  }
  ~Bytes() { wipe(); }
};

struct Kdf {
  int mode = EVP_KDF_HKDF_MODE_EXTRACT_AND_EXPAND;  // not one TLS 1.3 takes: derive refuses
  const EVP_MD* md = nullptr;
  EVP_MD* owned_md = nullptr;  // fetched with properties, for this context only
  Bytes key, salt, prefix, label, data;
  EVP_MD_CTX* hash = EVP_MD_CTX_new();

  Kdf() = default;
  Kdf(const Kdf& other)
      : mode(other.mode),
        md(other.md),
        owned_md(other.owned_md),
        key(other.key),
        salt(other.salt),
        prefix(other.prefix),
        label(other.label),
        data(other.data) {
    if (owned_md) EVP_MD_up_ref(owned_md);
  }
  Kdf& operator=(const Kdf&) = delete;
  ~Kdf() {
    EVP_MD_free(owned_md);
    EVP_MD_CTX_free(hash);
  }
  void set_digest(const EVP_MD* cached, EVP_MD* owned) {
    EVP_MD_free(owned_md);
    owned_md = owned;
    md = owned ? owned : cached;
  }
};

constexpr std::size_t max_block = 144;  // the largest digest block, SHA3-224's

bool digest_parts(EVP_MD_CTX* ctx, const EVP_MD* md,
                  std::initializer_list<std::pair<const unsigned char*, std::size_t>> parts,
                  unsigned char* out) {
  if (EVP_DigestInit_ex2(ctx, md, nullptr) != 1) return false;
  for (const auto& [p, n] : parts) {
    if (n && EVP_DigestUpdate(ctx, p, n) != 1) return false;
  }
  return EVP_DigestFinal_ex(ctx, out, nullptr) == 1;
}

// RFC 2104 HMAC of the concatenated parts; `out` takes the digest's size.
bool hmac(Kdf& k, const unsigned char* key, std::size_t key_size,
          std::initializer_list<std::pair<const unsigned char*, std::size_t>> parts,
          unsigned char* out) {
  const auto block = static_cast<std::size_t>(EVP_MD_get_block_size(k.md));
  const auto size = static_cast<std::size_t>(EVP_MD_get_size(k.md));
  if (block == 0 || block > max_block || size > EVP_MAX_MD_SIZE) return false;
  unsigned char padded[max_block] = {};
  unsigned char inner[EVP_MAX_MD_SIZE];
  bool ok = true;
  if (key_size > block) {
    ok = digest_parts(k.hash, k.md, {{key, key_size}}, padded);
  } else if (key_size) {
    std::memcpy(padded, key, key_size);
  }
  for (std::size_t i = 0; i < block; ++i) padded[i] ^= 0x36;
  ok = ok && EVP_DigestInit_ex2(k.hash, k.md, nullptr) == 1 &&
       EVP_DigestUpdate(k.hash, padded, block) == 1;
  for (const auto& [p, n] : parts) {
    ok = ok && (n == 0 || EVP_DigestUpdate(k.hash, p, n) == 1);
  }
  ok = ok && EVP_DigestFinal_ex(k.hash, inner, nullptr) == 1;
  for (std::size_t i = 0; i < block; ++i) padded[i] ^= 0x36 ^ 0x5c;
  ok = ok && digest_parts(k.hash, k.md, {{padded, block}, {inner, size}}, out);
  OPENSSL_cleanse(padded, sizeof(padded));
  OPENSSL_cleanse(inner, sizeof(inner));
  return ok;
}

// RFC 8446 HKDF-Expand-Label: HKDF-Expand(secret, HkdfLabel(length, prefix + label, context)).
bool expand_label(Kdf& k, const unsigned char* secret, std::size_t secret_size, const Bytes& prefix,
                  const Bytes& label, const unsigned char* context, std::size_t context_size,
                  unsigned char* out, std::size_t out_size) {
  const auto size = static_cast<std::size_t>(EVP_MD_get_size(k.md));
  const std::size_t name_size = prefix.bytes.size() + label.bytes.size();
  if (size == 0 || out_size == 0 || out_size > 255 * size || out_size > 0xffff || name_size > 255 ||
      context_size > 255) {
    ERR_raise(ERR_LIB_PROV, PROV_R_INVALID_KEY_LENGTH);
    return false;
  }
  // HkdfLabel: uint16 length, opaque label<7..255>, opaque context<0..255>.
  unsigned char info[2 + 1 + 255 + 1 + 255];
  std::size_t info_size = 0;
  const auto put = [&](const unsigned char* p, std::size_t n) {
    if (n) std::memcpy(info + info_size, p, n);
    info_size += n;
  };
  const unsigned char head[] = {static_cast<unsigned char>(out_size >> 8),
                                static_cast<unsigned char>(out_size & 0xff),
                                static_cast<unsigned char>(name_size)};
  const auto context_length = static_cast<unsigned char>(context_size);
  put(head, sizeof(head));
  put(prefix.bytes.data(), prefix.bytes.size());
  put(label.bytes.data(), label.bytes.size());
  put(&context_length, 1);
  put(context, context_size);
  // RFC 5869: T(i) = HMAC(secret, T(i-1) | info | i).
  unsigned char t[EVP_MAX_MD_SIZE];
  std::size_t t_size = 0;
  bool ok = true;
  for (unsigned char i = 1; ok && out_size; ++i) {
    ok = hmac(k, secret, secret_size, {{t, t_size}, {info, info_size}, {&i, 1}}, t);
    t_size = size;
    const std::size_t n = out_size < size ? out_size : size;
    if (ok) std::memcpy(out, t, n);
    out += n;
    out_size -= n;
  }
  OPENSSL_cleanse(t, sizeof(t));
  return ok;
}

// Derive-Secret(salt, label, "") then HKDF-Extract(that, key): the zero key of the digest's
// length when none was given, and no derive step (a zero salt) when no salt was.
bool extract(Kdf& k, unsigned char* out, std::size_t out_size) {
  const auto size = static_cast<std::size_t>(EVP_MD_get_size(k.md));
  if (out_size != size) {
    ERR_raise(ERR_LIB_PROV, PROV_R_WRONG_OUTPUT_BUFFER_SIZE);
    return false;
  }
  static const unsigned char zeros[EVP_MAX_MD_SIZE] = {};
  const unsigned char* ikm = k.key.set ? k.key.bytes.data() : zeros;
  const std::size_t ikm_size = k.key.set ? k.key.bytes.size() : size;
  unsigned char derived[EVP_MAX_MD_SIZE];
  const unsigned char* salt = zeros;
  bool ok = true;
  if (k.salt.set) {
    unsigned char empty_hash[EVP_MAX_MD_SIZE];
    ok = digest_parts(k.hash, k.md, {}, empty_hash) &&
         expand_label(k, k.salt.bytes.data(), k.salt.bytes.size(), k.prefix, k.label, empty_hash,
                      size, derived, size);
    salt = derived;
  }
  ok = ok && hmac(k, salt, size, {{ikm, ikm_size}}, out);
  OPENSSL_cleanse(derived, sizeof(derived));
  return ok;
}

bool set_mode(Kdf& k, const OSSL_PARAM& p) {
  if (p.data_type == OSSL_PARAM_UTF8_STRING) {
    const char* name = nullptr;
    if (!OSSL_PARAM_get_utf8_string_ptr(&p, &name)) return false;
    if (OPENSSL_strcasecmp(name, "EXTRACT_AND_EXPAND") == 0) {
      k.mode = EVP_KDF_HKDF_MODE_EXTRACT_AND_EXPAND;
    } else if (OPENSSL_strcasecmp(name, "EXTRACT_ONLY") == 0) {
      k.mode = EVP_KDF_HKDF_MODE_EXTRACT_ONLY;
    } else if (OPENSSL_strcasecmp(name, "EXPAND_ONLY") == 0) {
      k.mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
    } else {
      return false;
    }
    return true;
  }
  int mode = 0;
  if (!OSSL_PARAM_get_int(&p, &mode)) return false;
  if (mode != EVP_KDF_HKDF_MODE_EXTRACT_AND_EXPAND && mode != EVP_KDF_HKDF_MODE_EXTRACT_ONLY &&
      mode != EVP_KDF_HKDF_MODE_EXPAND_ONLY)
    return false;
  k.mode = mode;
  return true;
}

bool set_bytes(Bytes& b, const OSSL_PARAM& p) {
  if (p.data_type != OSSL_PARAM_OCTET_STRING) return false;
  b.assign(p.data, p.data_size);
  return true;
}

int set_params(void* vctx, const OSSL_PARAM params[]) {
  auto& k = *static_cast<Kdf*>(vctx);
  if (!params) return 1;
  const char* digest = nullptr;
  const char* properties = nullptr;
  for (const OSSL_PARAM* p = params; p->key; ++p) {
    const std::string_view key = p->key;
    bool ok = true;
    if (key == OSSL_KDF_PARAM_MODE) {
      ok = set_mode(k, *p);
    } else if (key == OSSL_KDF_PARAM_DIGEST) {
      ok = OSSL_PARAM_get_utf8_string_ptr(p, &digest);
    } else if (key == OSSL_KDF_PARAM_PROPERTIES) {
      ok = OSSL_PARAM_get_utf8_string_ptr(p, &properties);
    } else if (key == OSSL_KDF_PARAM_KEY) {
      ok = set_bytes(k.key, *p);
    } else if (key == OSSL_KDF_PARAM_SALT) {
      ok = set_bytes(k.salt, *p);
    } else if (key == OSSL_KDF_PARAM_PREFIX) {
      ok = set_bytes(k.prefix, *p);
    } else if (key == OSSL_KDF_PARAM_LABEL) {
      ok = set_bytes(k.label, *p);
    } else if (key == OSSL_KDF_PARAM_DATA) {
      ok = set_bytes(k.data, *p);
    }
    if (!ok) {
      ERR_raise(ERR_LIB_PROV, PROV_R_FAILED_TO_SET_PARAMETER);
      return 0;
    }
  }
  if (digest) {
    EVP_MD* owned =
        properties && *properties ? EVP_MD_fetch(digest_context, digest, properties) : nullptr;
    const EVP_MD* md = owned ? owned : properties && *properties ? nullptr : cached_digest(digest);
    if (!md || (EVP_MD_get_flags(md) & EVP_MD_FLAG_XOF) != 0) {
      EVP_MD_free(owned);
      ERR_raise(ERR_LIB_PROV, PROV_R_INVALID_DIGEST);
      return 0;
    }
    k.set_digest(md, owned);
  }
  if (k.mode == EVP_KDF_HKDF_MODE_EXTRACT_AND_EXPAND) {
    ERR_raise(ERR_LIB_PROV, PROV_R_INVALID_MODE);
    return 0;
  }
  return 1;
}

void* new_context(void*) {
  auto* k = new (std::nothrow) Kdf;
  if (k && !k->hash) {
    delete k;
    return nullptr;
  }
  return k;
}

void* duplicate_context(void* vctx) {
  auto* k = new (std::nothrow) Kdf(*static_cast<Kdf*>(vctx));
  if (k && !k->hash) {
    delete k;
    return nullptr;
  }
  return k;
}

void free_context(void* vctx) {
  delete static_cast<Kdf*>(vctx);
}

void reset_context(void* vctx) {
  auto& k = *static_cast<Kdf*>(vctx);
  k.mode = EVP_KDF_HKDF_MODE_EXTRACT_AND_EXPAND;
  k.set_digest(nullptr, nullptr);
  for (Bytes* b : {&k.key, &k.salt, &k.prefix, &k.label, &k.data}) b->wipe();
}

int derive(void* vctx, unsigned char* out, std::size_t out_size, const OSSL_PARAM params[]) {
  auto& k = *static_cast<Kdf*>(vctx);
  if (!set_params(vctx, params)) return 0;
  if (!k.md) {
    ERR_raise(ERR_LIB_PROV, PROV_R_MISSING_MESSAGE_DIGEST);
    return 0;
  }
  if (k.mode == EVP_KDF_HKDF_MODE_EXTRACT_ONLY) return extract(k, out, out_size) ? 1 : 0;
  if (!k.key.set) {
    ERR_raise(ERR_LIB_PROV, PROV_R_MISSING_KEY);
    return 0;
  }
  return expand_label(k, k.key.bytes.data(), k.key.bytes.size(), k.prefix, k.label,
                      k.data.bytes.data(), k.data.bytes.size(), out, out_size)
             ? 1
             : 0;
}

const OSSL_PARAM* settable_params(void*, void*) {
  static const OSSL_PARAM settable[] = {
      OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_MODE, nullptr, 0),
      OSSL_PARAM_int(OSSL_KDF_PARAM_MODE, nullptr),
      OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_PROPERTIES, nullptr, 0),
      OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_DIGEST, nullptr, 0),
      OSSL_PARAM_octet_string(OSSL_KDF_PARAM_KEY, nullptr, 0),
      OSSL_PARAM_octet_string(OSSL_KDF_PARAM_SALT, nullptr, 0),
      OSSL_PARAM_octet_string(OSSL_KDF_PARAM_PREFIX, nullptr, 0),
      OSSL_PARAM_octet_string(OSSL_KDF_PARAM_LABEL, nullptr, 0),
      OSSL_PARAM_octet_string(OSSL_KDF_PARAM_DATA, nullptr, 0),
      OSSL_PARAM_END};
  return settable;
}

const OSSL_PARAM* gettable_params(void*, void*) {
  static const OSSL_PARAM gettable[] = {OSSL_PARAM_size_t(OSSL_KDF_PARAM_SIZE, nullptr),
                                        OSSL_PARAM_END};
  return gettable;
}

// The output size: the digest's for EXTRACT_ONLY, unbounded (as the default provider says) for
// EXPAND_ONLY.
int get_params(void* vctx, OSSL_PARAM params[]) {
  auto& k = *static_cast<Kdf*>(vctx);
  OSSL_PARAM* p = OSSL_PARAM_locate(params, OSSL_KDF_PARAM_SIZE);
  if (!p) return -2;
  std::size_t size = SIZE_MAX;
  if (k.mode == EVP_KDF_HKDF_MODE_EXTRACT_ONLY) {
    if (!k.md) return 0;
    size = static_cast<std::size_t>(EVP_MD_get_size(k.md));
  }
  return OSSL_PARAM_set_size_t(p, size);
}

const OSSL_DISPATCH functions[] = {
    {OSSL_FUNC_KDF_NEWCTX, dispatch_function(new_context)},
    {OSSL_FUNC_KDF_DUPCTX, dispatch_function(duplicate_context)},
    {OSSL_FUNC_KDF_FREECTX, dispatch_function(free_context)},
    {OSSL_FUNC_KDF_RESET, dispatch_function(reset_context)},
    {OSSL_FUNC_KDF_DERIVE, dispatch_function(derive)},
    {OSSL_FUNC_KDF_SETTABLE_CTX_PARAMS, dispatch_function(settable_params)},
    {OSSL_FUNC_KDF_SET_CTX_PARAMS, dispatch_function(set_params)},
    {OSSL_FUNC_KDF_GETTABLE_CTX_PARAMS, dispatch_function(gettable_params)},
    {OSSL_FUNC_KDF_GET_CTX_PARAMS, dispatch_function(get_params)},
    {0, nullptr}};

}  // namespace

const OSSL_DISPATCH* tls13_kdf_functions(OSSL_LIB_CTX* digests) {
  digest_context = digests;
  return functions;
}

}  // namespace portcullis::tls
