'use strict';
// Removes native/, the copy scripts/prepack.js made for the tarball: in the
// checkout the addon builds from the sources themselves.
const fs = require('node:fs');
const path = require('node:path');

fs.rmSync(path.resolve(__dirname, '..', 'native'), { recursive: true, force: true });
