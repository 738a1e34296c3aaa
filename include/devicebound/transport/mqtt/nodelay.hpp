/// \file transport/mqtt/nodelay.hpp
/// TCP_NODELAY for Paho's sockets. Paho has no option for it and never sets
/// it; with Nagle's algorithm and delayed ACKs a QoS 1 round trip on loopback
/// takes ~88 ms instead of ~0.2 ms (docs/mqtt-transport.md). After each
/// CONNACK the session sets it on this process's TCP sockets connected to the
/// broker's address.
#pragma once

#include <dirent.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <charconv>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace devicebound::mqtt::detail {

/// The addresses `host:port` resolves to; empty when it does not resolve.
inline std::vector<sockaddr_storage> resolve_peers(const std::string& host, std::uint16_t port) {
  std::vector<sockaddr_storage> out;
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  if (::getaddrinfo(host.c_str(), service.c_str(), &hints, &res) != 0)
    return out;
  for (addrinfo* a = res; a; a = a->ai_next) {
    if (a->ai_addrlen > sizeof(sockaddr_storage))
      continue;
    sockaddr_storage s{};
    std::memcpy(&s, a->ai_addr, a->ai_addrlen);
    out.push_back(s);
  }
  ::freeaddrinfo(res);
  return out;
}

/// Whether two socket addresses name the same IP address and port.
inline bool same_endpoint(const sockaddr_storage& a, const sockaddr_storage& b) {
  if (a.ss_family != b.ss_family)
    return false;
  if (a.ss_family == AF_INET) {
    sockaddr_in x{}, y{};
    std::memcpy(&x, &a, sizeof x);
    std::memcpy(&y, &b, sizeof y);
    return x.sin_port == y.sin_port && x.sin_addr.s_addr == y.sin_addr.s_addr;
  }
  if (a.ss_family == AF_INET6) {
    sockaddr_in6 x{}, y{};
    std::memcpy(&x, &a, sizeof x);
    std::memcpy(&y, &b, sizeof y);
    return x.sin6_port == y.sin6_port &&
           std::memcmp(&x.sin6_addr, &y.sin6_addr, sizeof x.sin6_addr) == 0;
  }
  return false;
}

/// The port of an IPv4/IPv6 socket address (host order), or 0.
inline std::uint16_t port_of(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET) {
    sockaddr_in x{};
    std::memcpy(&x, &a, sizeof x);
    return ntohs(x.sin_port);
  }
  if (a.ss_family == AF_INET6) {
    sockaddr_in6 x{};
    std::memcpy(&x, &a, sizeof x);
    return ntohs(x.sin6_port);
  }
  return 0;
}

/// This process's open file descriptors (from /proc/self/fd; else 0..1023).
inline std::vector<int> open_fds() {
  std::vector<int> fds;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    const int own = ::dirfd(d);
    while (const dirent* e = ::readdir(d)) {
      int fd = -1;
      const std::string_view name(e->d_name);
      const auto [p, ec] = std::from_chars(name.data(), name.data() + name.size(), fd);
      if (ec == std::errc{} && p == name.data() + name.size() && fd != own)
        fds.push_back(fd);
    }
    ::closedir(d);
    return fds;
  }
  for (int fd = 0; fd < 1024; ++fd)
    fds.push_back(fd);
  return fds;
}

/// The peer of a connected TCP socket, or nullopt for anything else.
inline std::optional<sockaddr_storage> tcp_peer(int fd) {
  int type = 0;
  socklen_t len = sizeof type;
  if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM)
    return std::nullopt;
  sockaddr_storage peer{};
  socklen_t plen = sizeof peer;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &plen) != 0)
    return std::nullopt;
  if (peer.ss_family != AF_INET && peer.ss_family != AF_INET6)
    return std::nullopt;
  return peer;
}

/// Sets TCP_NODELAY on every TCP socket of this process connected to one of
/// `peers` (when `peers` is empty: to port `port` on any address). Paho has no
/// option for it and never sets it; Nagle's algorithm with delayed ACKs turns a
/// sub-millisecond QoS 1 round trip into ~88 ms. Returns how many sockets it set.
inline int set_tcp_nodelay_to(const std::vector<sockaddr_storage>& peers, std::uint16_t port) {
  int n = 0;
  for (const int fd : open_fds()) {
    const auto peer = tcp_peer(fd);
    if (!peer)
      continue;
    bool match = false;
    if (peers.empty()) {
      match = port_of(*peer) == port;
    } else {
      for (const auto& p : peers)
        match = match || same_endpoint(*peer, p);
    }
    if (!match)
      continue;
    int one = 1;
    if (::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0)
      ++n;
  }
  return n;
}

}  // namespace devicebound::mqtt::detail
