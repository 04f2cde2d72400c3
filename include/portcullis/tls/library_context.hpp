#pragma once
// The OpenSSL library context that server TLS contexts are created in.
//
// OpenSSL 3.0 decodes the public key of every certificate it parses, and each decode sets up
// a decoder chain from scratch: it walks every key manager and every decoder the library
// context offers, and every pair of decoders, by name (3.1 caches that set-up; 3.0 does not). A
// full mTLS handshake parses the client's leaf and intermediate (a resumption from a stateless
// ticket, the leaf stored in it), and that set-up was a fifth of a full handshake's CPU. The
// context made here offers the default provider's algorithms unchanged but cuts both walks:
//  - decoders: a certificate only ever holds a DER SubjectPublicKeyInfo, so only the decoders
//    of that structure (12 of 41), less those of key types a TLS peer of OpenSSL 3.0 cannot
//    authenticate with: DH, DHX, X25519 and X448, which only agree keys, and SM2, which is no
//    TLS signature algorithm in 3.0 (a certificate holding one of those keys parses there with
//    no key): 7 remain;
//  - key managers: those of the KDFs and MACs wrapped as EVP_PKEYs, which libssl does not use
//    (TLS1-PRF, HKDF, SCRYPT, SIPHASH, POLY1305, CMAC), DHX and SM2 go: 10 of 18 remain.
// Decoding a certificate then takes 0.72 (P-256) to 0.75 (RSA) of the instructions it took with
// the SubjectPublicKeyInfo cut alone, and gives the same keys. Its TLS13-KDF, which derives every
// TLS 1.3 secret, key and IV, is the gateway's own (tls13_kdf.hpp).
//
// Used only when the process's default context runs the default provider alone (and not in
// FIPS mode): a system that loads other providers through its OpenSSL configuration (FIPS,
// legacy, a hardware module) keeps them, and gets the default context (nullptr).
//
// It has no decoders for private keys (OpenSSL falls back to its legacy code for those there):
// read private keys through the default context and hand the object to the SSL_CTX.

#include <openssl/types.h>

namespace portcullis::tls {

// The context for SSL_CTX_new_ex, built on first use and kept for the life of the process;
// nullptr (the default context) when the default context is not the default provider alone.
// Thread-safe.
OSSL_LIB_CTX* handshake_library_context();

// Whether libctx (nullptr: the default context) runs only the default provider, and the base
// provider at most, with no default "fips=yes" property: the case in which
// handshake_library_context() is a trimmed copy of it rather than nullptr.
bool runs_default_provider_only(OSSL_LIB_CTX* libctx);

}  // namespace portcullis::tls
