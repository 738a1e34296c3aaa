// devicebound-hub --cluster: one instance of a partitioned hub (docs/scale-out.md,
// "The hub in a cluster").
//
// The instance serves the partitions it owns. Each owned partition k is one hub
// engine on its own `postgres_store` connection (partition-scoped rows, writes
// fenced by the lease epoch of its `claimed` event) with its own router. The
// `cluster_engine` is the engine loop's `batch_target`: it ticks the ownership
// controller on the engine thread, opens a partition on `claimed` and drops it on
// `lost` or `released`, and sends every device-scoped request to the router of
// `partition_of(device, K)`. A request for a partition this instance does not
// serve is forwarded to its owner through RabbitMQ when forwarding is configured
// (`--forward-amqp-url`, forward.hpp; docs/scale-out.md, "Forwarding requests"),
// else answered 503001 (`server_busy`: AMQP `com.microsoft:timeout`, HTTPS 503,
// both retried by the SDKs) naming the partition and its current owner. A request
// that came through the MQTT door is never answered by a non-owner: every
// instance's MQTT door receives it, and the owner answers.
//
// The identity registry is hub-wide: one `registry` object shared by every
// partition's router, reloaded from PostgreSQL whenever a partition is claimed
// or a commit failed; a change is written by the partition that handles the
// request (a device's identity by its own partition), under that partition's lease.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <devicebound/clock.hpp>
#include <devicebound/cluster/ownership.hpp>
#include <devicebound/cluster/postgres_leases.hpp>
#include <devicebound/hub.hpp>
#include <devicebound/registry.hpp>
#include <devicebound/store/postgres.hpp>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "config.hpp"
#include "engine_loop.hpp"
#include "forward.hpp"
#include "router.hpp"

namespace devicebound::hubd {

/// The clock of the ownership controller: the engine's, never going back.
struct engine_clock {
  time_point now() const;
  mutable time_point last{};
};

class cluster_engine final : public batch_target {
 public:
  using controller = cluster::ownership_controller<cluster::postgres_leases, engine_clock>;

  /// Opens the lease connection and the registry's view. `base` is the router
  /// options every partition's router starts from (registry, view, log, ...);
  /// `seed` what the registry lacks (policies: by partition 0's owner; devices:
  /// by their partition's owner). Errors name the problem.
  static result<std::unique_ptr<cluster_engine>> create(const daemon_config& cfg,
                                                        router_options base, identity_seed seed);
  cluster_engine(const cluster_engine&) = delete;
  cluster_engine& operator=(const cluster_engine&) = delete;
  ~cluster_engine() override;

  result<void> begin_batch() override;
  void handle(inbound in, time_point now) override;
  void tick(time_point now) override;
  result<std::vector<outbound>> end_batch() override;
  std::optional<time_point> next_deadline() const override;
  void register_configured(const std::vector<std::string>& devices) override;

  /// SIGTERM, once the loop ended (everything it applied is committed and
  /// released): releases every lease and closes the partitions.
  void shutdown();
  /// The lease owner name: `--instance`, PID and start time.
  const std::string& owner() const noexcept { return owner_; }
  /// The partitions served now, ascending.
  std::vector<std::uint32_t> serving() const;
  /// Forward what this instance does not serve through `link` (nullptr: answer
  /// 503001); `mqtt`: the MQTT door, whose requests a non-owner leaves unanswered.
  /// Before the loop runs.
  void set_forwarding(forward_link* link, std::optional<door_id> mqtt);

 private:
  struct partition;

  cluster_engine(const daemon_config& cfg, router_options base, identity_seed seed);

  void ownership_tick(time_point now);
  void on_events(const std::vector<cluster::ownership_event>& events, time_point now);
  result<void> open_partition(std::uint32_t k, std::uint64_t epoch, time_point now);
  void close_partition(std::uint32_t k, std::string_view why);
  void fail_partition(std::uint32_t k, const error& e, const std::vector<reply_to>& asked,
                      std::vector<outbound>& out);
  void reload_registry();
  void log_serving();
  /// The partition `in` goes to; nullopt: not device-scoped.
  std::optional<result<std::uint32_t>> partition_of_request(const inbound& in) const;
  /// Keeps the last presence event of each device, to replay it into the
  /// device's partition when this instance claims it.
  void remember_presence(const inbound& in);
  partition* serving_partition(std::uint32_t k, time_point now);
  error not_served(std::uint32_t k, std::string_view what);
  void answer(const reply_to& to, decltype(reply::what) what);
  void route(partition& p, inbound in, time_point now);
  /// A forwarded request for partition k, served here: false when it is
  /// answered from the de-duplication cache or waits for the same request's answer.
  bool admit_forwarded(std::uint32_t k, const inbound& in);
  bool forwarded(const reply_to& to) const {
    return link_ && to.door == link_->door() && !to.address.empty();
  }
  /// A forwarded request not run here (its reply comes from the next owner), or
  /// answered 503001 when `requeue` is false.
  void give_back(const reply_to& to, bool requeue, const error& e, std::vector<outbound>& out);

  daemon_config cfg_;
  router_options base_;
  identity_seed seed_;
  std::string owner_;
  std::unique_ptr<postgres_store> lease_store_;  ///< the controller's own connection
  std::optional<controller> control_;
  std::map<std::uint32_t, std::unique_ptr<partition>> parts_;
  /// Held but not serving (opening failed, or a commit failed for another reason
  /// than a lost lease): reopened at the next ownership tick, at this epoch.
  std::map<std::uint32_t, std::uint64_t> broken_;
  std::vector<outbound> direct_;  ///< answers of this batch given without a partition
  std::vector<outbound> ready_;   ///< committed output of partitions opened meanwhile
  std::map<door_id, bool> doors_up_;
  std::unordered_map<std::string, inbound> present_;  ///< device -> its device_present
  std::map<std::string, std::pair<door_id, feedback_attach_request>> attached_;  ///< by service
  std::unordered_map<std::string, std::uint32_t> feedback_tokens_;      ///< lock token -> partition
  std::map<std::uint32_t, std::pair<std::string, time_point>> owners_;  ///< k -> owner, read at
  std::vector<std::uint32_t> last_logged_;
  bool reload_registry_ = false;
  bool in_batch_ = false;

  forward_link* link_ = nullptr;
  std::optional<door_id> mqtt_door_;
  /// The answers given to the most recent forwarded request ids, per partition:
  /// a redelivered or re-sent request is answered from here, not run twice.
  struct answer_cache {
    static constexpr std::size_t capacity = 4096;
    std::unordered_map<std::string, forward::answer_what> by_id;
    std::deque<std::string> order;
    void put(const std::string& id, const forward::answer_what& w);
  };
  std::map<std::uint32_t, answer_cache> answered_;
  /// Forwarded request ids run in this batch -> the same request delivered again meanwhile.
  std::unordered_map<std::string, std::vector<reply_to>> running_;
};

}  // namespace devicebound::hubd
