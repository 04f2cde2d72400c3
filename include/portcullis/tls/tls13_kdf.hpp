#pragma once
// The TLS 1.3 key schedule's KDF ("TLS13-KDF") for the handshake library context.
//
// libssl 3.0 derives every TLS 1.3 secret, key and IV (about twenty per full handshake) through
// EVP_KDF "TLS13-KDF": for each it fetches the KDF, makes a context, passes the digest by name
// (which the default provider fetches again) and runs HMAC through a fresh HMAC_CTX, three
// digest contexts and their allocations. That framework, not the hashing, was a tenth of a full
// handshake's instructions. This implementation takes the same parameters and gives the same
// bytes (RFC 5869 HKDF with the RFC 8446 HkdfLabel, as the default provider's): it keeps the
// digest it fetched once, and computes HMAC over one reused digest context.
//
// Parameters: mode (EXTRACT_ONLY or EXPAND_ONLY, as an int or by name), digest, properties, key,
// salt, prefix, label, data. EXTRACT_ONLY is the TLS 1.3 "Derive-Secret(salt, "derived", "")
// then HKDF-Extract" step, with a zero key of the digest's length when none is given.

#include <openssl/core.h>

namespace portcullis::tls {

// The provider dispatch table; `digests` is the library context digests are fetched from (one
// that does not offer this KDF itself). Set once, before the table is used.
const OSSL_DISPATCH* tls13_kdf_functions(OSSL_LIB_CTX* digests);

}  // namespace portcullis::tls
