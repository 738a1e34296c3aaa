#include <gtest/gtest.h>
TEST(amqp_door, placeholder) {}
