/// \file addon_data.hpp
/// Per-environment state of the addon (Node worker threads each have their
/// own): the JS classes it makes values with, the objects whose threads must
/// stop before the environment goes, and the threads that close connections
/// of collected clients off the event loop.
#pragma once

#include <napi.h>

#include <atomic>
#include <functional>
#include <memory>
#include <set>
#include <thread>
#include <utility>
#include <vector>

namespace devicebound::node {

/// Something that owns threads and must stop them before the environment goes.
struct closeable {
  virtual ~closeable() = default;
  /// Stops and joins every thread, synchronously. Idempotent.
  virtual void teardown() = 0;
};

struct addon_data {
  /// `(code: number, message: string) => Error`: the JS layer's error classes.
  Napi::FunctionReference make_error;
  /// The JS `Message` class: received messages are made with it.
  Napi::FunctionReference message_class;
  /// `NativeHub`, to check that an argument is one.
  Napi::FunctionReference hub_class;
  /// Objects whose threads must be stopped when the environment is torn down.
  std::set<closeable*> live;

  /// Runs `f` (closing a collected client's connection, which may wait for a
  /// broker) on a thread of its own, so the garbage collector never waits.
  /// JS thread only.
  void reap(std::function<void()> f) {
    std::erase_if(reapers_, [](reaper& r) {
      if (!r.done->load())
        return false;
      r.thread.join();
      return true;
    });
    auto done = std::make_shared<std::atomic<bool>>(false);
    reapers_.push_back({std::thread([f = std::move(f), done] {
                          f();
                          done->store(true);
                        }),
                        done});
  }

  /// Stops every thread before the environment goes (its cleanup hook).
  void teardown() {
    const std::vector<closeable*> objects(live.begin(), live.end());
    for (auto* c : objects)
      c->teardown();
    for (auto& r : reapers_)
      r.thread.join();
    reapers_.clear();
  }

 private:
  struct reaper {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::vector<reaper> reapers_;
};

inline addon_data& data_of(Napi::Env env) {
  return *env.GetInstanceData<addon_data>();
}

}  // namespace devicebound::node
