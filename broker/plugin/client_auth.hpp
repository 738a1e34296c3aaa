// What the broker plugin decides about a client's credentials, without a
// broker and without I/O: whether a CONNECT is let in (`admit`), and whether a
// connection let in earlier still would be after the registry changed
// (`recheck`). The plugin feeds both from its identity source (the hub's
// registry or the auth file); broker/tests/test_broker_client_auth.cpp tests
// them directly, python/tests/test_broker_registry.py through mosquitto.
#pragma once

#include <devicebound/auth/authenticate.hpp>
#include <devicebound/errors.hpp>
#include <devicebound/message.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

namespace devicebound::broker {

/// A back end needs a policy that may connect: ServiceConnect (a back end that
/// sends and settles) or DeviceConnect (devices through devicebound's own
/// transport). A registry-only policy opens no MQTT connection (SPEC 12.9.3),
/// even for the admin topics: those need RegistryWrite besides (topic_acl.hpp).
inline bool may_connect_as_back_end(auth::access_rights rights) noexcept {
  return auth::includes(rights, auth::access_rights::service_connect) ||
         auth::includes(rights, auth::access_rights::device_connect);
}

/// Whether client `id` may connect with `token` at `now`. `host` is the hub's
/// host the token must name; `device` is set when the username has the device
/// form (`{host}/{id}/?...`): the token must then act for device `id`, with
/// the device's own key or a policy with DeviceConnect (SPEC 12.7.4), and the
/// device must be registered and enabled. Otherwise (a back end) it must be a
/// hub-wide policy token whose policy may connect. `policies` holds the policy
/// the token names (if the source has it); `devices` looks devices up.
/// Returns who the token speaks for, or an `errc::unauthorized` error whose
/// message says why (an `auth_failure` name first where there is one).
inline result<auth::principal> admit(std::string_view id, const auth::sas_token& token,
                                     std::string_view host, bool device,
                                     std::span<const auth::shared_access_policy> policies,
                                     const auth::device_key_lookup& devices, time_point now) {
  auto who = auth::authenticate(token, host, policies, devices, now);
  if (!who)
    return who.error();
  if (!device) {
    if (who->is_device())
      return make_error(errc::unauthorized,
                        "a device's token on a back-end connection (a device connects with "
                        "username {host}/{deviceId}/?api-version=...)");
    if (!may_connect_as_back_end(who->rights))
      return make_error(errc::unauthorized, "policy " + *who->policy + " grants " +
                                                auth::to_string(who->rights) +
                                                ", neither ServiceConnect nor DeviceConnect");
    // A back end acts on the whole hub: a token scoped below it (sr = {host}/x)
    // grants nothing here, as on the other doors (auth::authorize, OutOfScope).
    if (!who->scope.empty())
      return auth::make_auth_error(auth::auth_failure::out_of_scope,
                                   "a token for " + who->scope + " cannot act on the whole hub");
    return who;
  }
  if (auto allowed = auth::authorize(*who, auth::access_rights::device_connect, id); !allowed)
    return allowed.error();
  if (!who->device_id) {
    // A hub-wide policy token: `authenticate` did not look the device up.
    const auto d = devices ? devices(id) : std::nullopt;
    if (!d)
      return auth::make_auth_error(auth::auth_failure::unknown_device, "device is not registered");
    if (!d->enabled)
      return auth::make_auth_error(auth::auth_failure::device_disabled, "device is disabled");
  }
  return who;
}

/// The identity rows a connection's admission rests on: the device it connects
/// as (device connections only) and the policy its token names (`skn`), as
/// the identity source had them. Absent: not there (or not asked for).
struct credential_rows {
  std::optional<auth::device_credentials> device;
  std::optional<auth::shared_access_policy> policy;

  friend bool operator==(const credential_rows& a, const credential_rows& b) {
    const auto same_device = [](const auth::device_credentials& x,
                                const auth::device_credentials& y) {
      return x.enabled == y.enabled && x.primary_key == y.primary_key &&
             x.secondary_key == y.secondary_key;
    };
    if (a.device.has_value() != b.device.has_value() || a.policy != b.policy)
      return false;
    return !a.device || same_device(*a.device, *b.device);
  }
};

/// What a connection authenticated with, kept for as long as it is connected.
struct admitted_client {
  auth::sas_token token;          ///< the password, parsed
  std::string host;               ///< the hub host it was checked against
  bool device = false;            ///< the username had the device form
  time_point accepted_at{};       ///< when: a recheck verifies at this instant
  credential_rows verified_with;  ///< the rows it was last verified against
  /// What its token grants (the principal's rights, as last verified): the
  /// topic ACL's rights dimension (topic_acl.hpp, `allowed`).
  auth::access_rights rights = auth::access_rights::none;
};

/// What to do with a connected client after its identity source changed.
enum class recheck_verdict {
  stays,     ///< still admitted (or its rows did not change)
  deleted,   ///< a device connection whose device is no longer registered
  disabled,  ///< a device connection whose device is disabled
  revoked,   ///< its token no longer verifies, or no longer grants the connection
};

struct recheck_result {
  recheck_verdict verdict = recheck_verdict::stays;
  std::string reason;     ///< for anything but `stays`: why (for the log)
  bool verified = false;  ///< the token was verified again (HMACs computed)
  /// `stays` after a verification: what the token grants now (fewer rights
  /// than before when its policy lost some but still may connect). The caller
  /// keeps it as the connection's `rights`; the topic ACL, asked at every
  /// PUBLISH, SUBSCRIBE and delivery, then applies it at once.
  auth::access_rights rights = auth::access_rights::none;
};

/// Would `client`, connected as `id`, be admitted by `rows` (the identity
/// source now)? The CONNECT decision again (`admit`), at the instant it was
/// first made (`accepted_at`), so a token that expired since is not what ends
/// a connection. Rows equal to those of the last verification need no HMAC:
/// the answer is `stays` without computing one (the hub commits for messages
/// too). A device connection whose device is gone or disabled is `deleted` or
/// `disabled` whatever its token, as the plugin's session bookkeeping needs.
/// The caller records `rows` as `verified_with`, and `rights`, when the answer
/// is `stays` (`rights` is the client's own when nothing was verified).
inline recheck_result recheck(const admitted_client& client, std::string_view id,
                              const credential_rows& rows) {
  recheck_result out;
  out.rights = client.rights;
  if (client.device) {
    if (!rows.device) {
      out.verdict = recheck_verdict::deleted;
      out.reason = "it is no longer registered";
      return out;
    }
    if (!rows.device->enabled) {
      out.verdict = recheck_verdict::disabled;
      out.reason = "it is disabled";
      return out;
    }
  }
  if (rows == client.verified_with)
    return out;
  out.verified = true;
  std::span<const auth::shared_access_policy> policies;
  if (rows.policy && client.token.key_name && rows.policy->name == *client.token.key_name)
    policies = std::span<const auth::shared_access_policy>(&*rows.policy, 1);
  const auth::device_key_lookup lookup =
      [&](std::string_view device_id) -> std::optional<auth::device_credentials> {
    if (client.device && device_id == id)
      return rows.device;
    return std::nullopt;
  };
  auto who =
      admit(id, client.token, client.host, client.device, policies, lookup, client.accepted_at);
  if (!who) {
    out.verdict = recheck_verdict::revoked;
    out.reason = std::move(who.error().message);
  } else {
    out.rights = who->rights;
  }
  return out;
}

}  // namespace devicebound::broker
