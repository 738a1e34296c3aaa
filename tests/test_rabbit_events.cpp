// The broker seam (apps/devicebound-hub/broker_seam.hpp) and RabbitMQ's events
// (rabbit_events.hpp), sans-I/O: the plugin's and RabbitMQ's events read into
// one vocabulary, the delivery tags of both dialects, the ids RabbitMQ cannot
// carry (refused by the router at registration), `--rabbit-amqp-url`, and the
// node configuration that turns the events on.
#include <gtest/gtest.h>

#include <devicebound/hub.hpp>
#include <devicebound/store/store.hpp>
#include <optional>
#include <set>
#include <string>

#include "broker_seam.hpp"
#include "rabbit_config.hpp"
#include "rabbit_events.hpp"
#include "router.hpp"

namespace {

using namespace devicebound;
using namespace devicebound::hubd;
using kind = broker_event::kind;

TEST(broker_seam, plugin_events_are_read_as_before) {
  auto s = plugin_events::parse("devicebound/broker/subscribed/dev1",
                                "devices/dev1/messages/devicebound/#");
  ASSERT_TRUE(s);
  EXPECT_EQ(s->what, kind::subscribed);
  EXPECT_EQ(s->device, "dev1");
  auto d = plugin_events::parse("devicebound/broker/delivered/dev1",
                                "devices/dev1/messages/devicebound/%24.mid=1");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->what, kind::delivered);
  EXPECT_EQ(d->tag, "devices/dev1/messages/devicebound/%24.mid=1");
  auto x = plugin_events::parse("devicebound/broker/disconnected/dev1", "");
  ASSERT_TRUE(x);
  EXPECT_EQ(x->what, kind::disconnected);
  EXPECT_FALSE(plugin_events::parse("devicebound/broker/other/dev1", ""));
  EXPECT_FALSE(plugin_events::parse("devicebound/broker/subscribed", ""));
  EXPECT_FALSE(plugin_events::parse("devicebound/broker/subscribed/", ""));
  EXPECT_FALSE(plugin_events::parse("devicebound/hub/x", ""));
}

TEST(broker_seam, dialects) {
  const auto m = broker_dialect::of(broker_kind::mosquitto);
  EXPECT_EQ(m.delivery_tag, &plain_delivery_tag);
  ASSERT_EQ(m.event_filters.size(), 1u);
  EXPECT_EQ(m.event_filters[0], "devicebound/broker/#");
  const auto r = broker_dialect::of(broker_kind::rabbitmq);
  EXPECT_EQ(r.delivery_tag, &escaped_delivery_tag);
  EXPECT_TRUE(r.event_filters.empty());

  message msg;
  msg.message_id = "mid.1";
  msg.app_properties = {{"a.b", "c.d"}};
  const std::string plain = plain_delivery_tag("dev1", msg);
  const std::string escaped = escaped_delivery_tag("dev1", msg);
  EXPECT_NE(plain.find("%24.mid=mid.1"), std::string::npos) << plain;
  EXPECT_EQ(escaped.find('.'), std::string::npos) << escaped;
  EXPECT_NE(escaped.find("%2E"), std::string::npos) << escaped;
  // Both decode to the same message.
  auto a = codec::decode_devicebound_topic(plain);
  auto b = codec::decode_devicebound_topic(escaped);
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->message.message_id, b->message.message_id);
  EXPECT_EQ(a->message.app_properties, b->message.app_properties);
}

TEST(broker_seam, parse_broker_kind) {
  EXPECT_EQ(*parse_broker_kind("mosquitto"), broker_kind::mosquitto);
  EXPECT_EQ(*parse_broker_kind("rabbitmq"), broker_kind::rabbitmq);
  auto bad = parse_broker_kind("nats");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.code(), errc::argument_invalid);
  EXPECT_NE(bad.error().message.find("mosquitto or rabbitmq"), std::string::npos);
}

TEST(broker_seam, rabbitmq_refuses_ids_with_a_dot_and_the_star) {
  EXPECT_TRUE(check_device_id_for(broker_kind::mosquitto, "a.b"));
  EXPECT_TRUE(check_device_id_for(broker_kind::rabbitmq, "dev-1_x:y"));
  auto dot = check_device_id_for(broker_kind::rabbitmq, "a.b");
  ASSERT_FALSE(dot);
  EXPECT_EQ(dot.code(), errc::argument_invalid);
  EXPECT_EQ(dot.error().numeric() / 1000, 400);
  EXPECT_NE(dot.error().message.find("'.'"), std::string::npos) << dot.error().message;
  EXPECT_NE(dot.error().message.find("--broker rabbitmq"), std::string::npos);
  EXPECT_FALSE(check_device_id_for(broker_kind::rabbitmq, "*"));
}

TEST(rabbit_events, session_queue_names) {
  EXPECT_EQ(rabbit::device_of_session_queue("mqtt-subscription-dev1qos1"), "dev1");
  EXPECT_EQ(rabbit::device_of_session_queue("mqtt-subscription-qos1qos1"), "qos1");
  EXPECT_FALSE(rabbit::device_of_session_queue("mqtt-subscription-dev1qos0"));
  EXPECT_FALSE(rabbit::device_of_session_queue("mqtt-subscription-qos1"));
  EXPECT_FALSE(rabbit::device_of_session_queue("amq.gen-xyz"));
  EXPECT_FALSE(rabbit::device_of_session_queue(""));
}

rabbit::incoming consumer(std::string key, std::optional<std::string> queue) {
  rabbit::incoming in;
  in.routing_key = std::move(key);
  in.queue = std::move(queue);
  return in;
}

rabbit::incoming binding(std::string source, std::string queue, std::string key) {
  rabbit::incoming in;
  in.routing_key = "binding.created";
  in.source_name = std::move(source);
  in.destination_name = std::move(queue);
  in.binding_key = std::move(key);
  return in;
}

rabbit::incoming delivery(std::string queue, std::vector<std::string> keys) {
  rabbit::incoming in;
  in.routing_key = "deliver." + queue;
  in.routing_keys = std::move(keys);
  return in;
}

using nk = rabbit::note::kind;

TEST(rabbit_events, notes_of_the_event_exchange) {
  auto c = rabbit::note_of(consumer("consumer.created", "mqtt-subscription-dev1qos1"));
  ASSERT_TRUE(c);
  EXPECT_EQ(c->what, nk::consumer_created);
  EXPECT_EQ(c->device, "dev1");
  auto d = rabbit::note_of(consumer("consumer.deleted", "mqtt-subscription-dev1qos1"));
  ASSERT_TRUE(d);
  EXPECT_EQ(d->what, nk::consumer_deleted);
  auto b = rabbit::note_of(
      binding("amq.topic", "mqtt-subscription-dev1qos1", "devices.dev1.messages.devicebound.#"));
  ASSERT_TRUE(b);
  EXPECT_EQ(b->what, nk::bound);
  rabbit::incoming qd;
  qd.routing_key = "queue.deleted";
  qd.name = "mqtt-subscription-dev1qos1";
  auto q = rabbit::note_of(qd);
  ASSERT_TRUE(q);
  EXPECT_EQ(q->what, nk::queue_deleted);
  // not a device's QoS 1 session, the hub's own, no queue header, another filter or exchange
  EXPECT_FALSE(rabbit::note_of(consumer("consumer.created", "mqtt-subscription-dev1qos0")));
  EXPECT_FALSE(rabbit::note_of(consumer("consumer.created", "amq.gen-1")));
  EXPECT_FALSE(rabbit::note_of(consumer("consumer.created", "mqtt-subscription-hubqos1"), "hub"));
  EXPECT_FALSE(rabbit::note_of(consumer("consumer.created", std::nullopt)));
  EXPECT_FALSE(rabbit::note_of(consumer("queue.created", "mqtt-subscription-dev1qos1")));
  EXPECT_FALSE(rabbit::note_of(
      binding("amq.topic", "mqtt-subscription-dev1qos1", "devices.dev1.messages.events.#")));
  EXPECT_FALSE(rabbit::note_of(
      binding("amq.topic", "mqtt-subscription-dev1qos1", "devices.dev2.messages.devicebound.#")));
  EXPECT_FALSE(rabbit::note_of(
      binding("other", "mqtt-subscription-dev1qos1", "devices.dev1.messages.devicebound.#")));
}

TEST(rabbit_events, a_firehose_delivery_is_the_escaped_topic_the_hub_published) {
  message m;
  m.message_id = "mid.1";
  m.correlation_id = "c*1";
  m.app_properties = {{"a.b", "c.d"}, {"x", "+"}};
  const std::string tag = escaped_delivery_tag("dev1", m);
  // RabbitMQ's MQTT plugin routes the topic with each '/' written '.'.
  std::string routing_key = tag;
  for (char& c : routing_key)
    if (c == '/')
      c = '.';
  auto e = rabbit::note_of(delivery("mqtt-subscription-dev1qos1", {routing_key}));
  ASSERT_TRUE(e);
  EXPECT_EQ(e->what, nk::delivered);
  EXPECT_EQ(e->device, "dev1");
  EXPECT_EQ(e->tag, tag);
  // deliveries to other queues (the hub's own, a back end's, the event queue)
  EXPECT_FALSE(rabbit::note_of(delivery("mqtt-subscription-hubqos1", {"a"}), "hub"));
  EXPECT_FALSE(rabbit::note_of(delivery("amq.gen-1", {"a"})));
  EXPECT_FALSE(rabbit::note_of(delivery("mqtt-subscription-dev1qos1", {})));
  rabbit::incoming publish;
  publish.routing_key = "publish.amq.topic";
  publish.routing_keys = {routing_key};
  EXPECT_FALSE(rabbit::note_of(publish));
}

TEST(rabbit_events, subscribed_waits_for_the_binding_of_a_first_subscribe) {
  const time_point t = time_point{} + std::chrono::hours(1);
  rabbit::presence_tracker p(std::chrono::seconds(1));
  // first subscribe: the consumer comes first, the binding a moment later
  EXPECT_TRUE(p.on({nk::consumer_created, "dev1", {}}, t).empty());
  EXPECT_TRUE(p.tick(t + std::chrono::milliseconds(500)).empty());
  auto s = p.on({nk::bound, "dev1", {}}, t + std::chrono::milliseconds(600));
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].what, kind::subscribed);
  EXPECT_EQ(s[0].device, "dev1");
  EXPECT_TRUE(p.tick(t + std::chrono::seconds(5)).empty());
  // gone, then back on its persistent session: bound already, subscribed at once
  auto d = p.on({nk::consumer_deleted, "dev1", {}}, t + std::chrono::seconds(6));
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].what, kind::disconnected);
  auto again = p.on({nk::consumer_created, "dev1", {}}, t + std::chrono::seconds(7));
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].what, kind::subscribed);
  // its session deleted: the next consumer waits for a binding again
  (void)p.on({nk::queue_deleted, "dev1", {}}, t + std::chrono::seconds(8));
  EXPECT_TRUE(p.on({nk::consumer_created, "dev1", {}}, t + std::chrono::seconds(9)).empty());
  // a binding made before the tracker knew (the hub restarted): taken as bound after the grace
  EXPECT_TRUE(p.tick(t + std::chrono::milliseconds(9999)).empty());
  auto late = p.tick(t + std::chrono::seconds(10));
  ASSERT_EQ(late.size(), 1u);
  EXPECT_EQ(late[0].what, kind::subscribed);
  // deliveries pass through
  auto dl = p.on({nk::delivered, "dev1", "devices/dev1/messages/devicebound/x"}, t);
  ASSERT_EQ(dl.size(), 1u);
  EXPECT_EQ(dl[0].what, kind::delivered);
  EXPECT_EQ(dl[0].tag, "devices/dev1/messages/devicebound/x");
}

TEST(rabbit_events, a_consumer_gone_before_its_binding_is_never_subscribed) {
  const time_point t = time_point{} + std::chrono::hours(1);
  rabbit::presence_tracker p(std::chrono::seconds(1));
  EXPECT_TRUE(p.on({nk::consumer_created, "dev1", {}}, t).empty());
  auto d = p.on({nk::consumer_deleted, "dev1", {}}, t);
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].what, kind::disconnected);
  EXPECT_TRUE(p.tick(t + std::chrono::seconds(5)).empty());
}

TEST(rabbit_events, known_sessions_are_rechecked_after_a_reconnect) {
  rabbit::known_sessions k;
  EXPECT_TRUE(k.devices().empty());  // a first connection re-checks nothing
  k.on({nk::consumer_created, "dev1", {}});
  k.on({nk::bound, "dev2", {}});
  k.on({nk::consumer_created, "dev3", {}});
  k.on({nk::delivered, "dev4", "devices/dev4/messages/devicebound/x"});  // not a session fact
  k.on({nk::consumer_deleted, "dev1", {}});                              // its session remains
  EXPECT_EQ(k.devices(), (std::set<std::string>{"dev1", "dev2", "dev3"}));
  k.on({nk::queue_deleted, "dev3", {}});  // its session is gone
  EXPECT_EQ(k.devices(), (std::set<std::string>{"dev1", "dev2"}));
  // consumed (it came back on another node while the consumer was away): subscribed
  auto s = k.recheck("dev1", 1u);
  EXPECT_EQ(s.what, kind::subscribed);
  EXPECT_EQ(s.device, "dev1");
  // its session exists but nobody consumes it (it left meanwhile): disconnected, still known
  auto d = k.recheck("dev2", 0u);
  EXPECT_EQ(d.what, kind::disconnected);
  EXPECT_EQ(d.device, "dev2");
  EXPECT_TRUE(k.devices().contains("dev2"));
  // no such queue (404): disconnected and forgotten
  auto gone = k.recheck("dev2", std::nullopt);
  EXPECT_EQ(gone.what, kind::disconnected);
  EXPECT_EQ(k.devices(), (std::set<std::string>{"dev1"}));
}

TEST(rabbit_events, amqp_url) {
  auto u = rabbit::parse_amqp_url("amqp://hub%40x:p%3Ass@127.0.0.1:5673/");
  ASSERT_TRUE(u) << u.error().message;
  EXPECT_EQ(u->user, "hub@x");
  EXPECT_EQ(u->password, "p:ss");
  EXPECT_EQ(u->host, "127.0.0.1");
  EXPECT_EQ(u->port, 5673);
  EXPECT_TRUE(rabbit::parse_amqp_url("amqp://u:p@localhost:5672"));
  for (const char* bad : {"amqps://u:p@h:1/", "http://u:p@h:1/", "amqp://h:1/", "amqp://u@h:1/",
                          "amqp://u:p@h/", "amqp://u:p@h:0/", "amqp://u:p@h:99999/",
                          "amqp://u:p@h:1/vhost", "amqp://u:p@h:x1/", "amqp://:p@h:1/"}) {
    auto r = rabbit::parse_amqp_url(bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.code(), errc::argument_invalid) << bad;
  }
}

TEST(rabbit_events, node_configuration_for_the_events) {
  rabbit::node_config c;
  c.auth_base_url = "http://127.0.0.1:8088";
  c.amqp_listen = "127.0.0.1:5672";
  c.broker_events = true;
  c.internal_backend_first = true;
  c.hub_user = "events";
  c.hub_password = "secret";
  auto conf = rabbit::rabbitmq_conf(c);
  ASSERT_TRUE(conf) << conf.error().message;
  EXPECT_NE(conf->find("listeners.tcp.1 = 127.0.0.1:5672\n"), std::string::npos);
  EXPECT_EQ(conf->find("listeners.tcp = none"), std::string::npos);
  EXPECT_NE(conf->find("default_user = events\ndefault_pass = secret\n"), std::string::npos);
  EXPECT_NE(conf->find("auth_backends.1 = internal\nauth_backends.2 = http\n"), std::string::npos);
  EXPECT_NE(rabbit::enabled_plugins(c).find("rabbitmq_event_exchange"), std::string::npos);
  EXPECT_NE(rabbit::advanced_config(c).find("{trace_vhosts, [<<\"/\">>]}"), std::string::npos);

  // without the events: as before
  rabbit::node_config plain;
  plain.auth_base_url = c.auth_base_url;
  EXPECT_EQ(rabbit::enabled_plugins(plain), rabbit::enabled_plugins());
  EXPECT_EQ(rabbit::advanced_config(plain), rabbit::advanced_config());
  EXPECT_NE(rabbit::rabbitmq_conf(plain)->find("listeners.tcp = none\n"), std::string::npos);

  // a user of RabbitMQ's own needs its internal backend first; values must fit a line
  c.internal_backend_first = false;
  EXPECT_EQ(rabbit::rabbitmq_conf(c).code(), errc::argument_invalid);
  c.internal_backend_first = true;
  c.hub_password = "a#b";
  EXPECT_EQ(rabbit::rabbitmq_conf(c).code(), errc::argument_invalid);
}

/// The router refuses ids the broker cannot carry, at every registration path,
/// and changes nothing.
class router_with_rabbitmq_ids : public ::testing::Test {
 protected:
  router_with_rabbitmq_ids() {
    hub_config c;
    auto h = hub::open(c, store_);
    EXPECT_TRUE(h);
    hub_ = std::move(*h);
    router_options o;
    o.check_new_device_id = [](std::string_view id) {
      return check_device_id_for(broker_kind::rabbitmq, id);
    };
    o.auto_register = true;
    router_ = std::make_unique<router>(hub_, std::move(o));
  }
  std::vector<outbound> run(request r) {
    inbound in;
    in.from.address = "asker";
    in.what = std::move(r);
    EXPECT_TRUE(router_->begin_batch());
    router_->handle(std::move(in), now_);
    auto out = router_->end_batch();
    EXPECT_TRUE(out);
    return out ? std::move(*out) : std::vector<outbound>{};
  }
  std::optional<error> error_of(const std::vector<outbound>& out) {
    for (const auto& o : out)
      if (const auto* rp = std::get_if<reply>(&o))
        if (const auto* e = std::get_if<error>(&rp->what))
          return *e;
    return std::nullopt;
  }

  memory_store store_;
  hub hub_;
  std::unique_ptr<router> router_;
  time_point now_ = time_point{} + std::chrono::hours(24 * 365 * 30);
};

TEST_F(router_with_rabbitmq_ids, add_refuses_a_dotted_id_and_accepts_others) {
  auto e = error_of(run(add_device_request{"admin", "a.b"}));
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code, errc::argument_invalid);
  EXPECT_NE(e->message.find("'.'"), std::string::npos);
  EXPECT_FALSE(hub_.has_device("a.b"));
  EXPECT_FALSE(error_of(run(add_device_request{"admin", "ab"})));
  EXPECT_TRUE(hub_.has_device("ab"));
}

TEST_F(router_with_rabbitmq_ids, auto_register_does_not_register_a_dotted_id) {
  message m;
  m.body = "x";
  auto e = error_of(run(send_request{"svc", "c.d", m}));
  ASSERT_TRUE(e);
  EXPECT_FALSE(hub_.has_device("c.d"));
  EXPECT_FALSE(error_of(run(send_request{"svc", "cd", m})));
  EXPECT_TRUE(hub_.has_device("cd"));
}

}  // namespace
