#include "cluster_engine.hpp"

#include <unistd.h>

#include <algorithm>
#include <devicebound/cluster/partition.hpp>
#include <type_traits>
#include <utility>

namespace devicebound::hubd {

time_point engine_clock::now() const {
  last = std::max(last, system_clock{}.now());
  return last;
}

struct cluster_engine::partition {
  std::uint32_t k = 0;
  std::uint64_t epoch = 0;
  // destroyed in reverse: the router, then the hub, then the store's connection
  std::unique_ptr<postgres_store> store;
  std::unique_ptr<hub> engine;
  std::unique_ptr<router> rt;
  bool in_batch = false;
  /// Its commit group of this batch is open: begun at the partition's first
  /// request or due timer of the batch, so a partition with nothing to do makes
  /// no round trip to PostgreSQL (no BEGIN, lease check, COMMIT).
  bool begun = false;
  std::optional<error> begin_failed;  ///< why its group could not begin (this batch)
  std::vector<reply_to> asked;        ///< who is waiting for a reply of this batch

  /// Opens the commit group of this batch if it is not open yet; whether it is.
  bool open_group() {
    if (begun || begin_failed)
      return begun;
    if (auto r = rt->begin_batch(); !r)
      begin_failed = r.error();
    else
      begun = true;
    return begun;
  }
};

namespace {

/// The device a request is about; nullopt for hub-wide requests.
std::optional<std::string_view> device_of(const request& r) {
  return std::visit(
      [](const auto& x) -> std::optional<std::string_view> {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, registry_put_request>)
          return std::string_view(x.update.device_id);
        else if constexpr (requires { x.device; })
          return std::string_view(x.device);
        else
          return std::nullopt;
      },
      r);
}

std::string list(const std::vector<std::uint32_t>& ks) {
  std::string s;
  for (auto k : ks) {
    if (!s.empty())
      s += ' ';
    s += std::to_string(k);
  }
  return s.empty() ? "none" : s;
}

}  // namespace

cluster_engine::cluster_engine(const daemon_config& cfg, router_options base, identity_seed seed)
    : cfg_(cfg), base_(std::move(base)), seed_(std::move(seed)) {
  const auto started = std::chrono::duration_cast<std::chrono::milliseconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count();
  owner_ = cfg_.cluster.instance + " pid " + std::to_string(::getpid()) + " start " +
           std::to_string(started);
}

cluster_engine::~cluster_engine() = default;

result<std::unique_ptr<cluster_engine>> cluster_engine::create(const daemon_config& cfg,
                                                               router_options base,
                                                               identity_seed seed) {
  if (auto r = cluster::validate_partition_count(cfg.cluster.partitions); !r)
    return r.error();
  std::unique_ptr<cluster_engine> e(new cluster_engine(cfg, std::move(base), std::move(seed)));
  cluster::ownership_options oo;
  oo.owner = e->owner_;
  oo.partitions = cfg.cluster.partitions;
  oo.ttl = cfg.cluster.lease_ttl;
  oo.renew_interval = cfg.cluster.lease_renew;
  oo.expected_instances = cfg.cluster.expected_instances;
  oo.overflow_after = cfg.cluster.overflow_after;
  if (cfg.cluster.startup_grace)
    oo.startup_grace =
        std::chrono::duration_cast<std::chrono::milliseconds>(*cfg.cluster.startup_grace);
  if (auto r = cluster::validate(oo); !r)  // before connecting: a bad flag is a bad flag
    return r.error();
  postgres_options o;
  o.conninfo = cfg.store.path;
  o.schema = cfg.cluster.schema;
  o.partition = 0;
  o.partitions = cfg.cluster.partitions;
  auto s = postgres_store::open(o);
  if (!s)
    return s.error();
  e->lease_store_ = std::make_unique<postgres_store>(std::move(*s));
  auto c =
      controller::create(std::move(oo), cluster::postgres_leases(*e->lease_store_), engine_clock{});
  if (!c)
    return c.error();
  e->control_.emplace(std::move(*c));
  e->reload_registry();
  return e;
}

std::vector<std::uint32_t> cluster_engine::serving() const {
  std::vector<std::uint32_t> out;
  for (const auto& [k, p] : parts_)
    out.push_back(k);
  return out;
}

// --- logging ---------------------------------------------------------------------------------

namespace {
template <class F>
void say(const router_options& o, log_level l, F&& line) {
  if (o.log && (!o.log_enabled || o.log_enabled(l)))
    o.log(l, line());
}
}  // namespace

void cluster_engine::log_serving() {
  auto now = serving();
  if (now == last_logged_)
    return;
  last_logged_ = now;
  // tests/test_cluster_hub.cpp reads this line (docs/scale-out.md)
  say(base_, log_level::info, [&] {
    return "cluster: instance '" + owner_ + "' serves " + std::to_string(now.size()) + " of " +
           std::to_string(cfg_.cluster.partitions) + " partitions: " + list(now);
  });
}

// --- the registry ----------------------------------------------------------------------------

void cluster_engine::reload_registry() {
  reload_registry_ = false;
  registry* reg = base_.identities;
  if (!reg)
    return;
  // the counter first: a write that lands between the two reads is seen again
  // at the next poll, never missed
  auto version = lease_store_->registry_version();
  auto snap = lease_store_->load_identities();
  if (!snap) {
    say(base_, log_level::error,
        [&] { return "cluster: cannot reload the identity registry: " + snap.error().message; });
    return;
  }
  std::unordered_map<std::string, device_identity> before;
  reg->for_each([&](const device_identity& d) { before.emplace(d.device_id, d); });
  const auto policies_before = reg->policies();
  if (auto r = reg->restore(snap->identities, snap->policies); !r) {
    say(base_, log_level::error,
        [&] { return "cluster: the stored identity registry is unusable: " + r.error().message; });
    return;
  }
  if (version)
    registry_version_ = *version;
  // What moved since the last load: the doors verify again, as after a local
  // write (a device deleted, disabled or re-keyed through another instance).
  credentials_changed changed;
  std::vector<device_revoked> revoked;
  std::size_t added = 0;
  identity_view* v = base_.view;
  reg->for_each([&](const device_identity& d) {
    auto it = before.find(d.device_id);
    if (it == before.end() || !(it->second == d)) {
      if (v)
        v->put_device(d);
      if (it == before.end())
        ++added;
      if (it != before.end()) {
        changed.devices.push_back(d.device_id);
        if (it->second.status == device_status::enabled && d.status != device_status::enabled)
          revoked.push_back(device_revoked{every_door, d.device_id, false});
      }
    }
    if (it != before.end())
      before.erase(it);
  });
  for (const auto& [id, d] : before) {  // gone from the store
    if (v)
      v->erase_device(id);
    changed.devices.push_back(id);
    revoked.push_back(device_revoked{every_door, id, true});
  }
  auto policies_now = reg->policies();
  const bool policies_moved = policies_now != policies_before;
  if (policies_moved) {
    changed.policies = !policies_before.empty();
    if (v)
      v->set_policies(std::move(policies_now));
  }
  if (added > 0 || !changed.devices.empty() || policies_moved)
    say(base_, log_level::info, [&] {
      return "cluster: registry reloaded at version " +
             (registry_version_ ? std::to_string(*registry_version_) : std::string("unknown")) +
             ": " + std::to_string(added) + " device(s) added, " +
             std::to_string(changed.devices.size()) + " changed or removed" +
             (policies_moved ? ", policies changed" : "");
    });
  if (!changed.devices.empty() || changed.policies) {
    for (auto& r : revoked)
      ready_.emplace_back(std::move(r));
    ready_.emplace_back(std::move(changed));
  }
}

void cluster_engine::poll_registry(time_point now) {
  if (now - registry_polled_ < cfg_.cluster.lease_renew)
    return;
  registry_polled_ = now;
  auto v = lease_store_->registry_version();
  if (!v) {
    say(base_, log_level::warn,
        [&] { return "cluster: cannot read the registry version: " + v.error().message; });
    return;
  }
  if (registry_version_ != *v)
    reload_registry();
}

// --- partitions ------------------------------------------------------------------------------

result<void> cluster_engine::open_partition(std::uint32_t k, std::uint64_t epoch, time_point now) {
  postgres_options o = lease_store_->options();
  o.partition = k;
  auto s = postgres_store::open(o);
  if (!s)
    return s.error();
  auto p = std::make_unique<partition>();
  p->k = k;
  p->epoch = epoch;
  p->store = std::make_unique<postgres_store>(std::move(*s));
  p->store->adopt(owner_, epoch);
  reload_registry();  // what other instances registered meanwhile
  auto h = hub::open(cfg_.hub, *p->store);
  if (!h)
    return h.error();
  p->engine = std::make_unique<hub>(std::move(*h));
  router_options ro = base_;
  postgres_store* st = p->store.get();
  ro.commit_identities = [st](const journal::change_set& c) {
    return st->apply(c);
  };
  commit_group g;
  g.begin = [st] {
    return st->begin_group();
  };
  g.commit = [st] {
    return st->commit_group();
  };
  p->rt = std::make_unique<router>(*p->engine, std::move(ro), std::move(g));

  // Its first batch: what the registry lacks of this partition, its configured
  // devices, and what the doors said before it was served.
  const std::uint32_t K = cfg_.cluster.partitions;
  const auto mine = [&](std::string_view id) {
    auto q = cluster::partition_of(id, K);
    return q && *q == k;
  };
  identity_seed sk;
  if (k == 0) {  // hub-wide policies: seeded by partition 0's owner
    sk.policies = seed_.policies;
    sk.default_policies = seed_.default_policies;
  }
  for (const auto& d : seed_.devices)
    if (mine(d.id))
      sk.devices.push_back(d);
  std::vector<std::string> devices;
  for (const auto& d : cfg_.devices)
    if (mine(d))
      devices.push_back(d);
  if (auto r = p->rt->begin_batch(); !r)
    return r.error();
  p->rt->seed_identities(sk, now);
  p->rt->register_configured(devices, now);
  for (const auto& [door, up] : doors_up_)
    p->rt->handle(inbound{reply_to{door, {}}, door_status{up, false}}, now);
  for (const auto& [service, a] : attached_)
    p->rt->handle(inbound{reply_to{a.first, {}}, a.second}, now);
  // the devices this instance's doors saw present (a stock MQTT device stays
  // subscribed at the broker while the partition moves between instances)
  for (const auto& [device, presence] : present_)
    if (mine(device))
      p->rt->handle(presence, now);
  auto out = p->rt->end_batch();
  if (!out)
    return out.error();
  for (auto& item : *out)
    ready_.push_back(std::move(item));
  say(base_, log_level::info, [&] {
    return "cluster: serving partition " + std::to_string(k) + " at epoch " +
           std::to_string(epoch) + " (" + std::to_string(p->engine->device_count()) +
           " device(s), " + std::to_string(p->engine->stats().accepted) + " message(s) accepted)";
  });
  parts_[k] = std::move(p);
  if (link_)
    link_->serve(k);  // forwarded requests for k come here now
  return {};
}

void cluster_engine::close_partition(std::uint32_t k, std::string_view why) {
  auto it = parts_.find(k);
  if (it == parts_.end())
    return;
  say(base_, log_level::warn, [&] {
    return "cluster: stopped serving partition " + std::to_string(k) + " at epoch " +
           std::to_string(it->second->epoch) + " (" + std::string(why) + ")";
  });
  parts_.erase(it);
  if (link_)
    link_->unserve(k);
  std::erase_if(feedback_tokens_, [&](const auto& t) { return t.second == k; });
  owners_.erase(k);
}

void cluster_engine::on_events(const std::vector<cluster::ownership_event>& events,
                               time_point now) {
  using kind = cluster::ownership_event_kind;
  for (const auto& e : events) {
    switch (e.kind) {
      case kind::claimed:
        say(base_, log_level::info, [&] {
          return "cluster: claimed partition " + std::to_string(e.partition) + " at epoch " +
                 std::to_string(e.epoch);
        });
        if (auto r = open_partition(e.partition, e.epoch, now); !r) {
          say(base_, log_level::error, [&] {
            return "cluster: cannot open partition " + std::to_string(e.partition) + ": " +
                   r.error().message;
          });
          close_partition(e.partition, "opening failed");
          if (is_lease_lost(r.error())) {
            if (auto more = control_->report_lost(e.partition, e.epoch, r.error()))
              on_events(*more, now);
          } else {
            broken_[e.partition] = e.epoch;
          }
        }
        break;
      case kind::lost:
        broken_.erase(e.partition);
        close_partition(e.partition, "lease lost" + (e.why ? ": " + e.why->message : ""));
        break;
      case kind::released:
        broken_.erase(e.partition);
        close_partition(e.partition, e.why ? "released: " + e.why->message : "released");
        break;
    }
  }
}

void cluster_engine::ownership_tick(time_point now) {
  if (!control_ || now < control_->next_tick_at())
    return;
  auto events = control_->tick();
  if (!events) {
    say(base_, log_level::error,
        [&] { return "cluster: ownership tick failed: " + events.error().message; });
    return;
  }
  on_events(*events, now);
  poll_registry(now);
  // partitions held but not serving: try again
  for (auto it = broken_.begin(); it != broken_.end();) {
    const auto [k, epoch] = *it;
    if (control_->epoch(k) != epoch) {
      it = broken_.erase(it);
      continue;
    }
    if (auto r = open_partition(k, epoch, now); r) {
      it = broken_.erase(it);
      continue;
    } else if (is_lease_lost(r.error())) {
      it = broken_.erase(it);
      close_partition(k, "reopening failed");
      if (auto more = control_->report_lost(k, epoch, r.error()))
        on_events(*more, now);
      continue;
    }
    ++it;
  }
  log_serving();
}

cluster_engine::partition* cluster_engine::serving_partition(std::uint32_t k, time_point now) {
  auto it = parts_.find(k);
  if (it == parts_.end() || !it->second->in_batch || !control_->owns(k, now))
    return nullptr;
  return it->second.get();
}

error cluster_engine::not_served(std::uint32_t k, std::string_view what) {
  const time_point now = system_clock{}.now();
  auto& o = owners_[k];
  if (o.first.empty() || now - o.second > cfg_.cluster.lease_renew) {
    o.second = now;
    auto l = lease_store_->lease(k);
    if (!l)
      o.first = "unknown (" + l.error().message + ")";
    else if (!*l || !(*l)->owner || !(*l)->live)
      o.first = "nobody (free)";
    else
      o.first = "'" + *(*l)->owner + "' at epoch " + std::to_string((*l)->epoch);
  }
  return make_error(
      errc::server_busy,
      "partition " + std::to_string(k) + " (" + std::string(what) +
          ") is not served by instance '" + owner_ + "'; its owner is " + o.first +
          (link_ ? std::string("; this request is served by the owner only (AMQP device links "
                               "and feedback are not forwarded): connect to the owner or retry")
                 : std::string("; retry (or start the instances with --forward-amqp-url to "
                               "forward requests)")));
}

// --- batches ---------------------------------------------------------------------------------

result<void> cluster_engine::begin_batch() {
  const time_point now = system_clock{}.now();
  ownership_tick(now);
  for (auto& [k, p] : parts_) {
    p->in_batch = true;  // its group opens at its first request or due timer
    p->begun = false;
    p->begin_failed.reset();
  }
  in_batch_ = true;
  return {};
}

void cluster_engine::answer(const reply_to& to, decltype(reply::what) what) {
  if (!to.address.empty())
    direct_.emplace_back(reply{to, std::move(what)});
}

void cluster_engine::route(partition& p, inbound in, time_point now) {
  if (!in.from.address.empty())
    p.asked.push_back(in.from);
  if (p.open_group())  // else the batch fails for this partition: `asked` get 503
    p.rt->handle(std::move(in), now);
}

void cluster_engine::remember_presence(const inbound& in) {
  if (auto* p = std::get_if<device_present>(&in.what)) {
    present_[p->device] = in;
  } else if (auto* a = std::get_if<device_absent>(&in.what)) {
    auto it = present_.find(a->device);
    if (it == present_.end())
      return;
    const auto& was = std::get<device_present>(it->second.what);
    if (it->second.from.door == in.from.door &&
        (!a->connection || *a->connection == was.connection))
      present_.erase(it);
  }
}

void cluster_engine::handle(inbound in, time_point now) {
  // device-scoped: the device's partition
  if (auto dev = device_of(in.what)) {
    auto k = cluster::partition_of(*dev, cfg_.cluster.partitions);
    if (!k)
      return answer(in.from, k.error());
    remember_presence(in);
    const bool from_peer = forwarded(in.from);
    if (partition* p = serving_partition(*k, now)) {
      if (from_peer && !admit_forwarded(*k, in))
        return;
      return route(*p, std::move(in), now);
    }
    if (from_peer)  // never forwarded again: back to its queue, for the owner
      return link_->requeue(in.from.address);
    if (in.from.address.empty())
      return;
    if (mqtt_door_ && in.from.door == *mqtt_door_)
      return;  // every instance's MQTT door received it: its owner answers
    if (link_)
      if (auto f = forward::forwardable(in.what))
        return link_->forward(*k, std::move(in.from), std::move(*f));
    answer(in.from, not_served(*k, "device '" + std::string(*dev) + "'"));
    return;
  }
  const auto first = [&]() -> partition* {
    for (auto& [k, p] : parts_)
      if (partition* s = serving_partition(k, now))
        return s;
    return nullptr;
  };
  const auto none = [&] {
    return make_error(errc::server_busy, "instance '" + owner_ +
                                             "' serves no partition now; retry (or ask another "
                                             "instance)");
  };
  // hub-wide
  if (std::holds_alternative<ping_request>(in.what))
    return answer(in.from, done_reply{});
  if (auto* r = std::get_if<refused_request>(&in.what))
    return answer(in.from, r->why);
  if (auto* s = std::get_if<door_status>(&in.what)) {
    doors_up_[in.from.door] = s->up;
    if (s->up && s->peers_forgot) {
      std::erase_if(attached_, [&](const auto& a) { return a.second.first == in.from.door; });
      std::erase_if(present_, [&](const auto& e) { return e.second.from.door == in.from.door; });
    }
    for (auto& [k, p] : parts_)
      if (p->in_batch && p->open_group())
        p->rt->handle(in, now);
    return;
  }
  if (auto* a = std::get_if<feedback_attach_request>(&in.what)) {
    // every partition pushes its own feedback; one of them answers
    attached_[a->service] = {in.from.door, *a};
    bool answered = false;
    for (auto& [k, p] : parts_)
      if (p->in_batch) {
        inbound copy{answered ? reply_to{in.from.door, {}} : in.from, in.what};
        route(*p, std::move(copy), now);
        answered = true;
      }
    if (!answered)
      answer(in.from, window_reply{std::clamp<std::uint32_t>(a->window, 1, base_.max_in_flight)});
    return;
  }
  if (auto* d = std::get_if<feedback_detach_request>(&in.what)) {
    if (auto it = attached_.find(d->service); it != attached_.end() &&
                                              it->second.first == in.from.door &&
                                              it->second.second.connection == d->connection)
      attached_.erase(it);
    for (auto& [k, p] : parts_)
      if (p->in_batch && p->open_group())
        p->rt->handle(in, now);
    return;
  }
  if (std::holds_alternative<feedback_receive_request>(in.what)) {
    // the feedback of the partitions served here (docs/scale-out.md)
    for (auto& [k, p] : parts_)
      if (p->in_batch && p->engine->feedback_queue_depth() > 0)
        if (partition* s = serving_partition(k, now))
          return route(*s, std::move(in), now);
    if (partition* s = first())
      return route(*s, std::move(in), now);
    return answer(in.from, feedback_reply{});
  }
  if (auto* f = std::get_if<feedback_settle_request>(&in.what)) {
    if (auto it = feedback_tokens_.find(f->token.to_string()); it != feedback_tokens_.end()) {
      const std::uint32_t k = it->second;
      feedback_tokens_.erase(it);  // settled or refused: the partition answers either way
      if (partition* s = serving_partition(k, now))
        return route(*s, std::move(in), now);
    }
  }
  // feedback settles of unknown tokens, the registry list and the policies:
  // any partition (the registry is hub-wide; a change is written under its lease)
  if (partition* s = first())
    return route(*s, std::move(in), now);
  answer(in.from, none());
}

void cluster_engine::tick(time_point now) {
  // a partition that had a request in this batch, or whose timers are due
  for (auto& [k, p] : parts_) {
    if (!p->in_batch)
      continue;
    const auto due = p->rt->next_deadline();
    if ((p->begun || (due && *due <= now)) && p->open_group())
      p->rt->tick(now);
  }
}

void cluster_engine::fail_partition(std::uint32_t k, const error& e,
                                    const std::vector<reply_to>& asked,
                                    std::vector<outbound>& out) {
  auto it = parts_.find(k);
  if (it == parts_.end())
    return;
  const std::uint64_t epoch = it->second->epoch;
  const bool lost = is_lease_lost(e);
  say(base_, log_level::error, [&] {
    return "cluster: partition " + std::to_string(k) + " at epoch " + std::to_string(epoch) +
           ": the store refused the commit (" + e.message + "); nothing of it is acknowledged" +
           (lost ? "; stepping down" : "; reopening it from the store");
  });
  const error busy =
      make_error(errc::server_busy, "partition " + std::to_string(k) + " could not commit (" +
                                        std::string(lost ? "its lease was lost" : "store failure") +
                                        "); nothing was done, retry");
  for (const auto& to : asked)
    if (forwarded(to))
      give_back(to, lost, busy, out);  // lost: the next owner runs it
    else
      out.emplace_back(reply{to, busy});
  reload_registry_ = true;  // the shared registry may be ahead of the store
  close_partition(k, lost ? "lease lost at commit" : "commit failed");
  if (lost) {
    if (auto ev = control_->report_lost(k, epoch, e))
      on_events(*ev, system_clock{}.now());
  } else {
    broken_[k] = epoch;
  }
}

result<std::vector<outbound>> cluster_engine::end_batch() {
  std::vector<outbound> out = std::exchange(ready_, {});
  struct failure {
    std::uint32_t k;
    error e;
    std::vector<reply_to> asked;
  };
  std::vector<failure> failed;
  for (auto& [k, p] : parts_) {
    if (!std::exchange(p->in_batch, false))
      continue;
    auto asked = std::exchange(p->asked, {});
    if (auto e = std::exchange(p->begin_failed, std::nullopt)) {
      failed.push_back({k, std::move(*e), std::move(asked)});
      continue;
    }
    if (!std::exchange(p->begun, false))
      continue;  // nothing happened in it: no group was opened
    auto r = p->rt->end_batch();
    if (!r) {
      failed.push_back({k, r.error(), std::move(asked)});
      continue;
    }
    for (auto& item : *r) {
      if (const auto* rep = std::get_if<reply>(&item))
        if (const auto* f = std::get_if<feedback_reply>(&rep->what); f && f->batch)
          feedback_tokens_[f->batch->lock_token.to_string()] = k;
      if (const auto* push = std::get_if<feedback_push>(&item))
        feedback_tokens_[push->batch.lock_token.to_string()] = k;
      if (const auto* rep = std::get_if<reply>(&item); rep && forwarded(rep->to))
        if (auto ref = parse_delivery_address(rep->to.address)) {
          // committed: remembered, and given to the same request delivered again meanwhile
          answered_[ref->partition].put(ref->request_id, rep->what);
          if (auto w = running_.find(ref->request_id); w != running_.end()) {
            for (auto& to : w->second)
              out.emplace_back(reply{to, rep->what});
            running_.erase(w);
          }
        }
      out.push_back(std::move(item));
    }
  }
  for (auto& f : failed)
    fail_partition(f.k, f.e, f.asked, out);
  for (auto& [id, again] : std::exchange(running_, {}))  // their first delivery got no answer
    for (auto& to : again)
      link_->requeue(to.address);
  for (auto& d : direct_)
    out.push_back(std::move(d));
  direct_.clear();
  if (link_)
    for (auto& r : link_->take_answers())  // forwarded elsewhere, answered there
      out.emplace_back(std::move(r));
  if (reload_registry_)
    reload_registry();
  log_serving();
  in_batch_ = false;
  return out;
}

std::optional<time_point> cluster_engine::next_deadline() const {
  time_point t = control_ ? control_->next_tick_at() : time_point::max();
  for (const auto& [k, p] : parts_)
    if (auto d = p->rt->next_deadline())
      t = std::min(t, *d);
  return t;
}

// --- forwarding -------------------------------------------------------------------------------

void cluster_engine::set_forwarding(forward_link* link, std::optional<door_id> mqtt) {
  link_ = link;
  mqtt_door_ = mqtt;
  if (link_)
    for (const auto& [k, p] : parts_)
      link_->serve(k);
}

void cluster_engine::answer_cache::put(const std::string& id, const forward::answer_what& w) {
  if (by_id.insert_or_assign(id, w).second) {
    order.push_back(id);
    if (order.size() > capacity) {
      by_id.erase(order.front());
      order.pop_front();
    }
  }
}

bool cluster_engine::admit_forwarded(std::uint32_t k, const inbound& in) {
  auto ref = parse_delivery_address(in.from.address);
  if (!ref)
    return true;
  if (auto c = answered_.find(k); c != answered_.end())
    if (auto a = c->second.by_id.find(ref->request_id); a != c->second.by_id.end()) {
      say(base_, log_level::debug, [&] {
        return "cluster: forwarded request " + ref->request_id + " was answered already";
      });
      direct_.emplace_back(reply{in.from, a->second});
      return false;
    }
  if (auto r = running_.find(ref->request_id); r != running_.end()) {
    r->second.push_back(in.from);
    return false;
  }
  running_.emplace(ref->request_id, std::vector<reply_to>{});
  return true;
}

void cluster_engine::give_back(const reply_to& to, bool requeue, const error& e,
                               std::vector<outbound>& out) {
  if (auto ref = parse_delivery_address(to.address); ref) {
    auto r = running_.find(ref->request_id);
    if (r != running_.end()) {
      auto again = std::move(r->second);
      running_.erase(r);
      for (auto& t : again)
        give_back(t, true, e, out);
    }
  }
  if (requeue)
    link_->requeue(to.address);
  else
    out.emplace_back(reply{to, e});
}

void cluster_engine::register_configured(const std::vector<std::string>&) {
  // each partition registers its configured devices when it is claimed
}

void cluster_engine::shutdown() {
  if (!control_)
    return;
  const time_point now = system_clock{}.now();
  on_events(control_->shutdown(), now);
  log_serving();
}

}  // namespace devicebound::hubd
