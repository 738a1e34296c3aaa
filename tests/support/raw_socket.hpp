/// \file tests/support/raw_socket.hpp
/// A blocking client socket to 127.0.0.1 for tests that must put exact bytes on
/// the wire (malformed frames, truncated requests, floods): plain TCP or TLS
/// (OpenSSL, the server's certificate checked against a CA file and the name
/// "localhost"). Every wait is bounded by a time-out and waits on the socket
/// (poll), never by sleeping. Link OpenSSL::SSL.
#pragma once

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

namespace devicebound::test_support {

/// A client TLS context trusting one CA file (shared by many raw_sockets).
class tls_client_context {
 public:
  explicit tls_client_context(const std::string& ca_file) : ctx_(SSL_CTX_new(TLS_client_method())) {
    if (!ctx_ || SSL_CTX_load_verify_locations(ctx_, ca_file.c_str(), nullptr) != 1)
      throw std::runtime_error("cannot load CA file " + ca_file);
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
  }
  ~tls_client_context() { SSL_CTX_free(ctx_); }
  tls_client_context(const tls_client_context&) = delete;
  tls_client_context& operator=(const tls_client_context&) = delete;
  SSL_CTX* get() const noexcept { return ctx_; }

 private:
  SSL_CTX* ctx_;
};

class raw_socket {
 public:
  using ms = std::chrono::milliseconds;

  /// Connects to 127.0.0.1:`port`; with `tls`, also completes the TLS handshake.
  /// `ok()` says whether both worked.
  explicit raw_socket(std::uint16_t port, const tls_client_context* tls = nullptr,
                      ms timeout = ms(5000)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0)
      return;
    const int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
      return;
    if (tls) {
      ssl_ = SSL_new(tls->get());
      SSL_set_fd(ssl_, fd_);
      SSL_set_tlsext_host_name(ssl_, "localhost");
      SSL_set1_host(ssl_, "localhost");
      // Blocking handshake, bounded by SO_RCVTIMEO/SO_SNDTIMEO.
      set_timeouts(timeout);
      if (SSL_connect(ssl_) != 1) {
        ERR_clear_error();
        return;
      }
    }
    connected_ = true;
  }
  ~raw_socket() {
    if (ssl_) {
      SSL_free(ssl_);
    }
    if (fd_ >= 0)
      ::close(fd_);
  }
  raw_socket(const raw_socket&) = delete;
  raw_socket& operator=(const raw_socket&) = delete;

  bool ok() const noexcept { return connected_; }
  bool peer_closed() const noexcept { return eof_; }

  /// Writes all of `bytes`; false if the peer has gone.
  bool send(std::string_view bytes, ms timeout = ms(5000)) {
    if (!connected_)
      return false;
    set_timeouts(timeout);
    while (!bytes.empty()) {
      long n;
      if (ssl_) {
        n = SSL_write(ssl_, bytes.data(), static_cast<int>(bytes.size()));
        if (n <= 0) {
          ERR_clear_error();
          return false;
        }
      } else {
        n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
        if (n <= 0)
          return false;
      }
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }

  /// Tells the peer that nothing more comes (TLS close_notify, then TCP FIN).
  void shutdown_write() {
    if (!connected_)
      return;
    if (ssl_) {
      (void)SSL_shutdown(ssl_);
      ERR_clear_error();
    }
    ::shutdown(fd_, SHUT_WR);
  }

  /// Reads what arrives within `timeout` (at least one byte, or nothing at EOF
  /// or the time-out), appending it to `into`. False at EOF, error or time-out.
  bool read_some(std::string& into, ms timeout) {
    if (!connected_ || eof_)
      return false;
    if (!(ssl_ && SSL_pending(ssl_) > 0)) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0)
        return false;
    }
    char buf[16384];
    long n;
    if (ssl_) {
      set_timeouts(timeout);
      n = SSL_read(ssl_, buf, sizeof buf);
      if (n <= 0) {
        const int e = SSL_get_error(ssl_, static_cast<int>(n));
        const bool timed_out = (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ||
                                (e == SSL_ERROR_SYSCALL && (errno == EAGAIN || errno == EINTR)));
        ERR_clear_error();
        if (timed_out)
          return false;
      }
    } else {
      n = ::recv(fd_, buf, sizeof buf, 0);
      if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return false;
    }
    if (n <= 0) {
      eof_ = true;
      return false;
    }
    into.append(buf, static_cast<std::size_t>(n));
    return true;
  }

  /// Reads until `done(buffer)` holds, the peer closes, or `timeout` passes.
  /// Returns whether `done` held.
  template <class Pred>
  bool read_until(std::string& buffer, Pred done, ms timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!done(buffer)) {
      const auto left = std::chrono::duration_cast<ms>(deadline - std::chrono::steady_clock::now());
      if (left <= ms(0))
        return false;
      if (!read_some(buffer, left) && (eof_ || !connected_))
        return done(buffer);
    }
    return true;
  }

  /// Reads until the peer closes (true) or `timeout` passes (false).
  bool read_until_closed(std::string& buffer, ms timeout) {
    (void)read_until(
        buffer, [&](const std::string&) { return eof_; }, timeout);
    return eof_;
  }

 private:
  void set_timeouts(ms t) {
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(t.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>((t.count() % 1000) * 1000);
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  }

  int fd_ = -1;
  SSL* ssl_ = nullptr;
  bool connected_ = false;
  bool eof_ = false;
};

}  // namespace devicebound::test_support
