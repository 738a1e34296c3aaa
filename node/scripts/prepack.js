'use strict';
// `npm pack` / `npm publish`: copies the C++ sources the addon is built from
// into native/, so that the package builds from source wherever it is
// installed (CMakeLists.txt in the package root builds native/ when there is
// no checkout around it). Only what the build needs: the top-level
// CMakeLists.txt, the CMake modules it includes, the addon's sources and the
// library headers they include.
const fs = require('node:fs');
const path = require('node:path');

const pkg = path.resolve(__dirname, '..');
const root = path.resolve(pkg, '..');
const out = path.join(pkg, 'native');

if (!fs.existsSync(path.join(root, 'bindings', 'node', 'CMakeLists.txt'))) {
  throw new Error(`prepack: no checkout at ${root}: run npm pack from node/ in the repository`);
}

fs.rmSync(out, { recursive: true, force: true });
fs.mkdirSync(out);

const topLevel = fs.readFileSync(path.join(root, 'CMakeLists.txt'), 'utf8');
fs.writeFileSync(path.join(out, 'CMakeLists.txt'), topLevel);

// include(devicebound-xyz) lines name the modules in cmake/ that configuring needs.
fs.mkdirSync(path.join(out, 'cmake'));
for (const [, name] of topLevel.matchAll(/^\s*include\((devicebound-[\w-]+)\)/gm)) {
  fs.copyFileSync(path.join(root, 'cmake', `${name}.cmake`), path.join(out, 'cmake', `${name}.cmake`));
}

// The addon's sources, and the headers they include, transitively: nothing else.
const addonDir = path.join(root, 'bindings', 'node');
const addonFiles = fs.readdirSync(addonDir).filter((n) => /\.(hpp|cpp)$/.test(n) || n === 'CMakeLists.txt');
const headers = new Set();
const scan = (file) => {
  const text = fs.readFileSync(file, 'utf8');
  for (const [, quoted, angled] of text.matchAll(/^\s*#\s*include\s*(?:"([^"]+)"|<(devicebound\/[^>]+)>)/gm)) {
    const target = angled ? path.join(root, 'include', angled) : path.resolve(path.dirname(file), quoted);
    if (target.startsWith(path.join(root, 'include') + path.sep) && !headers.has(target)) {
      if (!fs.existsSync(target)) throw new Error(`prepack: ${file} includes ${target}, which does not exist`);
      headers.add(target);
      scan(target);
    }
  }
};
addonFiles.forEach((n) => scan(path.join(addonDir, n)));

const copy = (from, to) => {
  fs.mkdirSync(path.dirname(to), { recursive: true });
  fs.copyFileSync(from, to);
};
for (const n of addonFiles) copy(path.join(addonDir, n), path.join(out, 'bindings', 'node', n));
for (const h of headers) copy(h, path.join(out, path.relative(root, h)));
