// The broker seam (apps/devicebound-hub/broker_seam.hpp) and RabbitMQ's events
// (rabbit_events.hpp), sans-I/O: the plugin's and RabbitMQ's events read into
// one vocabulary, the delivery tags of both dialects, the ids RabbitMQ cannot
// carry (refused by the router at registration), `--rabbit-amqp-url`, and the
// node configuration that turns the events on.
#include <gtest/gtest.h>

#include <devicebound/hub.hpp>
#include <devicebound/store/store.hpp>
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

TEST(rabbit_events, consumer_events_are_presence) {
  rabbit::incoming created{"consumer.created", "mqtt-subscription-dev1qos1", {}};
  auto s = rabbit::event_of(created);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->what, kind::subscribed);
  EXPECT_EQ(s->device, "dev1");
  rabbit::incoming deleted{"consumer.deleted", "mqtt-subscription-dev1qos1", {}};
  auto d = rabbit::event_of(deleted);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->what, kind::disconnected);
  // not a device's QoS 1 session, the hub's own, or no queue header
  EXPECT_FALSE(rabbit::event_of({"consumer.created", "mqtt-subscription-dev1qos0", {}}));
  EXPECT_FALSE(rabbit::event_of({"consumer.created", "amq.gen-1", {}}));
  EXPECT_FALSE(rabbit::event_of({"consumer.created", "mqtt-subscription-hubqos1", {}}, "hub"));
  EXPECT_FALSE(rabbit::event_of({"consumer.created", std::nullopt, {}}));
  EXPECT_FALSE(rabbit::event_of({"queue.created", "mqtt-subscription-dev1qos1", {}}));
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
  auto e = rabbit::event_of({"deliver.mqtt-subscription-dev1qos1", std::nullopt, {routing_key}});
  ASSERT_TRUE(e);
  EXPECT_EQ(e->what, kind::delivered);
  EXPECT_EQ(e->device, "dev1");
  EXPECT_EQ(e->tag, tag);
  // deliveries to other queues (the hub's own, a back end's, the event queue)
  EXPECT_FALSE(rabbit::event_of({"deliver.mqtt-subscription-hubqos1", std::nullopt, {"a"}}, "hub"));
  EXPECT_FALSE(rabbit::event_of({"deliver.amq.gen-1", std::nullopt, {"a"}}));
  EXPECT_FALSE(rabbit::event_of({"deliver.mqtt-subscription-dev1qos1", std::nullopt, {}}));
  EXPECT_FALSE(rabbit::event_of({"publish.amq.topic", std::nullopt, {routing_key}}));
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
