/// \file convert.hpp
/// JavaScript <-> C++ values: messages, feedback batches, hub configuration,
/// retry policies, errors. Names on the JS side are camelCase (`messageId`,
/// `lockDurationMs`); enumerations keep the C++ `to_string` spellings
/// (`"full"`, `"exponential_backoff_with_jitter"`). Bad input throws the
/// package's ArgumentInvalidError (400004) naming the field.
#pragma once

#include <napi.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <devicebound/errors.hpp>
#include <devicebound/feedback.hpp>
#include <devicebound/hub.hpp>
#include <devicebound/hub_config.hpp>
#include <devicebound/message.hpp>
#include <devicebound/retry.hpp>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "addon_data.hpp"

namespace devicebound::node {

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// The JS error for `e`: an instance of the package's class for its code.
inline Napi::Value to_js_error(Napi::Env env, const error& e) {
  auto& d = data_of(env);
  if (!d.make_error.IsEmpty())
    return d.make_error.Call(
        {Napi::Number::New(env, e.numeric()), Napi::String::New(env, e.message)});
  auto err = Napi::Error::New(env, std::string(to_string(e.code)) + ": " + e.message);
  err.Set("code", Napi::Number::New(env, e.numeric()));
  return err.Value();
}

/// Throws `e` into JavaScript (as a C++ exception that node-addon-api converts).
[[noreturn]] inline void throw_error(Napi::Env env, const error& e) {
  throw Napi::Error(env, to_js_error(env, e));
}

[[noreturn]] inline void throw_invalid(Napi::Env env, std::string what) {
  throw_error(env, make_error(errc::argument_invalid, std::move(what)));
}

// ---------------------------------------------------------------------------------------------
// Scalars
// ---------------------------------------------------------------------------------------------

inline bool is_missing(const Napi::Value& v) {
  return v.IsUndefined() || v.IsNull();
}

inline std::string to_string_arg(Napi::Env env, const Napi::Value& v, std::string_view what) {
  if (!v.IsString())
    throw_invalid(env, std::string(what) + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

inline std::optional<std::string> opt_string(Napi::Env env, const Napi::Object& o, const char* key,
                                             std::string_view what) {
  Napi::Value v = o.Get(key);
  if (is_missing(v))
    return std::nullopt;
  return to_string_arg(env, v, std::string(what) + "." + key);
}

/// A finite number (integers are checked by the callers that need them).
inline double to_number(Napi::Env env, const Napi::Value& v, std::string_view what) {
  if (!v.IsNumber())
    throw_invalid(env, std::string(what) + " must be a number");
  const double x = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(x))
    throw_invalid(env, std::string(what) + " must be finite");
  return x;
}

inline std::uint64_t to_uint(Napi::Env env, const Napi::Value& v, std::string_view what,
                             std::uint64_t max) {
  const double x = to_number(env, v, what);
  if (x < 0 || x != std::floor(x) || x > static_cast<double>(max))
    throw_invalid(env,
                  std::string(what) + " must be an integer between 0 and " + std::to_string(max));
  return static_cast<std::uint64_t>(x);
}

/// Milliseconds as a number (fractions truncated); range checks are the core's.
inline duration to_duration(Napi::Env env, const Napi::Value& v, std::string_view what) {
  const double x = to_number(env, v, what);
  constexpr double limit = 9007199254740992.0;  // 2^53 ms
  if (x < -limit || x > limit)
    throw_invalid(env, std::string(what) + " is out of range");
  return duration{static_cast<duration::rep>(x)};
}

/// A Date or a number of milliseconds since the epoch.
inline time_point to_time_point(Napi::Env env, const Napi::Value& v, std::string_view what) {
  double ms = 0;
  if (v.IsDate())
    ms = v.As<Napi::Date>().ValueOf();
  else if (v.IsNumber())
    ms = v.As<Napi::Number>().DoubleValue();
  else
    throw_invalid(env, std::string(what) + " must be a Date or milliseconds since the epoch");
  if (!std::isfinite(ms))
    throw_invalid(env, std::string(what) + " is not a valid time");
  return time_point{duration{static_cast<duration::rep>(ms)}};
}

inline Napi::Value from_time_point(Napi::Env env, time_point t) {
  return Napi::Date::New(env, static_cast<double>(t.time_since_epoch().count()));
}

inline Napi::Value from_opt_string(Napi::Env env, const std::optional<std::string>& s) {
  return s ? Napi::Value(Napi::String::New(env, *s)) : env.Undefined();
}

inline Napi::Value from_opt_time(Napi::Env env, const std::optional<time_point>& t) {
  return t ? from_time_point(env, *t) : env.Undefined();
}

/// Parses an enumeration from its `to_string` spelling (the library's, beside
/// the enumeration), naming every accepted spelling when `v` is none of them.
template <class E, std::size_t N>
E to_enum(Napi::Env env, const Napi::Value& v, const std::array<E, N>& all, std::string_view what) {
  const std::string s = to_string_arg(env, v, what);
  std::string expected;
  for (E e : all) {
    if (s == to_string(e))
      return e;
    expected += (expected.empty() ? "'" : ", '") + std::string(to_string(e)) + "'";
  }
  throw_invalid(env, std::string(what) + " must be one of " + expected + ", not '" + s + "'");
}

// ---------------------------------------------------------------------------------------------
// Lock tokens and bodies
// ---------------------------------------------------------------------------------------------

inline lock_token to_lock_token(Napi::Env env, const Napi::Value& v) {
  if (!v.IsString())
    throw_invalid(env, "lock token must be a string (a received message's lockToken)");
  auto t = lock_token::parse(v.As<Napi::String>().Utf8Value());
  if (!t)
    throw_invalid(env, "lock token is not a GUID: '" + v.As<Napi::String>().Utf8Value() + "'");
  return *t;
}

inline std::string to_body(Napi::Env env, const Napi::Value& v) {
  if (is_missing(v))
    return {};
  if (v.IsBuffer()) {
    auto b = v.As<Napi::Buffer<char>>();
    return std::string(b.Data(), b.Length());
  }
  if (v.IsTypedArray()) {
    auto a = v.As<Napi::TypedArray>();
    if (a.TypedArrayType() == napi_uint8_array || a.TypedArrayType() == napi_uint8_clamped_array ||
        a.TypedArrayType() == napi_int8_array) {
      auto bytes = static_cast<const char*>(a.ArrayBuffer().Data()) + a.ByteOffset();
      return std::string(bytes, a.ByteLength());
    }
  }
  if (v.IsString())
    return v.As<Napi::String>().Utf8Value();
  throw_invalid(env, "message.body must be a Buffer, a Uint8Array or a string");
}

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

inline constexpr std::array<ack_mode, 4> all_ack_modes = {ack_mode::none, ack_mode::positive,
                                                          ack_mode::negative, ack_mode::full};

/// A message to send, from a JS `Message` (or any object with its fields).
inline message to_message(Napi::Env env, const Napi::Value& v) {
  if (!v.IsObject())
    throw_invalid(env, "message must be a Message");
  auto o = v.As<Napi::Object>();
  message m;
  m.body = to_body(env, o.Get("body"));
  m.message_id = opt_string(env, o, "messageId", "message");
  m.correlation_id = opt_string(env, o, "correlationId", "message");
  m.user_id = opt_string(env, o, "userId", "message");
  m.to = opt_string(env, o, "to", "message");
  m.content_type = opt_string(env, o, "contentType", "message");
  m.content_encoding = opt_string(env, o, "contentEncoding", "message");
  if (auto exp = o.Get("expiryTimeUtc"); !is_missing(exp))
    m.expiry_time_utc = to_time_point(env, exp, "message.expiryTimeUtc");
  if (auto ct = o.Get("creationTimeUtc"); !is_missing(ct))
    m.creation_time_utc = to_time_point(env, ct, "message.creationTimeUtc");
  if (auto ack = o.Get("ack"); !is_missing(ack)) {
    auto a = parse_ack_mode(to_string_arg(env, ack, "message.ack"));
    if (!a)
      throw_invalid(env, "message.ack must be 'none', 'positive', 'negative' or 'full'");
    m.ack = *a;
  }
  if (auto props = o.Get("properties"); !is_missing(props)) {
    if (!props.IsObject() || props.IsArray())
      throw_invalid(env, "message.properties must be an object of string values");
    auto p = props.As<Napi::Object>();
    auto keys = p.GetPropertyNames();
    for (std::uint32_t i = 0; i < keys.Length(); ++i) {
      Napi::Value k = keys.Get(i);
      std::string key = k.ToString().Utf8Value();
      Napi::Value val = p.Get(k);
      if (!val.IsString())
        throw_invalid(env, "message.properties['" + key + "'] must be a string");
      m.app_properties.emplace(std::move(key), val.As<Napi::String>().Utf8Value());
    }
  }
  return m;
}

/// A received message as a JS `Message`.
inline Napi::Value from_message(Napi::Env env, const message& m) {
  auto& d = data_of(env);
  Napi::Object o = d.message_class.IsEmpty() ? Napi::Object::New(env) : d.message_class.New({});
  o.Set("body", Napi::Buffer<char>::Copy(env, m.body.data(), m.body.size()));
  o.Set("messageId", from_opt_string(env, m.message_id));
  o.Set("correlationId", from_opt_string(env, m.correlation_id));
  o.Set("userId", from_opt_string(env, m.user_id));
  o.Set("to", from_opt_string(env, m.to));
  o.Set("expiryTimeUtc", from_opt_time(env, m.expiry_time_utc));
  o.Set("ack", Napi::String::New(env, std::string(to_string(m.ack))));
  o.Set("contentType", from_opt_string(env, m.content_type));
  o.Set("contentEncoding", from_opt_string(env, m.content_encoding));
  o.Set("creationTimeUtc", from_opt_time(env, m.creation_time_utc));
  Napi::Object props = Napi::Object::New(env);
  for (const auto& [k, val] : m.app_properties)
    props.Set(k, val);
  o.Set("properties", props);
  o.Set("sequenceNumber", Napi::Number::New(env, static_cast<double>(m.sequence_number)));
  o.Set("enqueuedTimeUtc", from_opt_time(env, m.enqueued_time_utc));
  o.Set("deliveryCount", Napi::Number::New(env, m.delivery_count));
  o.Set("lockToken", m.lock_token ? Napi::Value(Napi::String::New(env, m.lock_token->to_string()))
                                  : env.Undefined());
  return o;
}

inline Napi::Value from_receipt(Napi::Env env, const enqueue_receipt& r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("sequenceNumber", Napi::Number::New(env, static_cast<double>(r.sequence_number)));
  o.Set("expiryTimeUtc", from_time_point(env, r.expiry_time_utc));
  return o;
}

// ---------------------------------------------------------------------------------------------
// Feedback
// ---------------------------------------------------------------------------------------------

/// A feedback batch as a plain object; the JS layer adds complete()/abandon().
inline Napi::Value from_feedback_batch(Napi::Env env, const feedback_batch& b) {
  Napi::Object o = Napi::Object::New(env);
  Napi::Array records = Napi::Array::New(env, b.records.size());
  for (std::size_t i = 0; i < b.records.size(); ++i) {
    const auto& r = b.records[i];
    Napi::Object rec = Napi::Object::New(env);
    rec.Set("originalMessageId", r.original_message_id);
    rec.Set("enqueuedTimeUtc", from_time_point(env, r.enqueued_time_utc));
    rec.Set("statusCode", std::string(to_string(r.status_code)));
    rec.Set("description", r.description);
    rec.Set("deviceId", r.device_id);
    rec.Set("deviceGenerationId", r.device_generation_id);
    records.Set(static_cast<std::uint32_t>(i), rec);
  }
  o.Set("records", records);
  o.Set("enqueuedTimeUtc", from_time_point(env, b.enqueued_time_utc));
  o.Set("userId", b.user_id);
  o.Set("lockToken", b.lock_token.to_string());
  o.Set("deliveryCount", Napi::Number::New(env, b.delivery_count));
  return o;
}

// ---------------------------------------------------------------------------------------------
// Hub configuration and statistics
// ---------------------------------------------------------------------------------------------

/// A hub configuration from `{ name, defaultTtlMs, ... }`; missing fields keep
/// IoT Hub's defaults. Ranges are checked by `hub_config::validate()`.
inline hub_config to_hub_config(Napi::Env env, const Napi::Value& v) {
  hub_config c;
  if (is_missing(v))
    return c;
  if (!v.IsObject())
    throw_invalid(env, "hub options must be an object");
  auto o = v.As<Napi::Object>();
  auto has = [&](const char* k) {
    return !is_missing(o.Get(k));
  };
  auto ms = [&](const char* k, duration& out) {
    if (has(k))
      out = to_duration(env, o.Get(k), std::string("hub options.") + k);
  };
  auto u32 = [&](const char* k, std::uint32_t& out) {
    if (has(k))
      out = static_cast<std::uint32_t>(
          to_uint(env, o.Get(k), std::string("hub options.") + k, 0xFFFFFFFFu));
  };
  if (has("name"))
    c.name = to_string_arg(env, o.Get("name"), "hub options.name");
  ms("defaultTtlMs", c.default_ttl);
  if (has("expiryOverCap"))
    c.expiry_over_cap = to_enum(env, o.Get("expiryOverCap"),
                                std::array{expiry_cap_policy::clamp, expiry_cap_policy::reject},
                                "hub options.expiryOverCap");
  u32("maxDeliveryCount", c.max_delivery_count);
  if (has("deliveryCountRule"))
    c.delivery_count =
        to_enum(env, o.Get("deliveryCountRule"),
                std::array{delivery_count_rule::abandon_only, delivery_count_rule::every_delivery},
                "hub options.deliveryCountRule");
  ms("lockDurationMs", c.lock_duration);
  u32("maxQueueDepth", c.max_queue_depth);
  if (has("maxMessageSize"))
    c.max_message_size = static_cast<std::size_t>(
        to_uint(env, o.Get("maxMessageSize"), "hub options.maxMessageSize", 0xFFFFFFFFu));
  ms("feedbackTtlMs", c.feedback_ttl);
  u32("feedbackMaxDeliveryCount", c.feedback_max_delivery_count);
  ms("feedbackLockDurationMs", c.feedback_lock_duration);
  u32("feedbackBatchSize", c.feedback_batch_size);
  ms("feedbackBatchIntervalMs", c.feedback_batch_interval);
  if (has("purgeFeedbackFor"))
    c.purge_feedback_for = to_enum(env, o.Get("purgeFeedbackFor"),
                                   std::array{purge_feedback::negative_acks, purge_feedback::none},
                                   "hub options.purgeFeedbackFor");
  if (auto r = c.validate(); !r)
    throw_error(env, r.error());
  return c;
}

inline Napi::Value from_hub_config(Napi::Env env, const hub_config& c) {
  Napi::Object o = Napi::Object::New(env);
  auto ms = [&](const char* k, duration d) {
    o.Set(k, Napi::Number::New(env, static_cast<double>(d.count())));
  };
  o.Set("name", c.name);
  ms("defaultTtlMs", c.default_ttl);
  o.Set("expiryOverCap", std::string(to_string(c.expiry_over_cap)));
  o.Set("maxDeliveryCount", Napi::Number::New(env, c.max_delivery_count));
  o.Set("deliveryCountRule", std::string(to_string(c.delivery_count)));
  ms("lockDurationMs", c.lock_duration);
  o.Set("maxQueueDepth", Napi::Number::New(env, c.max_queue_depth));
  o.Set("maxMessageSize", Napi::Number::New(env, static_cast<double>(c.max_message_size)));
  ms("feedbackTtlMs", c.feedback_ttl);
  o.Set("feedbackMaxDeliveryCount", Napi::Number::New(env, c.feedback_max_delivery_count));
  ms("feedbackLockDurationMs", c.feedback_lock_duration);
  o.Set("feedbackBatchSize", Napi::Number::New(env, c.feedback_batch_size));
  ms("feedbackBatchIntervalMs", c.feedback_batch_interval);
  o.Set("purgeFeedbackFor", std::string(to_string(c.purge_feedback_for)));
  return o;
}

inline Napi::Value from_hub_stats(Napi::Env env, const hub_stats& s) {
  Napi::Object o = Napi::Object::New(env);
  auto n = [&](const char* k, std::uint64_t v) {
    o.Set(k, Napi::Number::New(env, static_cast<double>(v)));
  };
  n("accepted", s.accepted);
  n("completed", s.completed);
  n("rejected", s.rejected);
  n("expired", s.expired);
  n("deliveryCountExceeded", s.delivery_count_exceeded);
  n("purged", s.purged);
  n("removedWithDevice", s.removed_with_device);
  n("feedbackRecords", s.feedback_records);
  n("feedbackRecordsDropped", s.feedback_records_dropped);
  n("feedbackBatches", s.feedback_batches);
  return o;
}

// ---------------------------------------------------------------------------------------------
// Retry policies (retry.hpp's policy_config, field for field)
// ---------------------------------------------------------------------------------------------

inline retry::backoff_config to_backoff_config(Napi::Env env, const Napi::Value& v,
                                               const std::string& what) {
  retry::backoff_config c;
  if (!v.IsObject())
    throw_invalid(env, what + " must be an object");
  auto o = v.As<Napi::Object>();
  auto get = [&](const char* k) {
    return o.Get(k);
  };
  if (!is_missing(get("kind")))
    c.kind = to_enum(env, get("kind"), retry::backoff_kind_values, what + ".kind");
  if (!is_missing(get("initialMs")))
    c.initial = to_duration(env, get("initialMs"), what + ".initialMs");
  if (!is_missing(get("capMs")))
    c.cap = to_duration(env, get("capMs"), what + ".capMs");
  if (!is_missing(get("floorMs")))
    c.floor = to_duration(env, get("floorMs"), what + ".floorMs");
  if (auto j = get("jitter"); !is_missing(j)) {
    if (!j.IsObject())
      throw_invalid(env, what + ".jitter must be an object");
    auto jo = j.As<Napi::Object>();
    if (!is_missing(jo.Get("shape")))
      c.jitter.shape =
          to_enum(env, jo.Get("shape"), retry::jitter_shape_values, what + ".jitter.shape");
    if (!is_missing(jo.Get("low")))
      c.jitter.low = to_number(env, jo.Get("low"), what + ".jitter.low");
    if (!is_missing(jo.Get("high")))
      c.jitter.high = to_number(env, jo.Get("high"), what + ".jitter.high");
    if (!is_missing(jo.Get("thresholdMs")))
      c.jitter.threshold = to_duration(env, jo.Get("thresholdMs"), what + ".jitter.thresholdMs");
  }
  return c;
}

inline Napi::Value from_backoff_config(Napi::Env env, const retry::backoff_config& c) {
  auto ms = [&](duration d) {
    return Napi::Number::New(env, static_cast<double>(d.count()));
  };
  Napi::Object o = Napi::Object::New(env);
  o.Set("kind", std::string(to_string(c.kind)));
  o.Set("initialMs", ms(c.initial));
  o.Set("capMs", ms(c.cap));
  o.Set("floorMs", ms(c.floor));
  Napi::Object j = Napi::Object::New(env);
  j.Set("shape", std::string(to_string(c.jitter.shape)));
  j.Set("low", Napi::Number::New(env, c.jitter.low));
  j.Set("high", Napi::Number::New(env, c.jitter.high));
  j.Set("thresholdMs", ms(c.jitter.threshold));
  o.Set("jitter", j);
  return o;
}

/// A retry policy from `{ backoff, throttled, firstRetry, ..., errors }`
/// (missing fields: retry.hpp's defaults), checked by `retry::make_policy`.
inline retry::policy to_policy(Napi::Env env, const Napi::Value& v) {
  retry::policy_config c;
  if (!v.IsObject())
    throw_invalid(env, "retryPolicy must be a profile name or an object");
  auto o = v.As<Napi::Object>();
  auto get = [&](const char* k) {
    return o.Get(k);
  };
  auto has = [&](const char* k) {
    return !is_missing(o.Get(k));
  };
  if (has("backoff"))
    c.backoff = to_backoff_config(env, get("backoff"), "retryPolicy.backoff");
  if (has("throttled"))
    c.throttled = to_backoff_config(env, get("throttled"), "retryPolicy.throttled");
  if (has("firstRetry"))
    c.opts.first =
        to_enum(env, get("firstRetry"), retry::first_retry_values, "retryPolicy.firstRetry");
  if (has("firstRetryDelayMs"))
    c.opts.first_retry_delay =
        to_duration(env, get("firstRetryDelayMs"), "retryPolicy.firstRetryDelayMs");
  if (has("timeoutMs"))
    c.opts.timeout = to_duration(env, get("timeoutMs"), "retryPolicy.timeoutMs");
  if (has("timeoutFrom"))
    c.opts.timeout_from =
        to_enum(env, get("timeoutFrom"), retry::timeout_origin_values, "retryPolicy.timeoutFrom");
  if (has("maxRetries"))
    c.opts.max_retries = static_cast<std::uint32_t>(
        to_uint(env, get("maxRetries"), "retryPolicy.maxRetries", 0xFFFFFFFFu));
  if (has("resetOnSuccess"))
    c.opts.reset_on_success = get("resetOnSuccess").ToBoolean().Value();
  if (has("minSpacingMs"))
    c.opts.min_spacing = to_duration(env, get("minSpacingMs"), "retryPolicy.minSpacingMs");
  if (has("waitFrom"))
    c.opts.wait_from =
        to_enum(env, get("waitFrom"), retry::wait_origin_values, "retryPolicy.waitFrom");
  if (has("wholeSeconds"))
    c.opts.whole_seconds = get("wholeSeconds").ToBoolean().Value();
  if (has("errors")) {
    Napi::Value ev = get("errors");
    if (!ev.IsObject())
      throw_invalid(env, "retryPolicy.errors must be an object");
    auto eo = ev.As<Napi::Object>();
    if (!is_missing(eo.Get("table")))
      c.errors.table =
          to_enum(env, eo.Get("table"), retry::error_table_values, "retryPolicy.errors.table");
    if (auto ov = eo.Get("overrides"); !is_missing(ov)) {
      if (!ov.IsObject() || ov.IsArray())
        throw_invalid(env, "retryPolicy.errors.overrides must be an object { code: class }");
      auto oo = ov.As<Napi::Object>();
      auto keys = oo.GetPropertyNames();
      for (std::uint32_t i = 0; i < keys.Length(); ++i) {
        const std::string key = keys.Get(i).ToString().Utf8Value();
        std::optional<errc> code = parse_errc(key);
        for (errc e : errc_values)
          if (!code && key == std::to_string(static_cast<std::uint32_t>(e)))
            code = e;
        if (!code)
          throw_invalid(env, "retryPolicy.errors.overrides: unknown error code '" + key + "'");
        c.errors.set(*code, to_enum(env, oo.Get(keys.Get(i)), retry::error_class_values,
                                    "retryPolicy.errors.overrides['" + key + "']"));
      }
    }
  }
  auto p = retry::make_policy(c);
  if (!p)
    throw_error(env, p.error());
  return std::move(*p);
}

/// A policy as the plain object `to_policy` reads (`retry.profile(name)` in JS).
inline Napi::Value from_policy(Napi::Env env, const retry::policy& p) {
  const retry::policy_config c = retry::to_config(p);
  auto ms = [&](duration d) {
    return Napi::Number::New(env, static_cast<double>(d.count()));
  };
  Napi::Object o = Napi::Object::New(env);
  o.Set("backoff", from_backoff_config(env, c.backoff));
  o.Set("throttled", c.throttled ? from_backoff_config(env, *c.throttled) : env.Null());
  o.Set("firstRetry", std::string(to_string(c.opts.first)));
  o.Set("firstRetryDelayMs", ms(c.opts.first_retry_delay));
  o.Set("timeoutMs", ms(c.opts.timeout));
  o.Set("timeoutFrom", std::string(to_string(c.opts.timeout_from)));
  o.Set("maxRetries", Napi::Number::New(env, c.opts.max_retries));
  o.Set("resetOnSuccess", Napi::Boolean::New(env, c.opts.reset_on_success));
  o.Set("minSpacingMs", ms(c.opts.min_spacing));
  o.Set("waitFrom", std::string(to_string(c.opts.wait_from)));
  o.Set("wholeSeconds", Napi::Boolean::New(env, c.opts.whole_seconds));
  Napi::Object errors = Napi::Object::New(env);
  errors.Set("table", std::string(to_string(c.errors.table)));
  Napi::Object overrides = Napi::Object::New(env);
  for (const auto& [code, cls] : c.errors.overrides)
    overrides.Set(std::to_string(static_cast<std::uint32_t>(code)), std::string(to_string(cls)));
  errors.Set("overrides", overrides);
  o.Set("errors", errors);
  return o;
}

/// `retryPolicy` of client options: a profile name, an object, or missing (the C SDK's default).
inline retry::policy to_client_policy(Napi::Env env, const Napi::Value& v) {
  if (is_missing(v))
    return retry::policy(retry::profiles::c_sdk());
  if (v.IsString()) {
    auto p = retry::profiles::profile(v.As<Napi::String>().Utf8Value());
    if (!p)
      throw_error(env, p.error());
    return std::move(*p);
  }
  return to_policy(env, v);
}

}  // namespace devicebound::node
