// expect-error: compile_fail machinery self-test
// This TU checks the compile-fail test machinery itself, not the library: it
// includes a devicebound header (so the -I and -std flags are exercised) and
// then must be rejected with the message above.
#include <devicebound/version.hpp>

static_assert(devicebound::version == "not a version", "compile_fail machinery self-test");
