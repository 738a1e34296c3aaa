/// \file call_queue.hpp
/// Runs an object's blocking C++ calls (sends, settlements, opens, waits under
/// a retry policy) off the event loop, one at a time, in the order JavaScript
/// made them: two sends to a device without an `await` between them are
/// enqueued in that order, and settlements follow delivery order as MQTT wants
/// (SPEC 1.8). One thread, started by the first call and joined by `drain()`.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>

namespace devicebound::node {

class call_queue {
 public:
  call_queue() = default;
  call_queue(const call_queue&) = delete;
  call_queue& operator=(const call_queue&) = delete;
  ~call_queue() { drain(); }

  /// Queues `f` to run after every call queued before it.
  void submit(std::function<void()> f) {
    std::lock_guard<std::mutex> g(mutex_);
    queue_.push_back(std::move(f));
    if (running_) {
      cv_.notify_one();
      return;
    }
    if (thread_.joinable())
      thread_.join();  // it left its loop (running_ is false): only its return is left
    running_ = true;
    thread_ = std::thread([this] { work(); });
  }

  /// Runs what is queued, then joins the thread. Later calls start a new one.
  void drain() {
    std::unique_lock<std::mutex> lock(mutex_);
    stopping_ = true;
    while (thread_.joinable()) {
      std::thread t = std::move(thread_);
      lock.unlock();
      cv_.notify_all();
      t.join();
      lock.lock();  // a submit during the join may have started another thread
    }
    stopping_ = false;
  }

 private:
  void work() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      cv_.wait(lock, [this] { return !queue_.empty() || stopping_; });
      if (queue_.empty())
        break;  // stopping, nothing left
      auto f = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      f();
      f = nullptr;  // what it captured goes outside the lock
      lock.lock();
    }
    running_ = false;
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  std::thread thread_;
  bool running_ = false;
  bool stopping_ = false;
};

}  // namespace devicebound::node
