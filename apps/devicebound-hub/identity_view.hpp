// The identities every front door authenticates against, shared across threads.
//
// The registry lives on the engine thread (router + hub + store). After each
// commit that changed an identity or a policy, the router writes the change
// here; doors read from their own I/O threads. Reads take a shared lock, writes
// a unique one; nothing here touches the store.
#pragma once

#include <devicebound/auth/authenticate.hpp>
#include <devicebound/auth/policy.hpp>
#include <devicebound/identity.hpp>
#include <functional>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace devicebound::hubd {

class identity_view {
 public:
  /// `enabled`: doors authenticate requests; false: the test mode, where every
  /// token is accepted (no `--auth-file`, no registry keys required).
  explicit identity_view(bool enabled = true) : enabled_(enabled) {}
  identity_view(const identity_view&) = delete;
  identity_view& operator=(const identity_view&) = delete;

  bool enabled() const noexcept { return enabled_; }

  // --- writes: the engine thread, after the commit ----------------------------------------
  void set_policies(std::vector<auth::shared_access_policy> policies) {
    std::unique_lock lock(mutex_);
    policies_ = std::move(policies);
  }
  void put_device(const device_identity& d) {
    auth::device_credentials c{d.primary_key, d.secondary_key,
                               d.status == device_status::enabled && d.auth == auth_type::sas};
    std::unique_lock lock(mutex_);
    devices_.insert_or_assign(d.device_id, std::move(c));
  }
  void erase_device(std::string_view id) {
    std::unique_lock lock(mutex_);
    if (auto it = devices_.find(std::string(id)); it != devices_.end())
      devices_.erase(it);
  }

  // --- reads: any thread -------------------------------------------------------------------
  std::vector<auth::shared_access_policy> policies() const {
    std::shared_lock lock(mutex_);
    return policies_;
  }
  std::optional<auth::device_credentials> device(std::string_view id) const {
    std::shared_lock lock(mutex_);
    auto it = devices_.find(std::string(id));
    if (it == devices_.end())
      return std::nullopt;
    return it->second;
  }
  /// The lookup `auth::authenticate` takes; valid while this view lives.
  auth::device_key_lookup lookup() const {
    return [this](std::string_view id) {
      return device(id);
    };
  }
  /// Verifies a SAS token against the current identities (SPEC 12.7-12.8).
  result<auth::principal> authenticate(std::string_view token, std::string_view hub_host,
                                       time_point now) const {
    const auto pol = policies();
    return auth::authenticate(token, hub_host, pol, lookup(), now);
  }

 private:
  bool enabled_;
  mutable std::shared_mutex mutex_;
  std::vector<auth::shared_access_policy> policies_;
  std::unordered_map<std::string, auth::device_credentials> devices_;
};

}  // namespace devicebound::hubd
