/// \file event_log.hpp
/// Values pushed by one thread and awaited by another: tests wait on events,
/// never on time.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <vector>

namespace devicebound::test_support {

template <class T>
class event_log {
 public:
  void push(T v) {
    // Notify under the lock: once a waiter returns, push() no longer touches cv_,
    // so the waiting test may destroy the log.
    std::lock_guard<std::mutex> g(mutex_);
    items_.push_back(std::move(v));
    cv_.notify_all();
  }
  /// Waits (in real time, bounded) until `n` values have been pushed.
  bool wait_for_size(std::size_t n,
                     std::chrono::seconds real_timeout = std::chrono::seconds(60)) const {
    std::unique_lock<std::mutex> g(mutex_);
    return cv_.wait_for(g, real_timeout, [&] { return items_.size() >= n; });
  }
  std::vector<T> items() const {
    std::lock_guard<std::mutex> g(mutex_);
    return items_;
  }
  std::size_t size() const {
    std::lock_guard<std::mutex> g(mutex_);
    return items_.size();
  }

 private:
  mutable std::mutex mutex_;
  mutable std::condition_variable cv_;
  std::vector<T> items_;
};

}  // namespace devicebound::test_support
