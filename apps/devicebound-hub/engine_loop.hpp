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

/// What the engine loop drives, one batch at a time: one router over one hub
/// (`router_target`), or the partitions a cluster instance owns
/// (cluster_engine.hpp). Used on the engine thread only.
class batch_target {
 public:
  virtual ~batch_target() = default;
  virtual result<void> begin_batch() = 0;
  virtual void handle(inbound in, time_point now) = 0;
  virtual void tick(time_point now) = 0;
  virtual result<std::vector<outbound>> end_batch() = 0;
  virtual std::optional<time_point> next_deadline() const = 0;
  /// Inside a batch: registers the configured devices that are absent.
  virtual void register_configured(const std::vector<std::string>& devices) = 0;
};

/// One router (one hub, one store) as a `batch_target`.
class router_target final : public batch_target {
 public:
  explicit router_target(router& r) noexcept : router_(&r) {}
  result<void> begin_batch() override { return router_->begin_batch(); }
  void handle(inbound in, time_point now) override { router_->handle(std::move(in), now); }
  void tick(time_point now) override { router_->tick(now); }
  result<std::vector<outbound>> end_batch() override { return router_->end_batch(); }
  std::optional<time_point> next_deadline() const override { return router_->next_deadline(); }
  void register_configured(const std::vector<std::string>& devices) override {
    router_->register_configured(devices);
  }

 private:
  router* router_;
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
  /// Runs `doors` over `t`, which outlives the loop.
  engine_loop(batch_target& t, std::vector<front_door*> doors);

  /// Serves until `stop`. The configured devices are registered first.
  loop_end run(const std::vector<std::string>& devices);
  /// Thread-safe: ends `run` and interrupts a door's connect.
  void stop();

 private:
  std::optional<router_target> own_;  ///< the router's adapter, when given a router
  batch_target* router_;
  std::vector<front_door*> doors_;
  request_queue queue_;
  std::stop_source stopping_;
};

}  // namespace devicebound::hubd
