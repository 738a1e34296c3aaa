/// \file feedback_json_reference.hpp
/// The nlohmann/json based feedback body codec that include/devicebound/codec/
/// feedback_json.hpp used before it got its own reader and writer. Test and
/// fuzz only: fuzz/feedback_json_fuzz.cpp holds the new codec against it
/// (accept/reject, records, error messages, encoded bytes).
///
/// Two differences from the code it was: a syntax error's message drops
/// nlohmann's `last read: '...'` by matching the exact token text (the old
/// trimming searched for "'; expected ", which a string token can contain),
/// and a number overflow reads "number overflow" without echoing the number.
#pragma once

#include <cstddef>
#include <devicebound/codec/iso8601.hpp>
#include <devicebound/codec/json_syntax_error.hpp>
#include <devicebound/errors.hpp>
#include <devicebound/feedback_batch.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace devicebound::fuzz_reference {

using codec::format_iso8601;
using codec::parse_iso8601;

namespace detail {
using codec::detail::json_syntax_error;
}  // namespace detail

/// The feedback body, compact, fields in the service's order (SPEC 4.5):
/// `[{"originalMessageId":..,"enqueuedTimeUtc":..,"statusCode":..,"description":..,
/// "deviceId":..,"deviceGenerationId":..}]`. An empty vector gives `[]`.
/// Invalid UTF-8 in a record's strings is written as U+FFFD rather than thrown
/// on: ids are ASCII by SPEC 3.2, and encoding must not fail.
inline std::string encode_feedback_json(const std::vector<feedback_record>& records) {
  nlohmann::ordered_json body = nlohmann::ordered_json::array();
  for (const auto& r : records) {
    nlohmann::ordered_json o = nlohmann::ordered_json::object();
    o["originalMessageId"] = r.original_message_id;
    o["enqueuedTimeUtc"] = format_iso8601(r.enqueued_time_utc);
    o["statusCode"] = std::string(to_string(r.status_code));
    o["description"] = r.description;
    o["deviceId"] = r.device_id;
    o["deviceGenerationId"] = r.device_generation_id;
    body.push_back(std::move(o));
  }
  return body.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

/// Decodes a feedback body; `errc::malformed` with a message naming the record
/// and field on any problem. Never throws (except `std::bad_alloc`).
///
/// Strict: the body must be a JSON array (RFC 8259, valid UTF-8, no comments,
/// numbers that fit a double) of objects; `enqueuedTimeUtc`, `statusCode`, `deviceId` and
/// `deviceGenerationId` must be present strings; `statusCode` must be one of
/// the five names, case as the service writes it; `enqueuedTimeUtc` must parse
/// with `parse_iso8601`.
///
/// Lenient, to read what other hubs or SDK fixtures may write:
/// - unknown fields are ignored (the service may add fields);
/// - `description` missing or null defaults to the status text (SPEC 4.5 says
///   the two agree); a present description is kept as written;
/// - `originalMessageId` null reads as "" (a message without MessageId, SPEC 4.6);
/// - an empty array decodes to no records;
/// - for a duplicated key the last value wins (nlohmann's behaviour).
inline result<std::vector<feedback_record>> decode_feedback_json(std::string_view body) {
  using json = nlohmann::json;
  using records = std::vector<feedback_record>;
  auto fail = [](std::string problem) -> result<records> {
    return make_error(errc::malformed, "feedback body: " + std::move(problem));
  };

  try {
    const json doc = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false,
                                 /*ignore_comments=*/false);
    if (doc.is_discarded()) {
      detail::json_syntax_error why;
      json::sax_parse(body.begin(), body.end(), &why);
      return fail("is not valid JSON " + why.describe());
    }
    if (!doc.is_array())
      return fail(std::string("is a JSON ") + doc.type_name() + ", expected an array of records");

    records out;
    out.reserve(doc.size());
    for (std::size_t i = 0; i < doc.size(); ++i) {
      const json& rec = doc[i];
      const std::string where = "record " + std::to_string(i) + ": ";
      if (!rec.is_object())
        return fail(where + "is a JSON " + rec.type_name() + ", expected an object");

      // Finds a required string field; on failure sets `problem`.
      std::string problem;
      auto string_field = [&](const char* name, bool null_is_empty) -> const std::string* {
        static const std::string empty;
        const auto it = rec.find(name);
        if (it == rec.end()) {
          problem = std::string(name) + " is missing";
          return nullptr;
        }
        if (it->is_null() && null_is_empty)
          return &empty;
        if (!it->is_string()) {
          problem = std::string(name) + " is a " + it->type_name() + ", expected a string";
          return nullptr;
        }
        return &it->get_ref<const std::string&>();
      };

      feedback_record r;
      const std::string* mid = string_field("originalMessageId", /*null_is_empty=*/true);
      if (!mid)
        return fail(where + problem);
      r.original_message_id = *mid;

      const std::string* enq = string_field("enqueuedTimeUtc", false);
      if (!enq)
        return fail(where + problem);
      auto when = parse_iso8601(*enq);
      if (!when)
        return fail(where + "enqueuedTimeUtc: " + when.error().message);
      r.enqueued_time_utc = *when;

      const std::string* status = string_field("statusCode", false);
      if (!status)
        return fail(where + problem);
      const auto code = parse_feedback_status(*status);
      if (!code)
        return fail(where + "statusCode " + codec::detail::quote_for_message(*status) +
                    " is not one of Success, Expired, DeliveryCountExceeded, Rejected, Purged");
      r.status_code = *code;

      if (const auto it = rec.find("description"); it == rec.end() || it->is_null()) {
        r.description = std::string(to_string(r.status_code));
      } else if (it->is_string()) {
        r.description = it->get_ref<const std::string&>();
      } else {
        return fail(where + "description is a " + it->type_name() + ", expected a string");
      }

      const std::string* device = string_field("deviceId", false);
      if (!device)
        return fail(where + problem);
      r.device_id = *device;

      const std::string* generation = string_field("deviceGenerationId", false);
      if (!generation)
        return fail(where + problem);
      r.device_generation_id = *generation;

      out.push_back(std::move(r));
    }
    return out;
  } catch (const json::exception& e) {
    // Not expected: every access above is type-checked. Kept so no nlohmann
    // exception can escape whatever a future nlohmann version does.
    return fail(std::string("JSON error: ") + e.what());
  }
}

}  // namespace devicebound::fuzz_reference
