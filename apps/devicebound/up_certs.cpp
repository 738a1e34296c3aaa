#include "up_certs.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <filesystem>
#include <memory>

namespace devicebound::cli {

namespace {

template <auto free_fn>
struct deleter {
  template <class T>
  void operator()(T* p) const noexcept {
    free_fn(p);
  }
};
using pkey_ptr = std::unique_ptr<EVP_PKEY, deleter<EVP_PKEY_free>>;
using x509_ptr = std::unique_ptr<X509, deleter<X509_free>>;
using ext_ptr = std::unique_ptr<X509_EXTENSION, deleter<X509_EXTENSION_free>>;
using bio_ptr = std::unique_ptr<BIO, deleter<BIO_free_all>>;

constexpr long day = 24L * 60 * 60;
constexpr long ca_lifetime = 10L * 365 * day;
constexpr long server_lifetime = 825L * day;  // what browsers and Apple's TLS accept
constexpr long renew_before = 30L * day;

std::string openssl_error(const std::string& what) {
  const unsigned long e = ERR_get_error();
  char buf[256] = "";
  if (e != 0)
    ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return what + (e != 0 ? std::string(": ") + buf : std::string());
}

bool is_ip(const std::string& name) {
  unsigned char buf[16];
  return ::inet_pton(AF_INET, name.c_str(), buf) == 1 ||
         ::inet_pton(AF_INET6, name.c_str(), buf) == 1;
}

/// ECDSA P-256: every SDK, mosquitto and Qpid Proton take it, and it is fast to make.
pkey_ptr new_key() {
  return pkey_ptr(EVP_EC_gen("P-256"));
}

bool add_ext(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  ext_ptr ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
  return ext && X509_add_ext(cert, ext.get(), -1) == 1;
}

/// A certificate for `key` named `common_name`, valid from an hour ago (clock
/// skew) for `lifetime` seconds, not yet signed.
x509_ptr new_cert(EVP_PKEY* key, const std::string& common_name, long lifetime) {
  x509_ptr cert(X509_new());
  if (!cert || X509_set_version(cert.get(), 2) != 1)
    return nullptr;
  // A random 127-bit serial: two certificates of two runs never share one.
  unsigned char serial[16];
  if (RAND_bytes(serial, sizeof serial) != 1)
    return nullptr;
  serial[0] &= 0x7f;
  std::unique_ptr<BIGNUM, deleter<BN_free>> bn(BN_bin2bn(serial, sizeof serial, nullptr));
  if (!bn || !BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert.get())))
    return nullptr;
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -60L * 60);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), lifetime);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>("devicebound up"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1,
                             0);
  if (X509_set_pubkey(cert.get(), key) != 1)
    return nullptr;
  return cert;
}

/// Writes `text` to `path` through a temporary file and a rename, `mode` from the start.
std::string write_file(const std::string& path, const std::string& text, mode_t mode) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  // The mode even if a stale temporary file of another mode was there (keys: 0600).
  if (fd >= 0 && ::fchmod(fd, mode) != 0) {
    ::close(fd);
    return "cannot set the mode of " + tmp;
  }
  if (fd < 0)
    return "cannot write " + tmp;
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n <= 0) {
      ::close(fd);
      return "cannot write " + tmp;
    }
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0 || std::rename(tmp.c_str(), path.c_str()) != 0)
    return "cannot write " + path;
  return {};
}

std::string pem_of(X509* cert) {
  bio_ptr b(BIO_new(BIO_s_mem()));
  if (!b || PEM_write_bio_X509(b.get(), cert) != 1)
    return {};
  char* data = nullptr;
  const long n = BIO_get_mem_data(b.get(), &data);
  return std::string(data, static_cast<std::size_t>(n));
}

std::string pem_of(EVP_PKEY* key) {
  bio_ptr b(BIO_new(BIO_s_mem()));
  if (!b || PEM_write_bio_PrivateKey(b.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1)
    return {};
  char* data = nullptr;
  const long n = BIO_get_mem_data(b.get(), &data);
  return std::string(data, static_cast<std::size_t>(n));
}

x509_ptr read_cert(const std::string& path) {
  bio_ptr b(BIO_new_file(path.c_str(), "r"));
  return x509_ptr(b ? PEM_read_bio_X509(b.get(), nullptr, nullptr, nullptr) : nullptr);
}

pkey_ptr read_key(const std::string& path) {
  bio_ptr b(BIO_new_file(path.c_str(), "r"));
  return pkey_ptr(b ? PEM_read_bio_PrivateKey(b.get(), nullptr, nullptr, nullptr) : nullptr);
}

std::string make_ca(const tls_files& files) {
  pkey_ptr key = new_key();
  if (!key)
    return openssl_error("cannot make the CA key");
  x509_ptr cert = new_cert(key.get(), "devicebound up local CA", ca_lifetime);
  if (!cert)
    return openssl_error("cannot make the CA certificate");
  X509_set_issuer_name(cert.get(), X509_get_subject_name(cert.get()));
  if (!add_ext(cert.get(), cert.get(), NID_basic_constraints, "critical,CA:TRUE,pathlen:0") ||
      !add_ext(cert.get(), cert.get(), NID_key_usage, "critical,keyCertSign,cRLSign") ||
      !add_ext(cert.get(), cert.get(), NID_subject_key_identifier, "hash") ||
      X509_sign(cert.get(), key.get(), EVP_sha256()) == 0)
    return openssl_error("cannot sign the CA certificate");
  if (auto e = write_file(files.ca_key, pem_of(key.get()), 0600); !e.empty())
    return e;
  return write_file(files.ca_cert, pem_of(cert.get()), 0644);
}

/// The existing server certificate serves: it names every name, is signed by
/// this CA and does not expire soon.
bool server_cert_serves(const tls_files& files, X509* ca, const std::vector<std::string>& names) {
  x509_ptr cert = read_cert(files.server_cert);
  if (!cert || !std::filesystem::exists(files.server_key))
    return false;
  if (X509_check_issued(ca, cert.get()) != X509_V_OK)
    return false;
  const std::time_t soon = std::time(nullptr) + renew_before;
  if (X509_cmp_time(X509_get0_notAfter(cert.get()), const_cast<std::time_t*>(&soon)) <= 0)
    return false;
  for (const auto& n : names) {
    const int ok = is_ip(n) ? X509_check_ip_asc(cert.get(), n.c_str(), 0)
                            : X509_check_host(cert.get(), n.c_str(), n.size(), 0, nullptr);
    if (ok != 1)
      return false;
  }
  return true;
}

std::string make_server(const tls_files& files, X509* ca, EVP_PKEY* ca_key,
                        const std::vector<std::string>& names) {
  pkey_ptr key = new_key();
  if (!key)
    return openssl_error("cannot make the server key");
  x509_ptr cert = new_cert(key.get(), names.empty() ? "localhost" : names.front(), server_lifetime);
  if (!cert)
    return openssl_error("cannot make the server certificate");
  X509_set_issuer_name(cert.get(), X509_get_subject_name(ca));
  std::string san;
  for (const auto& n : names)
    san += (san.empty() ? "" : ",") + std::string(is_ip(n) ? "IP:" : "DNS:") + n;
  if (!add_ext(cert.get(), ca, NID_basic_constraints, "critical,CA:FALSE") ||
      !add_ext(cert.get(), ca, NID_key_usage, "critical,digitalSignature,keyAgreement") ||
      !add_ext(cert.get(), ca, NID_ext_key_usage, "serverAuth") ||
      !add_ext(cert.get(), ca, NID_subject_key_identifier, "hash") ||
      !add_ext(cert.get(), ca, NID_authority_key_identifier, "keyid:always") ||
      !add_ext(cert.get(), ca, NID_subject_alt_name, san.c_str()) ||
      X509_sign(cert.get(), ca_key, EVP_sha256()) == 0)
    return openssl_error("cannot sign the server certificate for " + san);
  if (auto e = write_file(files.server_key, pem_of(key.get()), 0600); !e.empty())
    return e;
  // The chain: some clients want the issuer sent along.
  return write_file(files.server_cert, pem_of(cert.get()) + pem_of(ca), 0644);
}

}  // namespace

std::string ensure_certificates(const tls_files& files, const std::vector<std::string>& names,
                                bool& made_ca, bool& made_server) {
  made_ca = made_server = false;
  if (!std::filesystem::exists(files.ca_cert) || !std::filesystem::exists(files.ca_key)) {
    if (auto e = make_ca(files); !e.empty())
      return e;
    made_ca = true;
  }
  x509_ptr ca = read_cert(files.ca_cert);
  pkey_ptr ca_key = read_key(files.ca_key);
  if (!ca || !ca_key)
    return openssl_error("cannot read the CA " + files.ca_cert + " / " + files.ca_key);
  if (!made_ca && server_cert_serves(files, ca.get(), names))
    return {};
  made_server = true;
  return make_server(files, ca.get(), ca_key.get(), names);
}

}  // namespace devicebound::cli
