'use strict';
// A native call that may throw on bad arguments becomes a rejected Promise,
// so that every Promise-returning method reports errors one way.
module.exports = function call(fn) {
  try {
    return fn();
  } catch (e) {
    return Promise.reject(e);
  }
};
