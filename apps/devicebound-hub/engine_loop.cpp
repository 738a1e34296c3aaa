#include "engine_loop.hpp"

#include <algorithm>
#include <devicebound/clock.hpp>
#include <span>
#include <utility>

namespace devicebound::hubd {

void request_queue::push(inbound in) {
  {
    std::lock_guard<std::mutex> g(m_);
    q_.push_back(std::move(in));
  }
  cv_.notify_one();
}

void request_queue::request_stop() {
  {
    std::lock_guard<std::mutex> g(m_);
    stop_ = true;
  }
  cv_.notify_all();
}

bool request_queue::stop_requested() const {
  std::lock_guard<std::mutex> g(m_);
  return stop_;
}

void request_queue::wait(time_point deadline, std::vector<inbound>& out) {
  system_clock clock;
  std::unique_lock<std::mutex> g(m_);
  devicebound::wait_until(clock, g, cv_, deadline, [&] { return !q_.empty() || stop_; });
  while (!q_.empty()) {
    out.push_back(std::move(q_.front()));
    q_.pop_front();
  }
}

engine_loop::engine_loop(router& r, std::vector<front_door*> doors)
    : own_(std::in_place, r), router_(&*own_), doors_(std::move(doors)) {}

engine_loop::engine_loop(batch_target& t, std::vector<front_door*> doors)
    : router_(&t), doors_(std::move(doors)) {}

void engine_loop::stop() {
  stopping_.request_stop();
  queue_.request_stop();
}

loop_end engine_loop::run(const std::vector<std::string>& devices) {
  const auto failed = [](error e) {
    return loop_end{loop_end::cause::store_failed, std::move(e)};
  };
  std::vector<outbound> released;
  // Hands each door its own items, in order.
  const auto release = [&](std::vector<outbound>& items) {
    if (items.empty())
      return;
    for (std::size_t d = 0; d < doors_.size(); ++d) {
      released.clear();
      for (auto& o : items)
        if (door_of(o) == every_door)
          released.push_back(o);  // copied: every door gets it
        else if (door_of(o) == d)
          released.push_back(std::move(o));
      if (!released.empty())
        doors_[d]->release(released);
    }
  };

  if (auto r = router_->begin_batch(); !r)
    return failed(r.error());
  router_->register_configured(devices);
  auto first = router_->end_batch();
  if (!first)
    return failed(first.error());

  for (std::size_t d = 0; d < doors_.size(); ++d)
    if (auto r = doors_[d]->start(
            static_cast<door_id>(d), [this](inbound in) { queue_.push(std::move(in)); },
            stopping_.get_token());
        !r)
      return {loop_end::cause::door_failed, r.error()};

  system_clock clock;
  time_point last = clock.now();
  const auto monotonic = [&] {
    last = std::max(last, clock.now());
    return last;
  };
  std::vector<inbound> batch;
  while (!queue_.stop_requested()) {
    time_point deadline = router_->next_deadline().value_or(time_point::max());
    for (auto* door : doors_) {
      deadline = std::min(deadline, door->poll(monotonic()));
      if (auto f = door->failure())
        return {loop_end::cause::door_failed, std::move(*f)};
      if (queue_.stop_requested())
        return {};
    }
    queue_.wait(deadline, batch);
    const time_point now = monotonic();
    // One batch: every request that arrived, the timers and the pushes share one
    // store transaction; what they produce goes out after it committed.
    if (auto r = router_->begin_batch(); !r)
      return failed(r.error());
    for (auto& in : batch)
      router_->handle(std::move(in), now);
    batch.clear();
    router_->tick(now);
    auto out = router_->end_batch();
    if (!out)
      return failed(out.error());
    release(*out);
  }
  return {};
}

}  // namespace devicebound::hubd
