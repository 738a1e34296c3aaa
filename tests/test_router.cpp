// The daemon's router (apps/devicebound-hub/router.hpp) without a broker: typed
// requests in, typed replies and pushes out, released only after the commit.
#include <gtest/gtest.h>

#include <devicebound/hub.hpp>
#include <devicebound/store/store.hpp>
#include <string>
#include <vector>

#include "identity_view.hpp"
#include "router.hpp"

namespace {

using namespace devicebound;
using namespace devicebound::hubd;
using namespace std::chrono_literals;

const time_point t0 = time_point{} + std::chrono::hours(24 * 365 * 30);

/// A memory store with a commit group whose commit can be made to fail.
struct grouped_store {
  memory_store inner;
  bool fail_commit = false;
  int commits = 0;
  bool open = false;
  result<void> apply(const journal::change_set& c) { return inner.apply(c); }
  result<journal::snapshot> load() { return inner.load(); }
  commit_group group() {
    return {[this]() -> result<void> {
              open = true;
              return {};
            },
            [this]() -> result<void> {
              open = false;
              if (fail_commit)
                return make_error(errc::server_error, "disk full");
              ++commits;
              return {};
            }};
  }
};

class router_test : public ::testing::Test {
 protected:
  explicit router_test(router_options o = {}, bool with_registry = false) {
    if (with_registry) {
      o.identities = &registry_;
      o.view = &view_;
      o.new_key = keys_from(seeded_token_source(5));
      o.commit_identities = [this](const journal::change_set& c) {
        return store_.apply(c);
      };
    }
    hub_config c;
    c.feedback_batch_interval = 0s;
    auto h = hub::open(c, store_);
    EXPECT_TRUE(h);
    hub_ = std::move(*h);
    router_ = std::make_unique<router>(hub_, std::move(o), store_.group());
    (void)batch(items(event(add_device_request{"admin", "dev1"})));
  }

  /// A request from the door with no reply address (presence, broker events).
  static inbound event(request r) {
    inbound in;
    in.what = std::move(r);
    return in;
  }
  static inbound asked(std::string address, request r) {
    inbound in;
    in.from.address = std::move(address);
    in.what = std::move(r);
    return in;
  }
  template <class... In>
  static std::vector<inbound> items(In... in) {
    std::vector<inbound> v;
    (v.push_back(std::move(in)), ...);
    return v;
  }

  /// Applies one batch of requests and returns what it released.
  std::vector<outbound> batch(std::vector<inbound> in, time_point now = t0) {
    EXPECT_TRUE(router_->begin_batch());
    for (auto& i : in)
      router_->handle(std::move(i), now);
    router_->tick(now);
    auto out = router_->end_batch();
    EXPECT_TRUE(out) << out.error().message;
    return out ? std::move(*out) : std::vector<outbound>{};
  }

  /// The one reply a request gets.
  template <class R>
  R ask(request r, time_point now = t0) {
    auto out = batch(items(asked(to_.address, std::move(r))), now);
    for (auto& o : out)
      if (auto* rp = std::get_if<reply>(&o)) {
        EXPECT_EQ(rp->to.address, to_.address);
        if (auto* x = std::get_if<R>(&rp->what))
          return *x;
        if (auto* e = std::get_if<error>(&rp->what))
          ADD_FAILURE() << "error " << e->numeric() << " " << e->message;
        else
          ADD_FAILURE() << "another reply kind";
        return R{};
      }
    ADD_FAILURE() << "no reply";
    return R{};
  }

  error ask_error(request r, time_point now = t0) {
    auto out = batch(items(asked(to_.address, std::move(r))), now);
    for (auto& o : out)
      if (auto* rp = std::get_if<reply>(&o))
        if (auto* e = std::get_if<error>(&rp->what))
          return *e;
    ADD_FAILURE() << "no error reply";
    return error{};
  }

  static message text(std::string body, ack_mode ack = ack_mode::none) {
    message m;
    m.body = std::move(body);
    m.ack = ack;
    return m;
  }

  template <class T>
  static std::vector<T> all(const std::vector<outbound>& out) {
    std::vector<T> v;
    for (const auto& o : out)
      if (auto* x = std::get_if<T>(&o))
        v.push_back(*x);
    return v;
  }

  grouped_store store_;
  registry registry_;
  identity_view view_{true};
  hub hub_;
  std::unique_ptr<router> router_;
  reply_to to_{0, "requester"};
};

TEST_F(router_test, send_replies_with_sequence_number_and_expiry) {
  const auto r = ask<sent_reply>(send_request{"svc", "dev1", text("hello")});
  EXPECT_GT(r.sequence_number, 0u);
  EXPECT_GT(r.expiry_time_utc, t0);
  EXPECT_EQ(hub_.queue_depth("dev1", t0).value(), 1u);
}

TEST_F(router_test, send_to_an_unknown_device_is_refused) {
  EXPECT_EQ(ask_error(send_request{"svc", "nobody", text("x")}).code, errc::device_not_found);
}

TEST_F(router_test, receive_locks_the_next_message) {
  (void)ask<sent_reply>(send_request{"svc", "dev1", text("a")});
  const auto got = ask<message_reply>(receive_request{"dev1"});
  ASSERT_TRUE(got.msg);
  EXPECT_EQ(got.msg->body, "a");
  EXPECT_TRUE(got.msg->lock_token);
  EXPECT_FALSE(ask<message_reply>(receive_request{"dev1"}).msg);
}

TEST_F(router_test, settle_completes_and_refuses_a_stale_token) {
  (void)ask<sent_reply>(send_request{"svc", "dev1", text("a")});
  const auto got = ask<message_reply>(receive_request{"dev1"});
  ASSERT_TRUE(got.msg);
  (void)ask<done_reply>(settle_request{"dev1", *got.msg->lock_token, disposition::complete});
  EXPECT_EQ(hub_.queue_depth("dev1", t0).value(), 0u);
  EXPECT_EQ(ask_error(settle_request{"dev1", *got.msg->lock_token, disposition::complete}).code,
            errc::device_message_lock_lost);
}

TEST_F(router_test, purge_counts_what_it_removed) {
  (void)ask<sent_reply>(send_request{"svc", "dev1", text("a")});
  (void)ask<sent_reply>(send_request{"svc", "dev1", text("b")});
  EXPECT_EQ(ask<count_reply>(purge_request{"svc", "dev1"}).count, 2u);
  EXPECT_EQ(hub_.queue_depth("dev1", t0).value(), 0u);
}

TEST_F(router_test, queue_depth) {
  (void)ask<sent_reply>(send_request{"svc", "dev1", text("a")});
  EXPECT_EQ(ask<depth_reply>(queue_depth_request{"dev1"}).depth, 1u);
  EXPECT_EQ(ask_error(queue_depth_request{"nobody"}).code, errc::device_not_found);
}

TEST_F(router_test, feedback_receive_and_settle) {
  (void)ask<sent_reply>(send_request{"svc", "dev1", text("a", ack_mode::full)});
  const auto got = ask<message_reply>(receive_request{"dev1"});
  ASSERT_TRUE(got.msg);
  (void)ask<done_reply>(settle_request{"dev1", *got.msg->lock_token, disposition::complete});
  const auto fb = ask<feedback_reply>(feedback_receive_request{"svc"}, t0 + 1s);
  ASSERT_TRUE(fb.batch);
  ASSERT_EQ(fb.batch->records.size(), 1u);
  EXPECT_EQ(fb.batch->records[0].status_code, feedback_status::success);
  (void)ask<done_reply>(feedback_settle_request{"svc", fb.batch->lock_token, true}, t0 + 1s);
  EXPECT_EQ(hub_.feedback_queue_depth(), 0u);
}

TEST_F(router_test, pushed_feedback_goes_to_an_attached_back_end) {
  (void)batch(items(event(door_status{true, false})));
  EXPECT_EQ(ask<window_reply>(feedback_attach_request{"svc", "c1", 8}).window, 4u);
  (void)ask<sent_reply>(send_request{"svc", "dev1", text("a", ack_mode::full)});
  const auto got = ask<message_reply>(receive_request{"dev1"});
  ASSERT_TRUE(got.msg);
  auto out = batch(items(asked(to_.address, settle_request{"dev1", *got.msg->lock_token,
                                                           disposition::complete})),
                   t0 + 1s);
  auto pushes = all<feedback_push>(out);
  ASSERT_EQ(pushes.size(), 1u);
  EXPECT_EQ(pushes[0].service, "svc");
  EXPECT_EQ(pushes[0].connection, "c1");
}

TEST_F(router_test, present_devices_get_pushes_up_to_their_window_while_the_door_is_up) {
  (void)ask<sent_reply>(send_request{"svc", "dev1", text("a")});
  (void)ask<sent_reply>(send_request{"svc", "dev1", text("b")});
  // The door is not up yet: nothing is pushed.
  EXPECT_EQ(ask<window_reply>(device_present{"dev1", "c1", 1, nullptr}).window, 1u);
  EXPECT_TRUE(all<device_push>(batch({})).empty());
  auto out = batch(items(event(door_status{true, false})));
  auto pushes = all<device_push>(out);
  ASSERT_EQ(pushes.size(), 1u);
  EXPECT_EQ(pushes[0].msg.body, "a");
  EXPECT_EQ(pushes[0].connection, "c1");
  EXPECT_TRUE(pushes[0].settles);
  // Settling frees the slot: the next one goes out in the same batch as the reply.
  out = batch(items(asked(
      to_.address, settle_request{"dev1", *pushes[0].msg.lock_token, disposition::complete})));
  ASSERT_EQ(all<reply>(out).size(), 1u);
  pushes = all<device_push>(out);
  ASSERT_EQ(pushes.size(), 1u);
  EXPECT_EQ(pushes[0].msg.body, "b");
  // An older connection's detach is ignored; the current one's ends the presence.
  (void)batch(items(event(device_absent{"dev1", "c0"})));
  EXPECT_EQ(router_->presence_of("dev1"), presence::pushed);
  (void)batch(items(event(device_absent{"dev1", "c1"})));
  EXPECT_EQ(router_->presence_of("dev1"), presence::absent);
  (void)ask<sent_reply>(send_request{"svc", "dev1", text("c")});
  EXPECT_TRUE(all<device_push>(batch({})).empty());
}

std::string tag_of(std::string_view device, const message& m) {
  return std::string(device) + "/" + m.body;
}

TEST_F(router_test, a_device_that_does_not_settle_is_completed_on_delivery) {
  (void)batch(items(event(door_status{true, false})));
  (void)ask<sent_reply>(send_request{"svc", "dev1", text("a")});
  auto out = batch(items(event(device_present{"dev1", {}, 0, &tag_of})));
  auto pushes = all<device_push>(out);
  ASSERT_EQ(pushes.size(), 1u);
  EXPECT_FALSE(pushes[0].settles);
  EXPECT_EQ(pushes[0].tag, "dev1/a");
  EXPECT_EQ(router_->in_flight("dev1"), 1u);
  (void)batch(items(event(device_delivered{"dev1", "dev1/a"})));
  EXPECT_EQ(router_->in_flight("dev1"), 0u);
  EXPECT_EQ(hub_.queue_depth("dev1", t0).value(), 0u);
  EXPECT_EQ(hub_.stats().completed, 1u);
}

TEST_F(router_test, a_door_that_restarts_without_its_peers_forgets_their_presence) {
  (void)batch(items(event(door_status{true, false})));
  (void)ask<window_reply>(device_present{"dev1", "c1", 1, nullptr});
  (void)batch(items(event(door_status{false, false})));
  (void)batch(items(event(door_status{true, true})));
  EXPECT_EQ(router_->presence_of("dev1"), presence::absent);
}

TEST_F(router_test, admin_add_remove_ping_and_refused_requests) {
  EXPECT_FALSE(ask<generation_reply>(add_device_request{"adm", "dev2"}).generation_id.empty());
  (void)ask<done_reply>(remove_device_request{"adm", "dev2"});
  EXPECT_FALSE(hub_.has_device("dev2"));
  (void)ask<done_reply>(ping_request{});
  EXPECT_EQ(ask_error(refused_request{make_error(errc::malformed, "bad")}).code, errc::malformed);
}

TEST_F(router_test, requests_without_a_reply_address_get_no_reply) {
  auto out = batch(items(event(ping_request{})));
  EXPECT_TRUE(out.empty());
}

TEST_F(router_test, one_batch_is_one_commit_and_keeps_reply_order) {
  const int before = store_.commits;
  auto out = batch(items(asked("a", send_request{"svc", "dev1", text("1")}),
                         asked("b", send_request{"svc", "dev1", text("2")}),
                         asked("c", queue_depth_request{"dev1"})));
  EXPECT_EQ(store_.commits, before + 1);
  const auto replies = all<reply>(out);
  ASSERT_EQ(replies.size(), 3u);
  EXPECT_EQ(replies[0].to.address, "a");
  EXPECT_EQ(replies[1].to.address, "b");
  EXPECT_EQ(std::get<depth_reply>(replies[2].what).depth, 2u);
}

// --- commit before reply -------------------------------------------------------------------

TEST_F(router_test, a_failed_commit_releases_nothing) {
  (void)batch(items(event(door_status{true, false})));
  (void)ask<window_reply>(device_present{"dev1", "c1", 4, nullptr});
  store_.fail_commit = true;
  ASSERT_TRUE(router_->begin_batch());
  router_->handle(asked(to_.address, send_request{"svc", "dev1", text("a")}), t0);
  router_->tick(t0);
  auto out = router_->end_batch();
  ASSERT_FALSE(out);  // no reply, no push: the daemon exits with code 4
  EXPECT_EQ(out.error().message, "disk full");
  // The next batch starts empty: what the failed one produced is gone.
  store_.fail_commit = false;
  ASSERT_TRUE(router_->begin_batch());
  auto next = router_->end_batch();
  ASSERT_TRUE(next);
  EXPECT_TRUE(next->empty());
}

TEST_F(router_test, a_failed_write_releases_nothing_and_refuses_what_follows) {
  store_.inner.fail_next_apply(make_error(errc::server_error, "I/O error"));
  ASSERT_TRUE(router_->begin_batch());
  router_->handle(asked(to_.address, send_request{"svc", "dev1", text("a")}), t0);
  router_->handle(asked(to_.address, queue_depth_request{"dev1"}), t0);
  router_->tick(t0);
  auto out = router_->end_batch();
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().code, errc::server_error);
  // The hub's memory may be ahead of its store: no further batch runs.
  EXPECT_FALSE(router_->begin_batch());
}

// --- the identity registry -------------------------------------------------------------------

class registry_router_test : public router_test {
 protected:
  registry_router_test() : router_test({}, true) {}

  static device_identity_update sas(std::string id) {
    device_identity_update u;
    u.device_id = std::move(id);
    return u;
  }
  template <class T>
  static std::vector<T> revoked(const std::vector<outbound>& out) {
    return all<T>(out);
  }
};

TEST_F(registry_router_test, devices_added_by_the_admin_have_identities_in_the_view) {
  EXPECT_TRUE(registry_.contains("dev1"));
  const auto d = view_.device("dev1");
  ASSERT_TRUE(d);
  EXPECT_TRUE(d->enabled);
  EXPECT_EQ(d->primary_key.bytes().size(), 32u);
  EXPECT_EQ(store_.inner.load().value().identities.size(), 1u);
}

TEST_F(registry_router_test, put_creates_the_engine_device_and_identity_in_one_batch) {
  const int before = store_.commits;
  const auto r = ask<device_reply>(registry_put_request{"adm", sas("dev2"), std::nullopt});
  EXPECT_EQ(store_.commits, before + 1);
  EXPECT_EQ(r.device.identity.device_id, "dev2");
  EXPECT_EQ(etag_of(r.device.identity), "1");
  EXPECT_FALSE(r.device.connected);
  EXPECT_EQ(r.device.cloud_to_device_count, 0u);
  EXPECT_TRUE(hub_.has_device("dev2"));
  EXPECT_EQ(hub_.generation_id("dev2").value(), r.device.identity.generation_id);
  ASSERT_TRUE(view_.device("dev2"));
  EXPECT_EQ(view_.device("dev2")->primary_key, r.device.identity.primary_key);
  const auto snap = store_.inner.load().value();
  EXPECT_EQ(snap.identities.size(), 2u);
  EXPECT_EQ(snap.devices.size(), 2u);
}

TEST_F(registry_router_test, put_rules_409_412_and_update) {
  EXPECT_EQ(ask_error(registry_put_request{"adm", sas("dev1"), std::nullopt}).code,
            errc::device_already_exists);
  EXPECT_EQ(ask_error(registry_put_request{"adm", sas("dev1"), std::string("5")}).code,
            errc::precondition_failed);
  EXPECT_EQ(ask_error(registry_put_request{"adm", sas("nobody"), std::string("*")}).code,
            errc::precondition_failed);
  EXPECT_FALSE(hub_.has_device("nobody"));
  auto bad = sas("dev3");
  bad.primary_key = "!!";
  EXPECT_EQ(ask_error(registry_put_request{"adm", bad, std::nullopt}).code, errc::argument_invalid);
  EXPECT_FALSE(hub_.has_device("dev3"));
  const auto r = ask<device_reply>(registry_put_request{"adm", sas("dev1"), std::string("1")});
  EXPECT_EQ(etag_of(r.device.identity), "2");
}

TEST_F(registry_router_test, get_and_list_show_live_fields) {
  (void)batch(items(event(door_status{true, false})));
  (void)ask<device_reply>(registry_put_request{"adm", sas("dev0"), std::nullopt});
  (void)ask<sent_reply>(send_request{"svc", "dev0", text("a")});
  (void)ask<sent_reply>(send_request{"svc", "dev0", text("b")});
  (void)ask<window_reply>(device_present{"dev1", "c1", 4, nullptr}, t0 + 1s);
  auto g = ask<device_reply>(registry_get_request{"dev0"});
  EXPECT_EQ(g.device.cloud_to_device_count, 2u);
  EXPECT_FALSE(g.device.connected);
  g = ask<device_reply>(registry_get_request{"dev1"}, t0 + 2s);
  EXPECT_TRUE(g.device.connected);
  EXPECT_EQ(g.device.connection_state_updated, t0 + 1s);
  EXPECT_EQ(ask_error(registry_get_request{"nobody"}).code, errc::device_not_found);
  const auto l = ask<devices_reply>(registry_list_request{1000});
  ASSERT_EQ(l.devices.size(), 2u);
  EXPECT_EQ(l.devices[0].identity.device_id, "dev0");
  EXPECT_EQ(l.devices[0].cloud_to_device_count, 2u);
  EXPECT_EQ(ask<devices_reply>(registry_list_request{1}).devices.size(), 1u);
}

TEST_F(registry_router_test, delete_drops_queue_and_feedback_and_revokes_everywhere) {
  (void)ask<sent_reply>(send_request{"svc", "dev1", text("a", ack_mode::full)});
  (void)ask<sent_reply>(send_request{"svc", "dev1", text("b", ack_mode::full)});
  const auto m = ask<message_reply>(receive_request{"dev1"});
  ASSERT_TRUE(m.msg);
  (void)ask<done_reply>(settle_request{"dev1", *m.msg->lock_token, disposition::reject});
  EXPECT_EQ(ask_error(registry_delete_request{"adm", "dev1", std::string("9")}).code,
            errc::precondition_failed);
  EXPECT_TRUE(hub_.has_device("dev1"));
  auto out =
      batch(items(asked(to_.address, registry_delete_request{"adm", "dev1", std::string("*")})));
  const auto replies = all<reply>(out);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_TRUE(std::holds_alternative<done_reply>(replies[0].what));
  const auto rv = all<device_revoked>(out);
  ASSERT_EQ(rv.size(), 1u);
  EXPECT_EQ(rv[0].device, "dev1");
  EXPECT_TRUE(rv[0].deleted);
  EXPECT_EQ(door_of(outbound{rv[0]}), every_door);
  EXPECT_FALSE(hub_.has_device("dev1"));
  EXPECT_FALSE(registry_.contains("dev1"));
  EXPECT_FALSE(view_.device("dev1"));
  const auto snap = store_.inner.load().value();
  EXPECT_TRUE(snap.messages.empty());
  EXPECT_TRUE(snap.identities.empty());
  for (const auto& p : snap.pending)
    EXPECT_NE(p.record.device_id, "dev1");
  EXPECT_EQ(ask_error(registry_delete_request{"adm", "dev1", std::nullopt}).code,
            errc::device_not_found);
}

TEST_F(registry_router_test, disabling_revokes_and_the_view_refuses_the_device) {
  auto u = sas("dev1");
  u.status = device_status::disabled;
  auto out = batch(items(asked(to_.address, registry_put_request{"adm", u, std::string("*")})));
  const auto rv = all<device_revoked>(out);
  ASSERT_EQ(rv.size(), 1u);
  EXPECT_FALSE(rv[0].deleted);
  ASSERT_TRUE(view_.device("dev1"));
  EXPECT_FALSE(view_.device("dev1")->enabled);
  // C2D to a disabled device is still accepted (docs/registry.md)
  (void)ask<sent_reply>(send_request{"svc", "dev1", text("queued")});
  // disabled again: nothing new to revoke
  out = batch(items(asked(to_.address, registry_put_request{"adm", u, std::string("*")})));
  EXPECT_TRUE(all<device_revoked>(out).empty());
}

TEST_F(registry_router_test, a_failed_commit_answers_nothing_and_leaves_the_view) {
  store_.fail_commit = true;
  ASSERT_TRUE(router_->begin_batch());
  router_->handle(asked(to_.address, registry_put_request{"adm", sas("dev9"), std::nullopt}), t0);
  router_->handle(asked(to_.address, registry_delete_request{"adm", "dev1", std::nullopt}), t0);
  auto out = router_->end_batch();
  ASSERT_FALSE(out);  // no reply, no device_revoked
  EXPECT_FALSE(view_.device("dev9"));
  EXPECT_TRUE(view_.device("dev1"));
}

TEST_F(registry_router_test, a_failed_registry_write_stops_the_router) {
  store_.inner.fail_next_apply(make_error(errc::server_error, "I/O error"));
  ASSERT_TRUE(router_->begin_batch());
  router_->handle(asked(to_.address, registry_put_request{"adm", sas("dev1"), std::string("*")}),
                  t0);
  auto out = router_->end_batch();
  ASSERT_FALSE(out);
  EXPECT_FALSE(router_->begin_batch());
}

TEST_F(registry_router_test, seeding_an_empty_registry) {
  // a fresh registry on a hub that already has dev1 (a store from before the registry)
  registry_ = registry{};
  identity_seed seed;
  seed.default_policies = true;
  seed.devices.push_back({"filed", auth::shared_access_key::from_bytes(std::string(32, 'k')),
                          auth::shared_access_key::from_bytes(std::string(32, 'l'))});
  ASSERT_TRUE(router_->begin_batch());
  router_->seed_identities(seed, t0);
  router_->register_configured({"flagged"}, t0);
  ASSERT_TRUE(router_->end_batch());
  EXPECT_EQ(registry_.policy_count(), 5u);
  EXPECT_TRUE(registry_.get_policy("iothubowner"));
  EXPECT_EQ(registry_.get("filed").value().primary_key.bytes(), std::string(32, 'k'));
  EXPECT_TRUE(hub_.has_device("filed"));
  EXPECT_TRUE(registry_.contains("dev1"));
  EXPECT_TRUE(registry_.contains("flagged"));
  EXPECT_EQ(view_.policies().size(), 5u);
  EXPECT_TRUE(view_.device("dev1"));
  EXPECT_TRUE(view_.device("flagged"));
  // a second start seeds nothing more
  const auto policies = registry_.policies();
  ASSERT_TRUE(router_->begin_batch());
  router_->seed_identities(seed, t0);
  ASSERT_TRUE(router_->end_batch());
  EXPECT_EQ(registry_.policies(), policies);
  EXPECT_EQ(store_.inner.load().value().policies, policies);
}

TEST_F(registry_router_test, auto_registered_devices_get_identities) {
  router_options o;
  o.auto_register = true;
  o.identities = &registry_;
  o.view = &view_;
  o.new_key = keys_from(seeded_token_source(9));
  router_.reset();
  router_ = std::make_unique<router>(hub_, std::move(o), store_.group());
  (void)ask<sent_reply>(send_request{"svc", "auto1", text("hi")});
  EXPECT_TRUE(registry_.contains("auto1"));
  EXPECT_TRUE(view_.device("auto1"));
}

// --- shared access policies (the admin API; docs/https.md "Policies") -----------------------

class policy_router_test : public registry_router_test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(router_->begin_batch());
    identity_seed seed;
    seed.default_policies = true;
    router_->seed_identities(seed, t0);
    EXPECT_TRUE(router_->end_batch());
  }
  static auth::shared_access_policy policy(std::string name, auth::access_rights rights) {
    auth::shared_access_policy p;
    p.name = std::move(name);
    p.rights = rights;
    return p;
  }
  /// What the store holds of a policy (the durable state), or nullopt.
  std::optional<auth::shared_access_policy> stored(std::string_view name) {
    const auto snapshot = store_.inner.load();
    if (!snapshot)
      return std::nullopt;
    for (const auto& p : snapshot->policies)
      if (p.name == name)
        return p;
    return std::nullopt;
  }
  /// The one credentials_changed of a batch, or nullopt.
  static std::optional<credentials_changed> changed(const std::vector<outbound>& out) {
    const auto c = all<credentials_changed>(out);
    EXPECT_LE(c.size(), 1u);
    return c.empty() ? std::nullopt : std::optional(c[0]);
  }
};

TEST_F(policy_router_test, list_and_get) {
  const auto l = ask<policies_reply>(policy_list_request{});
  ASSERT_EQ(l.policies.size(), 5u);
  EXPECT_EQ(l.policies[0].name, "device");  // by name
  const auto g = ask<policy_reply>(policy_get_request{"service"});
  EXPECT_EQ(g.policy.rights, auth::access_rights::service_connect);
  EXPECT_EQ(g.policy.primary_key.bytes().size(), 32u);
  EXPECT_EQ(ask_error(policy_get_request{"nobody"}).code, errc::device_not_found);
}

TEST_F(policy_router_test, put_creates_with_generated_keys_commits_and_updates_the_view) {
  const int before = store_.commits;
  auto out = batch(items(asked(
      to_.address,
      policy_put_request{"adm", policy("backend", auth::access_rights::service_connect), true})));
  EXPECT_EQ(store_.commits, before + 1);
  const auto r = all<reply>(out);
  ASSERT_EQ(r.size(), 1u);
  const auto& p = std::get<policy_reply>(r[0].what);
  EXPECT_TRUE(p.created);
  EXPECT_EQ(p.policy.primary_key.bytes().size(), 32u);
  EXPECT_EQ(p.policy.secondary_key.bytes().size(), 32u);
  EXPECT_NE(p.policy.primary_key, p.policy.secondary_key);
  EXPECT_EQ(stored("backend"), p.policy);
  const auto view = view_.policies();
  EXPECT_NE(auth::find_policy(view, "backend"), nullptr);
  const auto c = changed(out);
  ASSERT_TRUE(c);
  EXPECT_TRUE(c->policies);
  EXPECT_EQ(door_of(outbound{*c}), every_door);
  // create only: the second one is refused and changes nothing
  EXPECT_EQ(
      ask_error(policy_put_request{"adm", policy("backend", auth::access_rights::all), true}).code,
      errc::invalid_operation);
  EXPECT_EQ(stored("backend"), p.policy);
}

TEST_F(policy_router_test, replace_keeps_keys_not_given_and_takes_those_given) {
  const auto old = registry_.get_policy("service").value();
  auto p =
      policy("service", auth::access_rights::service_connect | auth::access_rights::registry_read);
  const auto given = auth::shared_access_key::from_bytes(std::string(20, 'g'));
  p.secondary_key = given;
  const auto r = ask<policy_reply>(policy_put_request{"adm", p, false});
  EXPECT_FALSE(r.created);
  EXPECT_EQ(r.policy.primary_key, old.primary_key);
  EXPECT_EQ(r.policy.secondary_key, given);
  EXPECT_EQ(stored("service")->rights, p.rights);
  EXPECT_EQ(auth::find_policy(view_.policies(), "service")->secondary_key, given);
  // a primary key equal to the kept secondary: refused, nothing changes
  auto same = policy("service", auth::access_rights::service_connect);
  same.primary_key = given;
  const auto e = ask_error(policy_put_request{"adm", same, false});
  EXPECT_EQ(e.code, errc::argument_invalid);
  EXPECT_NE(e.message.find("secondaryKey"), std::string::npos) << e.message;
  EXPECT_EQ(stored("service")->primary_key, old.primary_key);
}

TEST_F(policy_router_test, renew_primary_secondary_and_swap) {
  const auto old = registry_.get_policy("service").value();
  auto out =
      batch(items(asked(to_.address, policy_renew_request{"adm", "service", renew_key::primary})));
  auto r = std::get<policy_reply>(all<reply>(out).at(0).what);
  EXPECT_NE(r.policy.primary_key, old.primary_key);
  EXPECT_EQ(r.policy.secondary_key, old.secondary_key);
  EXPECT_EQ(stored("service"), r.policy);
  EXPECT_EQ(auth::find_policy(view_.policies(), "service")->primary_key, r.policy.primary_key);
  ASSERT_TRUE(changed(out));
  const auto after_primary = r.policy;
  r = ask<policy_reply>(policy_renew_request{"adm", "service", renew_key::secondary});
  EXPECT_EQ(r.policy.primary_key, after_primary.primary_key);
  EXPECT_NE(r.policy.secondary_key, after_primary.secondary_key);
  const auto before_swap = r.policy;
  r = ask<policy_reply>(policy_renew_request{"adm", "service", renew_key::swap});
  EXPECT_EQ(r.policy.primary_key, before_swap.secondary_key);
  EXPECT_EQ(r.policy.secondary_key, before_swap.primary_key);
  EXPECT_EQ(stored("service"), r.policy);
  EXPECT_EQ(ask_error(policy_renew_request{"adm", "nobody", renew_key::primary}).code,
            errc::device_not_found);
}

TEST_F(policy_router_test, delete_removes_it_durably_and_from_the_view) {
  auto out = batch(items(asked(to_.address, policy_delete_request{"adm", "registryRead"})));
  EXPECT_TRUE(std::holds_alternative<done_reply>(all<reply>(out).at(0).what));
  ASSERT_TRUE(changed(out));
  EXPECT_FALSE(stored("registryRead"));
  EXPECT_FALSE(registry_.get_policy("registryRead"));
  EXPECT_EQ(auth::find_policy(view_.policies(), "registryRead"), nullptr);
  EXPECT_EQ(ask_error(policy_delete_request{"adm", "registryRead"}).code, errc::device_not_found);
}

TEST_F(policy_router_test, the_last_policy_with_every_right_cannot_go_or_lose_one) {
  const auto before = registry_.policies();
  const int commits = store_.commits;
  auto e = ask_error(policy_delete_request{"adm", "iothubowner"});
  EXPECT_EQ(e.code, errc::invalid_operation);
  EXPECT_NE(e.message.find("last policy with all four rights"), std::string::npos) << e.message;
  e = ask_error(
      policy_put_request{"adm", policy("iothubowner", auth::access_rights::registry_write), false});
  EXPECT_EQ(e.code, errc::invalid_operation);
  EXPECT_EQ(registry_.policies(), before);
  EXPECT_EQ(store_.inner.load().value().policies, before);
  EXPECT_EQ(view_.policies(), before);
  EXPECT_EQ(store_.commits, commits + 2);  // empty batches; nothing written
  // with a second administrator, the first may go
  (void)ask<policy_reply>(
      policy_put_request{"adm", policy("owner2", auth::access_rights::all), true});
  (void)ask<done_reply>(policy_delete_request{"adm", "iothubowner"});
  EXPECT_FALSE(stored("iothubowner"));
  // a policy without every right can always be deleted or changed
  (void)ask<done_reply>(policy_delete_request{"adm", "device"});
}

TEST_F(policy_router_test, errors_change_nothing_and_release_no_credentials_change) {
  const auto before = registry_.policies();
  for (request r :
       {request{policy_put_request{"adm", policy("bad name!", auth::access_rights::all), false}},
        request{policy_renew_request{"adm", "nobody", renew_key::swap}},
        request{policy_delete_request{"adm", "nobody"}},
        request{policy_put_request{"adm", policy("service", auth::access_rights::all), true}}}) {
    auto out = batch(items(asked(to_.address, r)));
    ASSERT_EQ(all<reply>(out).size(), 1u);
    EXPECT_TRUE(std::holds_alternative<error>(all<reply>(out)[0].what));
    EXPECT_FALSE(changed(out));
  }
  EXPECT_EQ(registry_.policies(), before);
  EXPECT_EQ(store_.inner.load().value().policies, before);
  EXPECT_EQ(view_.policies(), before);
}

TEST_F(policy_router_test, a_failed_commit_leaves_the_view_and_releases_nothing) {
  const auto before = view_.policies();
  store_.fail_commit = true;
  ASSERT_TRUE(router_->begin_batch());
  router_->handle(asked(to_.address, policy_renew_request{"adm", "service", renew_key::primary}),
                  t0);
  EXPECT_FALSE(router_->end_batch());
  EXPECT_EQ(view_.policies(), before);
}

TEST_F(policy_router_test, device_key_changes_and_deletes_name_the_device) {
  auto u = sas("dev1");
  u.primary_key = auth::shared_access_key::from_bytes(std::string(32, 'n')).to_base64();
  auto out = batch(items(asked(to_.address, registry_put_request{"adm", u, std::string("*")})));
  auto c = changed(out);
  ASSERT_TRUE(c);
  EXPECT_FALSE(c->policies);
  EXPECT_EQ(c->devices, std::vector<std::string>{"dev1"});
  // a create names nothing: no token can rely on a device that did not exist
  out = batch(items(asked(to_.address, registry_put_request{"adm", sas("dev7"), std::nullopt})));
  EXPECT_FALSE(changed(out));
  out = batch(items(asked(to_.address, registry_delete_request{"adm", "dev7", std::nullopt})));
  c = changed(out);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->devices, std::vector<std::string>{"dev7"});
}

TEST_F(router_test, policy_requests_without_a_registry_are_not_supported) {
  EXPECT_EQ(ask_error(policy_list_request{}).code, errc::not_supported);
  EXPECT_EQ(ask_error(policy_delete_request{"adm", "x"}).code, errc::not_supported);
}

// --- the C2D throttles (SPEC 2.7; apps/devicebound-hub/throttle.hpp) ---------------------------

class throttled_router_test : public router_test {
 protected:
  throttled_router_test() : router_test(options()) {
    (void)batch(items(event(add_device_request{"admin", "dev2"}),
                      event(add_device_request{"admin", "dev3"})));
  }
  static router_options options() {
    router_options o;
    o.throttle = {throttle_tier::s1, 1};  // 100 sends, 1000 receives a minute
    return o;
  }
};

TEST_F(throttled_router_test, sends_over_the_rate_get_429001_and_change_nothing) {
  for (int i = 0; i < 100; ++i)
    (void)ask<sent_reply>(send_request{"svc", i % 2 ? "dev1" : "dev2", text("m")});
  const auto stats = hub_.stats();
  const auto commits = store_.commits;
  const auto depth1 = hub_.queue_depth("dev1", t0).value();
  // The 101st, even one the engine would refuse, is throttled first.
  for (const char* device : {"dev1", "nobody"}) {
    const auto e = ask_error(send_request{"svc", device, text("over", ack_mode::full)});
    EXPECT_EQ(e.code, errc::throttling) << e.message;
  }
  EXPECT_EQ(hub_.stats(), stats);
  EXPECT_EQ(hub_.queue_depth("dev1", t0).value(), depth1);
  EXPECT_EQ(hub_.feedback_queue_depth(), 0u);
  EXPECT_EQ(store_.commits, commits + 2);  // empty batches: nothing in them
  // One more 600 ms later (one a minute / 100), and not two.
  (void)ask<sent_reply>(send_request{"svc", "dev3", text("later")}, t0 + 600ms);
  EXPECT_EQ(ask_error(send_request{"svc", "dev3", text("again")}, t0 + 1199ms).code,
            errc::throttling);
}

TEST_F(throttled_router_test, refused_sends_take_no_token) {
  // Sends the engine refuses (unknown device, full queue) use none of the rate.
  for (int i = 0; i < 200; ++i)
    EXPECT_EQ(ask_error(send_request{"svc", "nobody", text("x")}).code, errc::device_not_found);
  for (int i = 0; i < 100; ++i)
    (void)ask<sent_reply>(send_request{"svc", i % 2 ? "dev1" : "dev2", text("m")});
}

TEST_F(throttled_router_test, https_receives_have_their_own_rate) {
  (void)ask<sent_reply>(send_request{"svc", "dev1", text("a")});
  for (int i = 0; i < 1000; ++i)
    (void)ask<message_reply>(receive_request{"dev1"});
  EXPECT_EQ(ask_error(receive_request{"dev1"}).code, errc::throttling);
  // A refused receive locks nothing; sends are not affected.
  (void)ask<sent_reply>(send_request{"svc", "dev1", text("b")});
  EXPECT_EQ(ask<message_reply>(receive_request{"dev1"}, t0 + 60ms).msg.value().body, "b");
}

}  // namespace
