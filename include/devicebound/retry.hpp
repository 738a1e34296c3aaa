/// \file retry.hpp
/// Retry policies of the Azure IoT SDKs (SPEC 8): everything in `retry/`. Long explanations
/// live in docs/retry.md.
///
/// - `retry/classification.hpp`: error classes and the SDKs' classification tables (SPEC 8.8)
/// - `retry/random.hpp`: sources of the random part of a backoff
/// - `retry/backoff.hpp`: the backoff formulas (SPEC 8.7)
/// - `retry/policy.hpp`: a backoff plus the knobs every SDK turns (SPEC 8.9)
/// - `retry/decision.hpp`: the machine's answers and states (SPEC 8.9)
/// - `retry/machine.hpp`: the Boost.MSM retry machine and its `controller` (SPEC 8.9)
/// - `retry/profiles.hpp`: the SDKs' policies, by type and by name (SPEC 8.7)
/// - `retry/runtime_config.hpp`: a policy as plain fields, for bindings (`make_policy`)
///
/// Only `retry/machine.hpp` includes Boost.MSM; include the others alone to take policies
/// without the machine.
#pragma once

#include "retry/backoff.hpp"
#include "retry/classification.hpp"
#include "retry/decision.hpp"
#include "retry/machine.hpp"
#include "retry/policy.hpp"
#include "retry/profiles.hpp"
#include "retry/random.hpp"
#include "retry/runtime_config.hpp"
