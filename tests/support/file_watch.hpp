/// \file file_watch.hpp
/// Waiting on a daemon's log being written instead of on a timer: an inotify
/// watch on the folders of the logs, and `eventually()`, which re-checks a
/// condition each time one of them is written, until a deadline.
#pragma once

#include <poll.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace devicebound::test_support {

/// Reports writes to (and creations of) files in the given folders.
class file_watch {
 public:
  explicit file_watch(const std::vector<std::filesystem::path>& folders)
      : fd_(::inotify_init1(IN_CLOEXEC | IN_NONBLOCK)) {
    if (fd_ < 0)
      throw std::runtime_error("file_watch: inotify_init1 failed");
    for (const auto& f : folders)
      if (::inotify_add_watch(fd_, f.c_str(), IN_MODIFY | IN_CREATE | IN_CLOSE_WRITE) < 0) {
        ::close(fd_);
        throw std::runtime_error("file_watch: cannot watch " + f.string());
      }
  }
  file_watch(const file_watch&) = delete;
  file_watch& operator=(const file_watch&) = delete;
  ~file_watch() { ::close(fd_); }

  /// Waits until a file in the folders is written (true) or `deadline` (false),
  /// and consumes the events that were waiting.
  bool wait(std::chrono::steady_clock::time_point deadline) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(std::max<std::int64_t>(0, left.count()))) <= 0)
      return false;
    std::array<char, 4096> buf{};
    while (::read(fd_, buf.data(), buf.size()) > 0) {
    }
    return true;
  }

 private:
  int fd_;
};

/// Re-checks `done` each time a file in the watched folders is written, until it
/// holds (true) or `deadline` passes (false, after one last check).
template <class Done>
bool eventually(file_watch& watch, std::chrono::steady_clock::time_point deadline, Done&& done) {
  while (!done())
    if (!watch.wait(deadline))
      return done();
  return true;
}

}  // namespace devicebound::test_support
