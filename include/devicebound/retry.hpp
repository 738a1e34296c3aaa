/// \file retry.hpp
/// Retry policies of the Azure IoT SDKs (SPEC 8): everything in `retry/`. Long explanations
/// live in docs/retry.md.
///
/// - `retry/classification.hpp`: error classes and the SDKs' classification tables (SPEC 8.8)
/// - `retry/random.hpp`: sources of the random part of a backoff
/// - `retry/backoff.hpp`: the backoff formulas (SPEC 8.7)
/// - `retry/policy.hpp`: a backoff plus the knobs every SDK turns (SPEC 8.9)
/// - `retry/decision.hpp`: the machine's answers and states (SPEC 8.9)
/// - `retry/table.hpp`: the retry machine's transition table, as constexpr rows (SPEC 8.9)
/// - `retry/episode.hpp`: what the table's guards and actions read and write
/// - `retry/controller.hpp`: `controller`, which runs the table (what the clients use)
/// - `retry/machine.hpp`: the same table as a Boost.MSM machine, and `msm_controller`
/// - `retry/profiles.hpp`: the SDKs' policies, by type and by name (SPEC 8.7)
/// - `retry/runtime_config.hpp`: a policy as plain fields, for bindings (`make_policy`)
///
/// This umbrella includes every retry header but `retry/machine.hpp`, the only one that
/// includes Boost.MSM: the clients run `controller`, so they never parse Boost.MSM. Include
/// `retry/machine.hpp` for `msm_controller`.
#pragma once

#include "retry/backoff.hpp"
#include "retry/classification.hpp"
#include "retry/controller.hpp"
#include "retry/decision.hpp"
#include "retry/episode.hpp"
#include "retry/policy.hpp"
#include "retry/profiles.hpp"
#include "retry/random.hpp"
#include "retry/runtime_config.hpp"
#include "retry/table.hpp"
