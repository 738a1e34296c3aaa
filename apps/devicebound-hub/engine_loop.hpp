// The one engine thread: every front door queues what it decoded here; the
// loop takes everything queued at once, applies it through the router as one
// batch (one store commit), and then releases each door's replies and pushes.
#pragma once

#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <stop_token>
#include <vector>

#include "front_door.hpp"
#include "router.hpp"

namespace devicebound::hubd {

/// What the doors hand to the engine thread. Thread-safe.
class request_queue {
 public:
  void push(inbound in);
  void request_stop();
  bool stop_requested() const;
  /// Waits until something arrives, stop is requested or `deadline` passes;
  /// moves everything queued into `out` (appended, in arrival order).
  void wait(time_point deadline, std::vector<inbound>& out);

 private:
  mutable std::mutex m_;
  std::condition_variable_any cv_;
  std::deque<inbound> q_;
  bool stop_ = false;
};

/// Why `engine_loop::run` returned.
struct loop_end {
  enum class cause : std::uint8_t { stopped, door_failed, store_failed } why = cause::stopped;
  std::optional<error> detail;
};

class engine_loop {
 public:
  /// Runs `doors` (each given its index as its id) over `r`; both outlive the loop.
  engine_loop(router& r, std::vector<front_door*> doors);

  /// Serves until `stop`. The configured devices are registered first.
  loop_end run(const std::vector<std::string>& devices);
  /// Thread-safe: ends `run` and interrupts a door's connect.
  void stop();

 private:
  router* router_;
  std::vector<front_door*> doors_;
  request_queue queue_;
  std::stop_source stopping_;
};

}  // namespace devicebound::hubd
