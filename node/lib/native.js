'use strict';
// Loads the addon (built by cmake-js into build/) and hands it the JS error
// classes and the Message class it makes values with.
const path = require('node:path');
const { makeError } = require('./errors');
const { Message } = require('./message');

const load = () => {
  const tried = [];
  for (const config of ['Release', 'Debug', 'RelWithDebInfo', 'MinSizeRel']) {
    const file = path.join(__dirname, '..', 'build', config, 'devicebound.node');
    try {
      return require(file);
    } catch (e) {
      if (e.code !== 'MODULE_NOT_FOUND') throw e;
      tried.push(file);
    }
  }
  throw new Error(`devicebound: the native addon is not built (looked for ${tried.join(', ')}); ` +
    'run `npm install` (or `npx cmake-js compile`) in the package');
};

const native = load();
native.setup(makeError, Message);

module.exports = native;
