/// \file cluster/postgres_leases.hpp
/// The `lease_table` of cluster/ownership.hpp on PostgreSQL: the lease rows of
/// store/postgres.hpp through one `postgres_store` connection. Link
/// `devicebound::postgres`; ownership.hpp itself includes no database header.
///
/// Give the controller a connection of its own (a `postgres_store` opened on
/// the hub's schema with the hub's partition count, partition 0): renewals must
/// not wait behind a partition's long commit. The partitions' own stores then
/// `adopt(owner, epoch)` the epoch of each `claimed` event.
#pragma once

#include <chrono>
#include <cstdint>
#include <string_view>

#include "../errors.hpp"
#include "../store/postgres.hpp"
#include "ownership.hpp"

namespace devicebound::cluster {

/// `lease_table` over a `postgres_store` it does not own (it must outlive this).
class postgres_leases {
 public:
  explicit postgres_leases(postgres_store& store) noexcept : store_(&store) {}

  result<std::uint64_t> claim(std::uint32_t k, std::string_view owner,
                              std::chrono::milliseconds ttl) {
    return store_->claim(k, owner, ttl);
  }
  result<void> renew(std::uint32_t k, std::string_view owner, std::uint64_t epoch,
                     std::chrono::milliseconds ttl) {
    return store_->renew(k, owner, epoch, ttl);
  }
  result<void> release(std::uint32_t k, std::string_view owner, std::uint64_t epoch) {
    return store_->release(k, owner, epoch);
  }
  bool is_lease_lost(const error& e) const { return devicebound::is_lease_lost(e); }

  postgres_store& store() noexcept { return *store_; }

 private:
  postgres_store* store_;
};

static_assert(lease_table<postgres_leases>);

}  // namespace devicebound::cluster
