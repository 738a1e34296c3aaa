// Every enumeration's spelling lives beside it: `to_string(E)` and
// `parse_<enum>(std::string_view)`. Stores, the daemon and the bindings call
// these, so a value must survive the round trip, two values must never share a
// spelling, and anything else must parse to nothing. (`sqlite_sync` is checked
// in tests/test_store.cpp, which links SQLite.)
#include <gtest/gtest.h>

#include <cstddef>
#include <devicebound/connection_status.hpp>
#include <devicebound/errors.hpp>
#include <devicebound/feedback_batch.hpp>
#include <devicebound/hub.hpp>
#include <devicebound/hub_config.hpp>
#include <devicebound/identity.hpp>
#include <devicebound/journal.hpp>
#include <devicebound/lifecycle.hpp>
#include <devicebound/message.hpp>
#include <devicebound/service_client.hpp>
#include <devicebound/settlement.hpp>
#include <devicebound/transport/faulty.hpp>
#include <devicebound/transport/inproc.hpp>
#include <initializer_list>
#include <set>
#include <string>
#include <string_view>

namespace {

using namespace devicebound;

/// Checks `to_string`/`parse` over `all`, which must list every value of `E`.
template <class E, class Parse>
void expect_round_trips(std::initializer_list<E> all, Parse parse) {
  std::set<std::string_view> spellings;
  for (E e : all) {
    const std::string_view s = to_string(e);
    EXPECT_FALSE(s.empty());
    EXPECT_TRUE(spellings.insert(s).second) << "two values are spelled '" << s << "'";
    const auto back = parse(s);
    ASSERT_TRUE(back) << "'" << s << "' does not parse";
    EXPECT_EQ(*back, e) << "'" << s << "' parses to another value";
    EXPECT_FALSE(parse(std::string(s) + "x")) << "'" << s << "x' parses";
  }
  EXPECT_FALSE(parse(""));
  EXPECT_FALSE(parse("no such value"));
}

/// For enumerations numbered 0..N-1: the list above is complete when it has N values.
template <class E>
void expect_all_of(std::initializer_list<E> all, E last) {
  EXPECT_EQ(all.size(), static_cast<std::size_t>(last) + 1) << "a value is missing from the table";
}

TEST(enum_strings, vocabulary) {
  const auto acks = {ack_mode::none, ack_mode::positive, ack_mode::negative, ack_mode::full};
  expect_all_of(acks, ack_mode::full);
  expect_round_trips(acks, parse_ack_mode);

  const auto dispositions = {disposition::complete, disposition::reject, disposition::abandon};
  expect_all_of(dispositions, disposition::abandon);
  expect_round_trips(dispositions, parse_disposition);

  const auto statuses = {feedback_status::success, feedback_status::expired,
                         feedback_status::delivery_count_exceeded, feedback_status::rejected,
                         feedback_status::purged};
  expect_all_of(statuses, feedback_status::purged);
  expect_round_trips(statuses, parse_feedback_status);

  const auto connection = {connection_status::connected, connection_status::disconnected};
  expect_all_of(connection, connection_status::disconnected);
  expect_round_trips(connection, parse_connection_status);

  const auto reasons = {connection_status_reason::ok,
                        connection_status_reason::client_closed,
                        connection_status_reason::no_network,
                        connection_status_reason::communication_error,
                        connection_status_reason::bad_credential,
                        connection_status_reason::device_disabled,
                        connection_status_reason::retry_expired};
  expect_all_of(reasons, connection_status_reason::retry_expired);
  expect_round_trips(reasons, parse_connection_status_reason);
}

TEST(enum_strings, error_codes) {
  // not numbered from 0: every name must differ from "Unknown", the name of no code
  const auto codes = {errc::argument_invalid,
                      errc::iothub_quota_exceeded,
                      errc::device_maximum_queue_depth_exceeded,
                      errc::device_not_found,
                      errc::device_already_exists,
                      errc::precondition_failed,
                      errc::device_message_lock_lost,
                      errc::message_too_large,
                      errc::throttling,
                      errc::server_error,
                      errc::server_busy,
                      errc::not_connected,
                      errc::timeout,
                      errc::not_supported,
                      errc::invalid_operation,
                      errc::unauthorized,
                      errc::malformed};
  for (errc e : codes)
    EXPECT_NE(to_string(e), "Unknown") << static_cast<std::uint32_t>(e);
  expect_round_trips(codes, parse_errc);
  EXPECT_FALSE(parse_errc("Unknown"));
}

TEST(enum_strings, engine_and_configuration) {
  const auto states = {message_state::enqueued, message_state::invisible, message_state::completed,
                       message_state::dead_lettered, message_state::purged};
  expect_all_of(states, message_state::purged);
  expect_round_trips(states, parse_message_state);

  const auto reasons = {dead_letter_reason::none, dead_letter_reason::rejected,
                        dead_letter_reason::expired, dead_letter_reason::delivery_count_exceeded};
  expect_all_of(reasons, dead_letter_reason::delivery_count_exceeded);
  expect_round_trips(reasons, parse_dead_letter_reason);

  const auto rules = {delivery_count_rule::abandon_only, delivery_count_rule::every_delivery};
  expect_all_of(rules, delivery_count_rule::every_delivery);
  expect_round_trips(rules, parse_delivery_count_rule);

  const auto caps = {expiry_cap_policy::clamp, expiry_cap_policy::reject};
  expect_all_of(caps, expiry_cap_policy::reject);
  expect_round_trips(caps, parse_expiry_cap_policy);

  const auto purges = {purge_feedback::negative_acks, purge_feedback::none};
  expect_all_of(purges, purge_feedback::none);
  expect_round_trips(purges, parse_purge_feedback);

  const auto causes = {
      transition_cause::accepted,    transition_cause::lock,    transition_cause::complete,
      transition_cause::reject,      transition_cause::abandon, transition_cause::lock_expired,
      transition_cause::ttl_expired, transition_cause::purge,   transition_cause::device_removed};
  expect_all_of(causes, transition_cause::device_removed);
  expect_round_trips(causes, parse_transition_cause);
}

TEST(enum_strings, configuration_keeps_its_documented_spellings) {
  // these spellings are stored in SQLite files and written in config files: never change them
  EXPECT_EQ(to_string(expiry_cap_policy::clamp), "clamp");
  EXPECT_EQ(to_string(expiry_cap_policy::reject), "reject");
  EXPECT_EQ(to_string(delivery_count_rule::abandon_only), "abandon_only");
  EXPECT_EQ(to_string(delivery_count_rule::every_delivery), "every_delivery");
  EXPECT_EQ(to_string(purge_feedback::negative_acks), "negative_acks");
  EXPECT_EQ(to_string(purge_feedback::none), "none");
}

TEST(enum_strings, clients) {
  const auto assignments = {message_id_assignment::never, message_id_assignment::when_unset};
  expect_all_of(assignments, message_id_assignment::when_unset);
  expect_round_trips(assignments, parse_message_id_assignment);

  const auto feedback = {feedback_disposition::complete, feedback_disposition::abandon};
  expect_all_of(feedback, feedback_disposition::abandon);
  expect_round_trips(feedback, parse_feedback_disposition);
}

TEST(enum_strings, transports) {
  const auto settlements = {inproc::settlement::full, inproc::settlement::complete_only};
  expect_all_of(settlements, inproc::settlement::complete_only);
  expect_round_trips(settlements, inproc::parse_settlement);

  const auto ops = {faulty::op::open,
                    faulty::op::receive,
                    faulty::op::complete,
                    faulty::op::reject,
                    faulty::op::abandon,
                    faulty::op::send,
                    faulty::op::purge,
                    faulty::op::queue_depth,
                    faulty::op::receive_feedback,
                    faulty::op::complete_feedback,
                    faulty::op::abandon_feedback};
  EXPECT_EQ(ops.size(), faulty::op_count);
  expect_round_trips(ops, faulty::parse_op);

  const auto drops = {faulty::drop_point::request, faulty::drop_point::response};
  expect_all_of(drops, faulty::drop_point::response);
  expect_round_trips(drops, faulty::parse_drop_point);
}

TEST(enum_strings, identity_registry) {
  const auto statuses = {device_status::enabled, device_status::disabled};
  expect_all_of(statuses, device_status::disabled);
  expect_round_trips(statuses, parse_device_status);
  const auto types = {auth_type::sas, auth_type::self_signed, auth_type::certificate_authority,
                      auth_type::none};
  expect_all_of(types, auth_type::none);
  expect_round_trips(types, parse_auth_type);
}

TEST(enum_strings, journal_records_have_distinct_names) {
  std::set<std::string_view> names;
  const journal::change records[] = {
      journal::device_added{},     journal::device_removed{},  journal::message_accepted{},
      journal::message_changed{},  journal::message_removed{}, journal::feedback_pending{},
      journal::feedback_batched{}, journal::batch_changed{},   journal::batch_removed{},
      journal::counters{},         journal::config_changed{},  journal::identity_put{},
      journal::identity_removed{}, journal::policy_put{},      journal::policy_removed{}};
  static_assert(std::size(records) == std::variant_size_v<journal::change>);
  for (const auto& c : records)
    EXPECT_TRUE(names.insert(journal::name_of(c)).second) << journal::name_of(c);
}

}  // namespace
