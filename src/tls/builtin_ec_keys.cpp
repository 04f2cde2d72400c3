// The ENGINE interface is deprecated in OpenSSL 3.0; see builtin_ec_keys.hpp for why it is used.
#define OPENSSL_SUPPRESS_DEPRECATED 1

#include "portcullis/tls/builtin_ec_keys.hpp"

#include "portcullis/tls/library_context.hpp"

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/engine.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509.h>

#include <array>

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

// The curves whose group is built once (those of WebPKI and private PKI certificates), each
// with its group, kept for the life of the process; only ever read (EC_KEY_set_group copies
// it), so any number of threads may use them at once.
struct SharedGroup {
  int nid;
  EC_GROUP* group;
};

const std::array<SharedGroup, 3>& shared_groups() {
  static const std::array<SharedGroup, 3> groups = [] {
    std::array<SharedGroup, 3> made{
        {{NID_X9_62_prime256v1, nullptr}, {NID_secp384r1, nullptr}, {NID_secp521r1, nullptr}}};
    for (auto& shared : made) shared.group = EC_GROUP_new_by_curve_name(shared.nid);
    return made;
  }();
  return groups;
}

const EC_GROUP* shared_group(int nid) {
  for (const auto& shared : shared_groups()) {
    if (shared.nid == nid) return shared.group;
  }
  return nullptr;
}

// The built-in EC key decoder, except that a key on a shared named curve copies the shared
// group instead of building the curve again from its constants: that build (Montgomery set-up
// of the field and of the order) was half of a certificate key's decode. Other curves, SM2's
// included, and explicit parameters are read as libcrypto's own decoder reads them.
int pub_decode(EVP_PKEY* pkey, const X509_PUBKEY* pub) {
  const unsigned char* point = nullptr;
  int length = 0;
  X509_ALGOR* algorithm = nullptr;
  if (X509_PUBKEY_get0_param(nullptr, &point, &length, &algorithm, pub) != 1) return 0;
  int type = 0;
  const void* parameter = nullptr;
  X509_ALGOR_get0(nullptr, &type, &parameter, algorithm);
  EC_KEY* key = EC_KEY_new();
  if (!key) return 0;
  bool ok = false;
  if (type == V_ASN1_OBJECT) {
    const int nid = OBJ_obj2nid(static_cast<const ASN1_OBJECT*>(parameter));
    if (const EC_GROUP* shared = shared_group(nid)) {
      ok = EC_KEY_set_group(key, shared) == 1;
    } else if (EC_GROUP* group = EC_GROUP_new_by_curve_name(nid)) {
      EC_GROUP_set_asn1_flag(group, OPENSSL_EC_NAMED_CURVE);
      ok = EC_KEY_set_group(key, group) == 1;
      EC_GROUP_free(group);
    }
  } else if (type == V_ASN1_SEQUENCE) {
    const auto* encoded = static_cast<const ASN1_STRING*>(parameter);
    const unsigned char* der = ASN1_STRING_get0_data(encoded);
    ok = d2i_ECParameters(&key, &der, ASN1_STRING_length(encoded)) != nullptr;
  }
  if (!ok || !o2i_ECPublicKey(&key, &point, length) || EVP_PKEY_assign_EC_KEY(pkey, key) != 1) {
    ERR_raise(ERR_LIB_EC, EC_R_DECODE_ERROR);
    EC_KEY_free(key);
    return 0;
  }
  return 1;
}

// The rest of the public-key functions, which EVP_PKEY_asn1_set_public() sets together with
// the decoder: each as libcrypto's EC method has it.
int pub_encode(X509_PUBKEY* pub, const EVP_PKEY* pkey) {
  const EC_KEY* key = EVP_PKEY_get0_EC_KEY(pkey);
  const EC_GROUP* group = key ? EC_KEY_get0_group(key) : nullptr;
  if (!group) {
    ERR_raise(ERR_LIB_EC, EC_R_MISSING_PARAMETERS);
    return 0;
  }
  int type = V_ASN1_OBJECT;
  void* parameter = nullptr;
  ASN1_STRING* explicit_parameters = nullptr;
  if (const int nid = EC_GROUP_get_curve_name(group); EC_GROUP_get_asn1_flag(group) && nid) {
    ASN1_OBJECT* oid = OBJ_nid2obj(nid);
    if (!oid || OBJ_length(oid) == 0) {
      ERR_raise(ERR_LIB_EC, EC_R_MISSING_OID);
      return 0;
    }
    parameter = oid;
  } else {
    unsigned char* der = nullptr;
    const int der_length = i2d_ECParameters(key, &der);
    explicit_parameters = der_length > 0 ? ASN1_STRING_new() : nullptr;
    if (!explicit_parameters) {
      OPENSSL_free(der);
      ERR_raise(ERR_LIB_EC, ERR_R_EC_LIB);
      return 0;
    }
    ASN1_STRING_set0(explicit_parameters, der, der_length);
    type = V_ASN1_SEQUENCE;
    parameter = explicit_parameters;
  }
  unsigned char* point = nullptr;
  const int point_length = i2o_ECPublicKey(key, &point);
  if (point_length > 0 && X509_PUBKEY_set0_param(pub, OBJ_nid2obj(EVP_PKEY_EC), type, parameter,
                                                 point, point_length) == 1) {
    return 1;
  }
  ASN1_STRING_free(explicit_parameters);
  OPENSSL_free(point);
  return 0;
}

int pub_cmp(const EVP_PKEY* a, const EVP_PKEY* b) {
  const EC_KEY* key_a = EVP_PKEY_get0_EC_KEY(a);
  const EC_KEY* key_b = EVP_PKEY_get0_EC_KEY(b);
  const EC_GROUP* group = key_b ? EC_KEY_get0_group(key_b) : nullptr;
  const EC_POINT* point_a = key_a ? EC_KEY_get0_public_key(key_a) : nullptr;
  const EC_POINT* point_b = key_b ? EC_KEY_get0_public_key(key_b) : nullptr;
  if (!group || !point_a || !point_b) return -2;
  switch (EC_POINT_cmp(group, point_a, point_b, nullptr)) {
    case 0:
      return 1;
    case 1:
      return 0;
    default:
      return -2;
  }
}

int pub_print(BIO* out, const EVP_PKEY* pkey, int indent, ASN1_PCTX*) {
  const EC_KEY* key = EVP_PKEY_get0_EC_KEY(pkey);
  const EC_GROUP* group = key ? EC_KEY_get0_group(key) : nullptr;
  if (!group) {
    ERR_raise(ERR_LIB_EC, ERR_R_PASSED_NULL_PARAMETER);
    return 0;
  }
  unsigned char* point = nullptr;
  std::size_t point_length = 0;
  if (EC_KEY_get0_public_key(key) &&
      (point_length = EC_KEY_key2buf(key, EC_KEY_get_conv_form(key), &point, nullptr)) == 0) {
    ERR_raise(ERR_LIB_EC, ERR_R_EC_LIB);
    return 0;
  }
  const bool ok =
      BIO_indent(out, indent, 128) == 1 &&
      BIO_printf(out, "Public-Key: (%d bit)\n", EC_GROUP_order_bits(group)) > 0 &&
      (point_length == 0 || (BIO_printf(out, "%*spub:\n", indent, "") > 0 &&
                             ASN1_buf_print(out, point, point_length, indent + 4) == 1)) &&
      ECPKParameters_print(out, group, indent) == 1;
  OPENSSL_free(point);
  if (!ok) ERR_raise(ERR_LIB_EC, ERR_R_EC_LIB);
  return ok ? 1 : 0;
}

int pkey_size(const EVP_PKEY* pkey) {
  return ECDSA_size(EVP_PKEY_get0_EC_KEY(pkey));
}

int pkey_bits(const EVP_PKEY* pkey) {
  return EC_GROUP_order_bits(EC_KEY_get0_group(EVP_PKEY_get0_EC_KEY(pkey)));
}

// libcrypto's EC ASN.1 method, copied whole, with the public-key functions above; registered as
// the application's method for EC keys, which libcrypto looks up before its own. Kept for the
// life of the process.
bool register_ec_asn1_method() {
  const EVP_PKEY_ASN1_METHOD* builtin = EVP_PKEY_asn1_find(nullptr, EVP_PKEY_EC);
  if (!builtin) return false;
  for (const auto& shared : shared_groups()) {
    if (!shared.group) return false;
  }
  EVP_PKEY_ASN1_METHOD* method = EVP_PKEY_asn1_new(EVP_PKEY_EC, 0, "EC", "OpenSSL EC algorithm");
  if (!method) return false;
  EVP_PKEY_asn1_copy(method, builtin);
  EVP_PKEY_asn1_set_public(method, pub_decode, pub_encode, pub_cmp, pub_print, pkey_size,
                           pkey_bits);
  if (EVP_PKEY_asn1_add0(method) != 1) {
    EVP_PKEY_asn1_free(method);
    return false;
  }
  return true;
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
  // Without its own method the engine still serves; certificate keys then build their group.
  register_ec_asn1_method();
  return true;
}

}  // namespace

bool use_builtin_ec_keys() {
  static const bool on = install();
  return on;
}

}  // namespace portcullis::tls
