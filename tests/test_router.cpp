// The daemon's router (apps/devicebound-hub/router.hpp) without a broker: typed
// requests in, typed replies and pushes out, released only after the commit.
#include <gtest/gtest.h>

#include <devicebound/hub.hpp>
#include <devicebound/store/store.hpp>
#include <string>
#include <vector>

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
  explicit router_test(router_options o = {}) {
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

  error ask_error(request r) {
    auto out = batch(items(asked(to_.address, std::move(r))));
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

}  // namespace
